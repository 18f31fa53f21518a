import { createHmac, generateKeyPairSync, randomUUID, sign as cryptoSign, type KeyObject } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { jwtSettings, loadConfig, parseApiKeys } from '../../src/infra/config.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { freePort } from '../helpers/processes.js';

/**
 * JWT bearer tokens against a real JWKS endpoint on loopback, with RSA and EC keys made here; the
 * tokens are signed here with node:crypto (not with the library the API verifies with).
 */
const ISSUER = 'https://idp.test/realms/fog';
const AUDIENCE = 'fogsched';
const HS_SECRET = 'hs256-secret-0123456789abcdef0123456789';
const API_KEY = 'acme-key-0123456789abcdef';
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const stranger = generateKeyPairSync('rsa', { modulusLength: 2048 });

type Alg = 'RS256' | 'ES256' | 'HS256' | 'none';
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
function token(payload: Record<string, unknown>, opts: { alg: Alg; kid?: string; key?: KeyObject; secret?: string | Buffer }): string {
  const header = { alg: opts.alg, typ: 'JWT', ...(opts.kid ? { kid: opts.kid } : {}) };
  const data = `${b64(header)}.${b64(payload)}`;
  let signature = '';
  if (opts.alg === 'RS256') signature = cryptoSign('sha256', Buffer.from(data), opts.key as KeyObject).toString('base64url');
  if (opts.alg === 'ES256') signature = cryptoSign('sha256', Buffer.from(data), { key: opts.key as KeyObject, dsaEncoding: 'ieee-p1363' }).toString('base64url');
  if (opts.alg === 'HS256') signature = createHmac('sha256', opts.secret as string).update(data).digest('base64url');
  return `${data}.${signature}`;
}
const now = () => Math.floor(Date.now() / 1000);
const claims = (extra: Record<string, unknown> = {}) => ({ sub: 'svc-ingest', iss: ISSUER, aud: AUDIENCE, tenant: 'acme', role: 'submitter', iat: now(), exp: now() + 300, ...extra });
const rs = (extra: Record<string, unknown> = {}) => token(claims(extra), { alg: 'RS256', kid: 'rsa-1', key: rsa.privateKey });
const es = (extra: Record<string, unknown> = {}) => token(claims(extra), { alg: 'ES256', kid: 'ec-1', key: ec.privateKey });

let jwksRequests = 0;
let failingRequests = 0; // to /failing/certs, which always answers 500
let providerDown = false; // the JWKS endpoint answers 503 meanwhile
let jwks: http.Server;
let jwksUrl: string;
let tdb: TestDatabase;
let oidc: FastifyInstance; // RS256/ES256 from the JWKS, and one API key
let hs: FastifyInstance; // HS256
let broken: FastifyInstance; // a JWKS URL where nothing listens

async function app(env: Record<string, string>, apiKeys = ''): Promise<FastifyInstance> {
  const names = topologyNames('jwt_');
  const a = await buildApi({
    apiKeys: parseApiKeys(apiKeys),
    jwt: jwtSettings(loadConfig(env)),
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: tdb.db,
    tasks: createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 }),
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [],
  });
  await a.ready();
  return a;
}

let keys: Record<string, unknown>[] = []; // what the JWKS endpoint serves; a test rotates a key in
beforeAll(async () => {
  keys = [
    { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'rsa-1', alg: 'RS256', use: 'sig' },
    { ...ec.publicKey.export({ format: 'jwk' }), kid: 'ec-1', alg: 'ES256', use: 'sig' },
  ];
  jwks = http.createServer((req, res) => {
    if (req.url === '/failing/certs') return void (failingRequests++, res.writeHead(500).end('{}'));
    if (providerDown) return void res.writeHead(503).end('{}');
    jwksRequests++;
    if (req.url !== '/realms/fog/protocol/openid-connect/certs') return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }));
  });
  await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
  jwksUrl = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/realms/fog/protocol/openid-connect/certs`;
  tdb = await createTestDatabase('jwt');
  oidc = await app({ JWT_JWKS_URL: jwksUrl, JWT_ISSUER: ISSUER, JWT_AUDIENCE: AUDIENCE }, `acme:submitter:${API_KEY}`);
  hs = await app({ JWT_SECRET: HS_SECRET, JWT_ISSUER: ISSUER, JWT_AUDIENCE: AUDIENCE });
  broken = await app({ JWT_JWKS_URL: `http://127.0.0.1:${await freePort()}/certs`, JWT_ISSUER: ISSUER, JWT_AUDIENCE: AUDIENCE });
});

afterAll(async () => {
  await Promise.all([oidc?.close(), hs?.close(), broken?.close()]);
  await new Promise((resolve) => jwks?.close(resolve));
  await tdb?.drop();
});

const events = async () => Number((await sql<{ n: string }>`SELECT count(*) AS n FROM events`.execute(tdb.db)).rows[0]?.n);
const submit = (a: FastifyInstance, bearer: string, extra: Record<string, string> = {}) =>
  a.inject({ method: 'POST', url: '/v1/tasks', headers: { authorization: `Bearer ${bearer}`, ...extra }, payload: { type: 'noop' } });

describe('JWT bearer tokens from an OIDC provider (JWKS)', () => {
  it('accepts RS256 and ES256 tokens: tenant and role from the claims, the actor from sub', async () => {
    for (const t of [rs(), es()]) {
      const res = await submit(oidc, t, { 'x-actor': 'alice' });
      expect(res.statusCode, res.body).toBe(202);
      const meta = await sql<{ metadata: Record<string, unknown>; tenant: string }>`
        SELECT e.metadata, c.tenant FROM events e JOIN task_current c ON c.task_id = e.stream_id::uuid WHERE e.stream_id = ${res.json<{ id: string }>().id} AND e.type = 'TaskSubmitted'`.execute(tdb.db);
      expect(meta.rows[0]).toMatchObject({ tenant: 'acme', metadata: { tenant: 'acme', actor: 'jwt:svc-ingest', onBehalfOf: 'alice' } });
    }
    // The API key still works beside the tokens.
    expect((await oidc.inject({ method: 'GET', url: '/v1/tasks', headers: { 'x-api-key': API_KEY } })).statusCode).toBe(200);
  });

  it('the role claim decides: an auditor token reads (200) and may not submit (403)', async () => {
    expect((await submit(oidc, rs({ role: 'auditor' }))).statusCode).toBe(403);
    expect((await oidc.inject({ method: 'GET', url: '/v1/dlq', headers: { authorization: `Bearer ${rs({ role: 'auditor' })}` } })).statusCode).toBe(200);
    expect((await oidc.inject({ method: 'GET', url: '/v1/dlq', headers: { authorization: `Bearer ${rs()}` } })).statusCode).toBe(403);
    expect((await oidc.inject({ method: 'GET', url: '/v1/cluster', headers: { authorization: `Bearer ${es({ role: 'operator' })}` } })).statusCode).toBe(200);
  });

  it('refuses every token it must not trust: 401 problem+json, nothing written', async () => {
    const hsWithPublicKey = token(claims(), { alg: 'HS256', kid: 'rsa-1', secret: rsa.publicKey.export({ format: 'pem', type: 'spki' }) });
    const signed = rs();
    const [h, , sig] = signed.split('.');
    const cases: Record<string, string> = {
      expired: rs({ exp: now() - 60, iat: now() - 400 }),
      'not yet valid': rs({ nbf: now() + 60 }),
      'wrong issuer': rs({ iss: 'https://evil.test/realms/fog' }),
      'wrong audience': rs({ aud: 'someone-else' }),
      // A provider signs tokens for all its clients: one with no aud (or no iss) must not slip past the checks a wrong one fails.
      'no audience': rs({ aud: undefined }),
      'no issuer': rs({ iss: undefined }),
      'an empty audience list': rs({ aud: [] }),
      'bad signature (another key, same kid)': token(claims(), { alg: 'RS256', kid: 'rsa-1', key: stranger.privateKey }),
      'payload changed after signing': `${h}.${b64(claims({ tenant: 'globex', role: 'operator' }))}.${sig}`,
      'alg none': token(claims(), { alg: 'none', kid: 'rsa-1' }),
      'alg none, no kid': token(claims(), { alg: 'none' }),
      'HS256 keyed with the RSA public key (algorithm confusion)': hsWithPublicKey,
      'ES256 header on the RSA key': token(claims(), { alg: 'ES256', kid: 'rsa-1', key: ec.privateKey }),
      'unknown kid': token(claims(), { alg: 'RS256', kid: 'rsa-9', key: rsa.privateKey }),
      'no kid': token(claims(), { alg: 'RS256', key: rsa.privateKey }),
      'no tenant claim': rs({ tenant: undefined }),
      'no role claim': rs({ role: undefined }),
      'a role that is none of ours': rs({ role: 'admin' }),
      'no exp': rs({ exp: undefined }),
      'no sub': rs({ sub: undefined }),
      'not a JWT at all, but shaped like one': 'eyJub3QiOiJqc29uIn0.eyJ4IjoxfQ.c2ln',
    };
    const before = await events();
    const wrong: string[] = [];
    for (const [name, t] of Object.entries(cases)) {
      const res = await submit(oidc, t);
      const body = res.json<{ code?: string }>();
      if (res.statusCode !== 401 || body.code !== 'UNAUTHORIZED' || !String(res.headers['content-type']).startsWith('application/problem+json')) {
        wrong.push(`${name} → ${res.statusCode} ${res.body.slice(0, 160)}`);
      }
    }
    expect(wrong).toEqual([]);
    expect(await events()).toBe(before);
  });

  it('looks up unknown kids only a few times: random kids do not make it hammer the provider', async () => {
    expect((await submit(oidc, rs())).statusCode).toBe(202);
    const before = jwksRequests;
    for (let i = 0; i < 40; i++) expect((await submit(oidc, token(claims(), { alg: 'RS256', kid: randomUUID(), key: rsa.privateKey }))).statusCode).toBe(401);
    expect(jwksRequests - before).toBeLessThanOrEqual(10);
    // A known key still works, also after tokens named its kid with another alg (which must not block it).
    expect((await submit(oidc, token(claims(), { alg: 'ES256', kid: 'rsa-1', key: ec.privateKey }))).statusCode).toBe(401);
    const known = await submit(oidc, rs());
    expect(known.statusCode, known.body).toBe(202);
  });

  it('a key the provider rotates in is accepted however many unknown kids are sent meanwhile', async () => {
    // Anyone can send tokens naming random kids, with no credential at all: they must not keep the API from seeing a real new key.
    const attack = () => Promise.all(Array.from({ length: 12 }, () => submit(oidc, token(claims(), { alg: 'RS256', kid: randomUUID(), key: stranger.privateKey }))));
    await attack();
    const rotated = generateKeyPairSync('rsa', { modulusLength: 2048 });
    keys.push({ ...rotated.publicKey.export({ format: 'jwk' }), kid: 'rsa-2', alg: 'RS256', use: 'sig' });
    const fresh = token(claims(), { alg: 'RS256', kid: 'rsa-2', key: rotated.privateKey });
    const before = jwksRequests;
    const started = Date.now();
    await eventually(
      async () => {
        for (const res of await attack()) expect(res.statusCode).toBe(401);
        return (await submit(oidc, fresh)).statusCode === 202;
      },
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    // Still not hammered: about one fetch per 10 s of flood.
    expect(jwksRequests - before).toBeLessThanOrEqual(Math.ceil((Date.now() - started) / 10_000) + 1);
  });

  it('a JWKS that answers with errors is asked again at most once per 10 s, however many tokens come', async () => {
    const failing = await app({ JWT_JWKS_URL: new URL('/failing/certs', jwksUrl).href, JWT_ISSUER: ISSUER, JWT_AUDIENCE: AUDIENCE });
    try {
      const started = Date.now();
      for (let i = 0; i < 30; i++) {
        const res = await submit(failing, i % 2 ? rs() : token(claims(), { alg: 'RS256', kid: randomUUID(), key: rsa.privateKey }));
        expect(res.statusCode, res.body).toBe(503);
        expect(res.json()).toMatchObject({ code: 'AUTH_UNAVAILABLE' });
      }
      expect(failingRequests).toBeLessThanOrEqual(Math.ceil((Date.now() - started) / 10_000) + 1);
    } finally {
      await failing.close();
    }
  });

  it('a JWKS that cannot be fetched is 503 AUTH_UNAVAILABLE (the token may be fine), not 401', async () => {
    const res = await submit(broken, rs());
    expect(res.statusCode, res.body).toBe(503);
    expect(res.json()).toMatchObject({ code: 'AUTH_UNAVAILABLE' });
  });

  it('once a key set is loaded, a provider that is down does not fail tokens; the set is refreshed in the background, so dropped keys go', async () => {
    expect((await submit(oidc, rs())).statusCode).toBe(202);
    // Only Date is faked: the key set's age is what matters; sockets and timers run as usual.
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      vi.setSystemTime(Date.now() + 61_000); // the set is a minute old: due for a refresh
      providerDown = true;
      const whileDown = await submit(oidc, rs());
      expect(whileDown.statusCode, whileDown.body).toBe(202);

      providerDown = false;
      const ecKey = keys.find((k) => k.kid === 'ec-1') as Record<string, unknown>;
      keys = keys.filter((k) => k !== ecKey);
      vi.setSystemTime(Date.now() + 11_000); // past the wait after the failed refresh
      expect((await submit(oidc, rs())).statusCode).toBe(202); // starts the refresh
      await eventually(async () => (await submit(oidc, es())).statusCode === 401, { timeoutMs: 5000 });
      keys.push(ecKey);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('JWT bearer tokens with a shared secret (HS256)', () => {
  const hs256 = (extra: Record<string, unknown> = {}, secret = HS_SECRET) => token(claims(extra), { alg: 'HS256', secret });

  it('accepts a token signed with JWT_SECRET', async () => {
    const res = await submit(hs, hs256({ role: 'operator', sub: 'cron-bot' }));
    expect(res.statusCode, res.body).toBe(202);
  });

  it('refuses expired, not-yet-valid, wrong issuer or audience, another secret, alg none and RS256: 401', async () => {
    const cases = {
      expired: hs256({ exp: now() - 60 }),
      'not yet valid': hs256({ nbf: now() + 60 }),
      'wrong issuer': hs256({ iss: 'https://evil.test' }),
      'wrong audience': hs256({ aud: 'other' }),
      'no audience': hs256({ aud: undefined }),
      'no issuer': hs256({ iss: undefined }),
      'another secret': hs256({}, `${HS_SECRET}x`),
      'alg none': token(claims(), { alg: 'none' }),
      RS256: rs(),
      'no tenant': hs256({ tenant: undefined }),
    };
    for (const [name, t] of Object.entries(cases)) {
      const res = await submit(hs, t);
      expect(res.statusCode, `${name}: ${res.body}`).toBe(401);
      expect(res.json()).toMatchObject({ code: 'UNAUTHORIZED' });
    }
  });

  it('a sub PostgreSQL cannot store (a NUL, a lone surrogate) is 401, not a 500; a long one is cut whole characters at a time', async () => {
    const before = await events();
    for (const sub of ['svc\u0000root', 'svc\ud800', '\udc00svc']) {
      const res = await submit(hs, hs256({ sub }));
      expect(res.statusCode, `${JSON.stringify(sub)}: ${res.body}`).toBe(401);
      expect(res.json()).toMatchObject({ code: 'UNAUTHORIZED' });
    }
    expect(await events()).toBe(before);

    // 199 characters and an emoji (two UTF-16 units): cutting at 200 units would leave half of it.
    const res = await submit(hs, hs256({ sub: `${'s'.repeat(199)}😀` }));
    expect(res.statusCode, res.body).toBe(202);
    const row = await sql<{ metadata: { actor: string } }>`SELECT metadata FROM events WHERE stream_id = ${res.json<{ id: string }>().id} AND type = 'TaskSubmitted'`.execute(tdb.db);
    expect(row.rows[0]?.metadata.actor).toBe(`jwt:${'s'.repeat(199)}`);
  });

  it('beside a JWKS: HS256 tokens take the secret, RS256 ones the key set, and an HS256 token never takes a public key', async () => {
    const both = await app({ JWT_SECRET: HS_SECRET, JWT_JWKS_URL: jwksUrl, JWT_ISSUER: ISSUER, JWT_AUDIENCE: AUDIENCE });
    try {
      expect((await submit(both, hs256())).statusCode).toBe(202);
      expect((await submit(both, rs())).statusCode).toBe(202);
      const confused = token(claims(), { alg: 'HS256', kid: 'rsa-1', secret: rsa.publicKey.export({ format: 'pem', type: 'spki' }) });
      expect((await submit(both, confused)).statusCode).toBe(401);
      expect((await submit(both, token(claims(), { alg: 'none' }))).statusCode).toBe(401);
    } finally {
      await both.close();
    }
  });

  it('an API that has no JWT settings refuses a bearer value shaped like a JWT as one, not as a key', async () => {
    const plain = await app({}, `acme:${API_KEY}`);
    try {
      const res = await submit(plain, hs256());
      expect(res.statusCode).toBe(401);
      expect(res.json<{ detail: string }>().detail).toMatch(/does not accept JWT/);
    } finally {
      await plain.close();
    }
  });
});

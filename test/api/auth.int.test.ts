import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { loadConfig, parseApiKeys } from '../../src/infra/config.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

const names = topologyNames('auth_');
const ACME = 'acme-key-0123456789abcdef';
const GLOBEX = 'globex-key-0123456789abcdef';
let tdb: TestDatabase;
let app: FastifyInstance;

beforeAll(async () => {
  tdb = await createTestDatabase('auth');
  app = await buildApi({
    apiKeys: parseApiKeys(`acme:${ACME},globex:${GLOBEX}`),
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: tdb.db,
    tasks: createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 }),
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [],
  });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
  await tdb?.drop();
});

const submit = (headers: Record<string, string>) => app.inject({ method: 'POST', url: '/v1/tasks', headers: { 'content-type': 'application/json', ...headers }, payload: { type: 'noop' } });
const eventCount = async () => Number((await sql<{ n: string }>`SELECT count(*) AS n FROM events`.execute(tdb.db)).rows[0]?.n);

describe('API keys', () => {
  it('refuses /v1 without a key or with a wrong one: 401 problem+json, WWW-Authenticate, nothing written', async () => {
    const attempts: Record<string, string>[] = [{}, { authorization: 'Bearer not-a-key-0123456789' }, { 'x-api-key': `${ACME}x` }, { authorization: `Basic ${ACME}` }];
    for (const headers of attempts) {
      const res = await submit(headers);
      expect(res.statusCode).toBe(401);
      expect(res.headers['content-type']).toContain('application/problem+json');
      expect(res.headers['www-authenticate']).toBe('Bearer realm="fogsched"');
      expect(res.json()).toMatchObject({ status: 401, code: 'UNAUTHORIZED', title: 'Unauthorized' });
    }
    expect(await eventCount()).toBe(0);
  });

  it('takes the key as a bearer token or in X-API-Key, and the key decides the tenant', async () => {
    const a = await submit({ authorization: `Bearer ${ACME}` });
    expect(a.statusCode).toBe(202);
    const b = await submit({ 'x-api-key': GLOBEX });
    expect(b.statusCode).toBe(202);
    const tenants = await sql<{ tenant: string }>`SELECT tenant FROM task_current ORDER BY seq`.execute(tdb.db);
    expect(tenants.rows.map((r) => r.tenant)).toEqual(['acme', 'globex']);
    // A tenant sees only its own tasks: another tenant's id is a 404, its list is empty of them.
    const other = await app.inject({ method: 'GET', url: `/v1/tasks/${a.json().id}`, headers: { 'x-api-key': GLOBEX } });
    expect(other.statusCode).toBe(404);
    const own = await app.inject({ method: 'GET', url: `/v1/tasks/${a.json().id}`, headers: { 'x-api-key': ACME } });
    expect(own.statusCode).toBe(200);
    const list = await app.inject({ method: 'GET', url: '/v1/tasks', headers: { 'x-api-key': GLOBEX } });
    expect(list.json().items.map((t: { id: string }) => t.id)).toEqual([b.json().id]);
  });

  it('leaves health checks and the OpenAPI docs open', async () => {
    expect((await app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    expect((await app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
    const docs = await app.inject({ method: 'GET', url: '/docs/json' });
    expect(docs.statusCode).toBe(200);
    expect(docs.json().components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
  });

  it('reads keys from API_KEYS and API_KEYS_FILE, and refuses a short key at start', () => {
    const config = loadConfig({ API_KEYS: `acme:${ACME}`, API_KEYS_FILE: '/run/secrets/api_keys' }, () => `# keys\n${GLOBEX}\n\nglobex:${GLOBEX}z\n`);
    expect(parseApiKeys(config.API_KEYS)).toEqual([
      { tenant: 'acme', key: ACME },
      { tenant: 'default', key: GLOBEX },
      { tenant: 'globex', key: `${GLOBEX}z` },
    ]);
    expect(() => loadConfig({ API_KEYS: 'acme:short' })).toThrow(/API_KEYS has a key of 5 characters \(tenant acme\); use at least 16/);
  });
});

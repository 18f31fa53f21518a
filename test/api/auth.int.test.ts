import { createHash } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { accessHook, requireAccessDeclarations } from '../../src/api/auth.js';
import { errorHandler } from '../../src/api/errors.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { loadConfig, parseApiKeys } from '../../src/infra/config.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTaskService, executeTaskCommands } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { ID, V1_ROUTES } from './v1-routes.js';

const names = topologyNames('auth_');
const ACME = 'acme-key-0123456789abcdef';
const GLOBEX = 'globex-key-0123456789abcdef';
const ACME_SUBMITTER = 'acme-submitter-0123456789abcdef';
const ACME_AUDITOR = 'acme-auditor-0123456789abcdef';
const keyId = (tenant: string, key: string) => `key:${tenant}/${createHash('sha256').update(key).digest('hex').slice(0, 8)}`;
let tdb: TestDatabase;
let app: FastifyInstance;

beforeAll(async () => {
  tdb = await createTestDatabase('auth');
  app = await buildApi({
    apiKeys: parseApiKeys(`acme:${ACME},globex:${GLOBEX},acme:submitter:${ACME_SUBMITTER},acme:auditor:${ACME_AUDITOR}`),
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: tdb.db,
    tasks: createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 }),
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [
      { name: 'postgresql', critical: true, check: async () => void (await sql`SELECT 1`.execute(tdb.db)) },
      {
        name: 'broker',
        critical: false,
        check: () => Promise.reject(new Error('connect ECONNREFUSED amqp://fogsched:hunter2@rabbitmq-1:5672')),
      },
    ],
  });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
  await tdb?.drop();
});

const submit = (headers: Record<string, string>) => app.inject({ method: 'POST', url: '/v1/tasks', headers: { 'content-type': 'application/json', ...headers }, payload: { type: 'noop' } });
const eventCount = async () => Number((await sql<{ n: string }>`SELECT count(*) AS n FROM events`.execute(tdb.db)).rows[0]?.n);
const rows = async () => Number((await sql<{ n: string }>`SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM schedules) AS n`.execute(tdb.db)).rows[0]?.n);

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
    expect((await app.inject({ method: 'GET', url: '/docs' })).statusCode).toBeLessThan(400);
  });

  it('reads keys from API_KEYS and API_KEYS_FILE with their roles, and refuses a short key at start', () => {
    const config = loadConfig({ API_KEYS: `acme:${ACME}`, API_KEYS_FILE: '/run/secrets/api_keys' }, () => `# keys\n${GLOBEX}\n\nglobex:${GLOBEX}z\nglobex:auditor:${GLOBEX}y\n`);
    expect(parseApiKeys(config.API_KEYS)).toEqual([
      { tenant: 'acme', role: 'operator', key: ACME },
      { tenant: 'default', role: 'operator', key: GLOBEX },
      { tenant: 'globex', role: 'operator', key: `${GLOBEX}z` },
      { tenant: 'globex', role: 'auditor', key: `${GLOBEX}y` },
    ]);
    expect(() => loadConfig({ API_KEYS: 'acme:short' })).toThrow(/API_KEYS has a key of 5 characters \(tenant acme\); use at least 16/);
  });
});

/** Who may call each /v1 route: s submitter, o operator, a auditor (README "Authentication and limits"). */
const WHO: Record<string, string> = {
  'POST /v1/tasks': 'so',
  'GET /v1/tasks': 'soa',
  'POST /v1/tasks/batch': 'so',
  'GET /v1/tasks/:id': 'soa',
  'GET /v1/tasks/:id/history': 'soa',
  'GET /v1/tasks/:id/graph': 'soa',
  'POST /v1/workflows': 'so',
  'POST /v1/tasks/:id/cancel': 'o',
  'POST /v1/tasks/:id/requeue': 'o',
  'GET /v1/cluster': 'o',
  'GET /v1/dlq': 'oa',
  'POST /v1/dlq/requeue': 'o',
  'POST /v1/schedules': 'o',
  'GET /v1/schedules': 'oa',
  'GET /v1/schedules/:id': 'oa',
  'POST /v1/schedules/:id/pause': 'o',
  'POST /v1/schedules/:id/resume': 'o',
  'DELETE /v1/schedules/:id': 'o',
  'GET /v1/events': 'soa',
  'GET /v1/tasks/:id/events': 'soa',
  'GET /v1/stats': 'soa',
  'GET /v1/audit/queries': 'oa',
  'GET /v1/audit/queries/:name': 'oa',
};
/** Query strings that make a route answer at once (an event stream that is let in would not end): a position no event has is 400. */
const QUERIES: Record<string, string> = { 'GET /v1/events': '?after=999999999999' };
const KEYS = { s: ACME_SUBMITTER, o: ACME, a: ACME_AUDITOR } as const;
const BODIES: Record<string, object> = {
  'POST /v1/tasks': { type: 'noop' },
  'POST /v1/tasks/batch': { tasks: [{ type: 'noop' }] },
  'POST /v1/workflows': { steps: [{ step: 'only', type: 'noop' }] },
  'POST /v1/dlq/requeue': { dryRun: true },
  'POST /v1/schedules': { cron: '0 0 1 1 *', template: { type: 'noop' } },
};

describe('roles', () => {
  it('every route declares its access, and the /v1 ones are exactly the routes the access tests send to', () => {
    const table = app.routeAccess;
    expect(table.filter((r) => !['public', 'submitter', 'operator', 'auditor'].includes(r.access ?? ''))).toEqual([]);
    const v1 = table.filter((r) => r.url.startsWith('/v1') && r.method !== 'HEAD').map((r) => `${r.method} ${r.url}`);
    expect(new Set(v1)).toEqual(new Set(V1_ROUTES.map(([m, u]) => `${m} ${u}`)));
    expect(new Set(Object.keys(WHO))).toEqual(new Set(v1));
    // A GET's HEAD twin carries the same declaration.
    for (const r of table.filter((x) => x.method === 'HEAD' && x.url.startsWith('/v1'))) expect(r.access, r.url).toBe(table.find((x) => x.method === 'GET' && x.url === r.url)?.access);
    // Outside /v1 everything is public but the api port's Prometheus metrics (the ops port serves them to the internal network).
    expect(table.filter((r) => !r.url.startsWith('/v1') && r.url !== '/metrics').every((r) => r.access === 'public')).toBe(true);
    expect(table.filter((r) => r.url === '/metrics').map((r) => r.access)).toEqual(['operator', 'operator']);
  });

  it('GET /metrics on the api port: an operator gets the Prometheus text, others 401 / 403', async () => {
    expect((await app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(401);
    expect((await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ACME_SUBMITTER}` } })).statusCode).toBe(403);
    expect((await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ACME_AUDITOR}` } })).statusCode).toBe(403);
    const ok = await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ACME}` } });
    expect(ok.statusCode).toBe(200);
    expect(ok.headers['content-type']).toMatch(/^text\/plain/);
    // The refused requests above are in it, by route pattern and status.
    expect(ok.body).toMatch(/^fogsched_http_request_duration_seconds_count\{route="\/metrics",method="GET",status="401"\} \d+$/m);
  });

  it('an app with a route that declares no access does not start; if one slipped through it would be refused (403), never open', async () => {
    const strict = Fastify();
    requireAccessDeclarations(strict);
    strict.addHook('onRequest', accessHook({ keys: [] }));
    strict.get('/v1/declared', { config: { access: 'submitter' } }, async () => ({ ok: true }));
    strict.get('/v1/forgotten', async () => ({ ok: true }));
    await expect(strict.ready()).rejects.toThrow(/GET \/v1\/forgotten/);

    const loose = Fastify();
    loose.setErrorHandler(errorHandler);
    loose.addHook('onRequest', accessHook({ keys: [] })); // open API: every caller an operator
    loose.get('/v1/forgotten', async () => ({ reached: true }));
    const res = await loose.inject({ method: 'GET', url: '/v1/forgotten' });
    expect(res.statusCode).toBe(403);
    expect(res.json()).toMatchObject({ code: 'FORBIDDEN', title: 'Forbidden' });
    await loose.close();
  });

  it('each role calls what its row allows; anything else is 403 FORBIDDEN problem+json and writes nothing', async () => {
    const wrong: string[] = [];
    for (const [route, who] of Object.entries(WHO)) {
      const [method, path] = route.split(' ') as [string, string];
      for (const [role, key] of Object.entries(KEYS)) {
        const before = await rows();
        const res = await app.inject({ method: method as 'GET', url: path.replace(':id', ID).replace(':name', 'cancellations') + (QUERIES[route] ?? ''), headers: { 'x-api-key': key }, ...(BODIES[route] ? { payload: BODIES[route] } : {}) });
        if (who.includes(role)) {
          if (res.statusCode === 401 || res.statusCode === 403) wrong.push(`${role} ${route} → ${res.statusCode}, expected to be let in`);
        } else {
          if (res.statusCode !== 403 || res.json<{ code: string }>().code !== 'FORBIDDEN' || !String(res.headers['content-type']).startsWith('application/problem+json')) {
            wrong.push(`${role} ${route} → ${res.statusCode} ${res.body.slice(0, 100)}, expected 403 FORBIDDEN`);
          }
          if ((await rows()) !== before) wrong.push(`${role} ${route} wrote a row`);
        }
      }
    }
    expect(wrong).toEqual([]);
  });

  it('the actor is the key id from the credential; X-Actor is recorded beside it as onBehalfOf', async () => {
    const task = await submit({ 'x-api-key': ACME_SUBMITTER, 'x-actor': 'alice' });
    expect(task.statusCode, task.body).toBe(202);
    const id = task.json<{ id: string }>().id;
    const cancel = await app.inject({ method: 'POST', url: `/v1/tasks/${id}/cancel`, headers: { 'x-api-key': ACME, 'x-actor': 'root' }, payload: { reason: 'test' } });
    expect(cancel.statusCode, cancel.body).toBe(200);
    const events = await sql<{ type: string; data: { actor?: string }; metadata: Record<string, unknown> }>`SELECT type, data, metadata FROM events WHERE stream_id = ${id} ORDER BY stream_version`.execute(tdb.db);
    expect(events.rows[0]).toMatchObject({ type: 'TaskSubmitted', metadata: { tenant: 'acme', actor: keyId('acme', ACME_SUBMITTER), onBehalfOf: 'alice' } });
    const cancelled = events.rows.find((e) => e.type === 'TaskCancelled');
    expect(cancelled).toMatchObject({ data: { actor: keyId('acme', ACME) }, metadata: { tenant: 'acme', actor: keyId('acme', ACME), onBehalfOf: 'root' } });
    const history = await app.inject({ method: 'GET', url: `/v1/tasks/${id}/history`, headers: { 'x-api-key': ACME_AUDITOR } });
    expect(history.json<{ events: { actor: string }[] }>().events.map((e) => e.actor)).toEqual([keyId('acme', ACME_SUBMITTER), keyId('acme', ACME)]);

    const schedule = await app.inject({ method: 'POST', url: '/v1/schedules', headers: { 'x-api-key': ACME, 'x-actor': 'erin' }, payload: { cron: '0 0 1 1 *', template: { type: 'noop' } } });
    expect(schedule.statusCode, schedule.body).toBe(201);
    const created = await sql<{ metadata: Record<string, unknown> }>`SELECT metadata FROM events WHERE stream_id = ${schedule.json<{ id: string }>().id}`.execute(tdb.db);
    expect(created.rows[0]?.metadata).toMatchObject({ tenant: 'acme', actor: keyId('acme', ACME), onBehalfOf: 'erin' });
  });

  it('a foreign task id stays 404 whatever the role', async () => {
    const task = await submit({ 'x-api-key': GLOBEX });
    const id = task.json<{ id: string }>().id;
    for (const key of Object.values(KEYS)) {
      const res = await app.inject({ method: 'GET', url: `/v1/tasks/${id}`, headers: { 'x-api-key': key } });
      expect(res.statusCode).toBe(404);
      expect(res.json()).toMatchObject({ code: 'TASK_NOT_FOUND' });
    }
    const cancel = await app.inject({ method: 'POST', url: `/v1/tasks/${id}/cancel`, headers: { 'x-api-key': ACME } });
    expect(cancel.statusCode).toBe(404);
  });

  it('/readyz: check names and ok for everyone, never error text; an operator credential adds the details', async () => {
    for (const headers of [{}, { 'x-api-key': ACME_SUBMITTER }, { 'x-api-key': 'not-a-valid-key-0123456789' }, { 'x-api-key': ACME_AUDITOR }]) {
      const res = await app.inject({ method: 'GET', url: '/readyz', headers });
      expect(res.statusCode).toBe(200);
      expect(res.json()).toEqual({ status: 'degraded', checks: { postgresql: { ok: true, critical: true }, broker: { ok: false, critical: false } } });
      expect(res.body).not.toMatch(/hunter2|amqp:|ECONNREFUSED/);
    }
    const operator = await app.inject({ method: 'GET', url: '/readyz', headers: { 'x-api-key': ACME } });
    expect(operator.json()).toEqual({ status: 'degraded', checks: { postgresql: { ok: true, critical: true }, broker: { ok: false, critical: false } }, details: { limits: null } });
    expect(operator.body).not.toMatch(/hunter2|amqp:|ECONNREFUSED/);
  });
});

describe('tenant isolation of what is found by filter, key or cursor', () => {
  const as = (key: string, method: string, url: string, payload?: object, headers: Record<string, string> = {}) =>
    app.inject({ method: method as 'GET', url, headers: { 'x-api-key': key, ...headers }, ...(payload ? { payload } : {}) });
  async function failedTask(key: string, type: string): Promise<string> {
    const id = (await as(key, 'POST', '/v1/tasks', { type })).json<{ id: string }>().id;
    const command = { type: 'DeadLetterTask' as const, data: { attempt: 1, reason: 'rejected' as const, queue: null, now: new Date().toISOString() } };
    await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId: id, command, metadata: { actor: 'test' } }], names));
    return id;
  }

  it('DLQ list and requeue by filter, single requeue and history reach only the caller tenant', async () => {
    const type = 'iso.failing';
    const mine = await failedTask(ACME, type);
    const theirs = await failedTask(GLOBEX, type);
    expect((await as(ACME, 'GET', `/v1/dlq?type=${type}&limit=500`)).json<{ items: { id: string }[] }>().items.map((t) => t.id)).toEqual([mine]);
    expect((await as(ACME, 'POST', `/v1/tasks/${theirs}/requeue`)).statusCode).toBe(404);
    expect((await as(ACME, 'GET', `/v1/tasks/${theirs}/history`)).statusCode).toBe(404);
    expect((await as(ACME, 'POST', '/v1/dlq/requeue', { type })).json()).toMatchObject({ matched: 1, requeued: 1, taskIds: [mine] });
    const state = await sql<{ state: string }>`SELECT state FROM task_current WHERE task_id = ${theirs}`.execute(tdb.db);
    expect(state.rows[0]?.state).toBe('failed');
  });

  it("an Idempotency-Key is the tenant's own: the same key elsewhere makes another task, never a replay or a conflict", async () => {
    const key = 'iso-order-42';
    const a = await as(ACME, 'POST', '/v1/tasks', { type: 'x' }, { 'idempotency-key': key });
    const b = await as(GLOBEX, 'POST', '/v1/tasks', { type: 'y' }, { 'idempotency-key': key });
    expect([a.statusCode, b.statusCode]).toEqual([202, 202]);
    expect(b.json<{ id: string }>().id).not.toBe(a.json<{ id: string }>().id);
    const batch = await as(GLOBEX, 'POST', '/v1/tasks/batch', { tasks: [{ type: 'y', idempotencyKey: key }] });
    expect(batch.statusCode).toBe(202);
    expect(batch.json<{ tasks: { id: string }[] }>().tasks[0]?.id).toBe(b.json<{ id: string }>().id);
  });

  it("a cursor is only a position: another tenant's rows stay out of every page, and its schedules are 404", async () => {
    const newest = (await as(GLOBEX, 'POST', '/v1/tasks', { type: 'iso.page' })).json<{ id: string }>().id;
    const seq = (await sql<{ seq: string }>`SELECT seq FROM task_current WHERE task_id = ${newest}`.execute(tdb.db)).rows[0]?.seq;
    const page = (await as(ACME, 'GET', `/v1/tasks?limit=500&cursor=${Number(seq) + 1}`)).json<{ items: { id: string }[] }>();
    const tenants = await sql<{ tenant: string }>`SELECT DISTINCT tenant FROM task_current WHERE task_id = ANY(${page.items.map((t) => t.id)}::uuid[])`.execute(tdb.db);
    expect(tenants.rows.map((r) => r.tenant)).toEqual(['acme']);

    const schedule = (await as(GLOBEX, 'POST', '/v1/schedules', { cron: '0 0 1 1 *', template: { type: 'noop' } })).json<{ id: string }>().id;
    for (const [method, url] of [['GET', `/v1/schedules/${schedule}`], ['POST', `/v1/schedules/${schedule}/pause`], ['POST', `/v1/schedules/${schedule}/resume`], ['DELETE', `/v1/schedules/${schedule}`]] as const) {
      expect((await as(ACME, method, url)).statusCode, `${method} ${url}`).toBe(404);
    }
    expect((await as(ACME, 'GET', '/v1/schedules?limit=500')).json<{ items: { id: string }[] }>().items.map((s) => s.id)).not.toContain(schedule);
  });
});

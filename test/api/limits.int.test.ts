import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createApiRole } from '../../src/api/api-role.js';
import { loadConfig } from '../../src/infra/config.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { freePort, tcpProxy } from '../helpers/processes.js';

/** Per-tenant submit limits through the api role, with the machine's Redis (behind a proxy where the test takes Redis away). */
const ACME = 'acme-key-0123456789abcdef';
const ACME_SUBMITTER = 'acme-submitter-0123456789abcdef';
const GLOBEX = 'globex-key-0123456789abcdef';
const INITECH = 'initech-key-0123456789abcdef';
let db: TestDatabase;
const stops: (() => Promise<void>)[] = [];

beforeAll(async () => {
  db = await createTestDatabase('limits');
});
afterEach(async () => {
  for (const stop of stops.splice(0).reverse()) await stop();
});
afterAll(async () => {
  await db?.drop();
});

async function api(env: Record<string, string>, redisUrl = inject('redisUrl')) {
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) });
  const config = loadConfig({
    DATABASE_URL: db.url,
    REDIS_URL: redisUrl,
    REDIS_PREFIX: `t${randomBytes(4).toString('hex')}:`,
    PORT: '0',
    API_KEYS: `acme:${ACME},acme:submitter:${ACME_SUBMITTER},globex:${GLOBEX},initech:${INITECH}`,
    ...env,
  });
  const role = createApiRole({ config, logger, version: 'test' });
  stops.push(() => role.stop());
  await role.start();
  const base = role.address() as string;
  const post = async (path: string, key: string, body: unknown) => {
    const res = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': key }, body: JSON.stringify(body) });
    return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> };
  };
  return {
    base,
    lines,
    submit: (key: string, n = 1) => (n === 1 ? post('/v1/tasks', key, { type: 'noop' }) : post('/v1/tasks/batch', key, { tasks: Array.from({ length: n }, () => ({ type: 'noop' })) })),
    post,
    ready: async (key?: string) => (await fetch(`${base}/readyz`, { headers: key ? { 'x-api-key': key } : {} })).json() as Promise<Record<string, unknown>>,
  };
}

/** A TCP proxy that, once frozen, keeps every connection open and forwards nothing (a hung Redis, not a closed one). */
async function freezingProxy(target: { host: string; port: number }) {
  const port = await freePort();
  const sockets = new Set<net.Socket>();
  let frozen = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
      sockets.add(from);
      from.on('data', (data) => void (frozen || to.write(data)));
      from.on('close', () => sockets.delete(from));
      from.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port,
    freeze: () => void (frozen = true),
    close: () => {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

const tasksOf = async (tenant: string) => Number((await db.pool.query<{ n: string }>('SELECT count(*) AS n FROM task_current WHERE tenant = $1', [tenant])).rows[0]?.n);

describe('TENANT_SUBMIT_RATE / TENANT_SUBMIT_BURST', () => {
  it('each task of a submit or a batch takes a token; past the burst 429 RATE_LIMITED with Retry-After, nothing written; tenants have their own buckets', async () => {
    // A token every 5 s: the refill between the test's requests cannot hide the limit.
    const a = await api({ TENANT_SUBMIT_RATE: '0.2', TENANT_SUBMIT_BURST: '5' });
    const before = await tasksOf('acme');
    expect((await a.submit(ACME, 4)).status).toBe(202);
    expect((await a.submit(ACME_SUBMITTER)).status).toBe(202); // same tenant, another key: the same bucket
    const refused = await a.submit(ACME);
    expect(refused.status).toBe(429);
    expect(refused.headers.get('content-type')).toContain('application/problem+json');
    const retryAfter = Number(refused.headers.get('retry-after'));
    expect(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 5, String(retryAfter)).toBe(true); // one token at 0.2/s: at most 5 s, rounded up
    expect(refused.body).toMatchObject({ status: 429, code: 'RATE_LIMITED', title: 'Too Many Requests', retryAfterSeconds: retryAfter, ratePerSecond: 0.2, burst: 5 });
    expect(await tasksOf('acme')).toBe(before + 5);
    expect((await a.submit(GLOBEX, 5)).status).toBe(202); // globex's bucket is full

    // A batch larger than the burst could never pass: 422, not a 429 to retry forever.
    const tooBig = await a.submit(GLOBEX, 6);
    expect(tooBig.status).toBe(422);
    expect(tooBig.body).toMatchObject({ code: 'BURST_EXCEEDED', tasks: 6, burst: 5 });
    // The bucket refills at the rate.
    await eventually(async () => (await a.submit(ACME)).status === 202, { timeoutMs: 10_000, intervalMs: 500 });
    expect(a.lines.filter((l) => l.level >= 40)).toEqual([]);
  });
});

describe('TENANT_MAX_ACTIVE_TASKS', () => {
  it('counts scheduled, queued, running and retrying tasks from PostgreSQL; past the cap 429 TOO_MANY_ACTIVE_TASKS with the count; a finished task frees its place at the next recount', async () => {
    const a = await api({ TENANT_MAX_ACTIVE_TASKS: '3', TENANT_ACTIVE_REFRESH_MS: '300' });
    const initechBefore = await tasksOf('initech');
    const first = await a.submit(INITECH, 2);
    expect(first.status).toBe(202);
    expect((await a.submit(INITECH)).status).toBe(202);
    const refused = await a.submit(INITECH);
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(refused.body).toMatchObject({ code: 'TOO_MANY_ACTIVE_TASKS', activeTasks: 3, maxActiveTasks: 3 });
    expect(await tasksOf('initech')).toBe(initechBefore + 3);

    // Cancel one (finished): once the counter is recounted, one place is free, and only one.
    const id = ((first.body.tasks as { id: string }[])[0] as { id: string }).id;
    expect((await a.post(`/v1/tasks/${id}/cancel`, INITECH, {})).status).toBe(200);
    await eventually(async () => (await a.submit(INITECH)).status === 202, { timeoutMs: 5000 });
    expect((await a.submit(INITECH)).body).toMatchObject({ code: 'TOO_MANY_ACTIVE_TASKS', activeTasks: 3 });
  });

  it('counts the tasks that were there before the API started (a fresh counter starts from PostgreSQL)', async () => {
    const a = await api({ TENANT_MAX_ACTIVE_TASKS: '1000' });
    const active = Number((await db.pool.query<{ n: string }>(`SELECT count(*) AS n FROM task_current WHERE tenant = 'acme' AND state IN ('scheduled','queued','running','retrying')`)).rows[0]?.n);
    expect(active).toBeGreaterThan(0);
    await a.post('/v1/tasks', ACME, { type: 'noop' });
    const b = await api({ TENANT_MAX_ACTIVE_TASKS: String(active + 1) }); // own prefix: its counter is new
    expect((await b.submit(ACME, 2)).body).toMatchObject({ code: 'TOO_MANY_ACTIVE_TASKS', activeTasks: active + 1, maxActiveTasks: active + 1 });
  });
});

describe('Redis down', () => {
  it('limits fail open: submits are accepted, the outage is logged once, and /readyz says so to an operator only', async () => {
    const [host, port] = new URL(inject('redisUrl')).host.split(':') as [string, string];
    const proxy = await tcpProxy({ host, port: Number(port || 6379) });
    stops.push(() => proxy.down());
    const a = await api({ TENANT_SUBMIT_RATE: '1', TENANT_SUBMIT_BURST: '2', TENANT_MAX_ACTIVE_TASKS: '100000' }, `redis://127.0.0.1:${proxy.port}`);
    await eventually(async () => (await a.submit(ACME)).status === 202, { timeoutMs: 5000 }); // the lazy client has connected
    expect((await a.ready(ACME)).details).toMatchObject({ limits: { ratePerSecond: 1, burst: 2, maxActiveTasks: 100000, state: 'enforced' } });
    await eventually(async () => (await a.submit(ACME)).status === 429, { timeoutMs: 5000 });

    await proxy.down();
    for (let i = 0; i < 5; i++) expect((await a.submit(ACME)).status).toBe(202);
    const operatorView = await a.ready(ACME);
    expect(operatorView).toMatchObject({ status: 'degraded', checks: { redis: { ok: false } }, details: { limits: { state: 'fail-open' } } });
    expect(typeof (operatorView.details as { limits: { failingOpenSince: string } }).limits.failingOpenSince).toBe('string');
    for (const key of [undefined, ACME_SUBMITTER]) {
      const view = await a.ready(key);
      expect(view).toEqual({ status: 'degraded', checks: { postgresql: { ok: true, critical: true }, redis: { ok: false, critical: false } } });
    }
    expect(a.lines.filter((l) => l.msg === 'submit limits not enforced: redis unavailable')).toHaveLength(1);

    await proxy.up();
    await eventually(async () => (await a.submit(ACME)).status === 429, { timeoutMs: 10_000 });
    expect((await a.ready(ACME)).details).toMatchObject({ limits: { state: 'enforced' } });
    expect(a.lines.filter((l) => l.msg === 'submit limits enforced again')).toHaveLength(1);
  });

  it('a Redis that stops answering (connection open, no reply) holds a submit for one command timeout, not one per Redis read', async () => {
    const [host, port] = new URL(inject('redisUrl')).host.split(':') as [string, string];
    const redis = await freezingProxy({ host, port: Number(port || 6379) });
    stops.push(async () => redis.close());
    const a = await api({ TENANT_SUBMIT_RATE: '1000', TENANT_MAX_ACTIVE_TASKS: '100000' }, `redis://127.0.0.1:${redis.port}`);
    expect((await a.submit(ACME)).status).toBe(202);

    redis.freeze();
    for (let i = 0; i < 3; i++) {
      const started = Date.now();
      expect((await a.submit(ACME)).status).toBe(202); // fail open
      // The api's Redis commands time out after 2 s (createRedis); the limits and the live-tier lookup each waited that long in turn.
      expect(Date.now() - started).toBeLessThan(3500);
    }
  });

  it('both unset: no limits, and the operator details say so', async () => {
    const a = await api({});
    expect((await a.submit(ACME, 50)).status).toBe(202);
    expect((await a.ready(ACME)).details).toEqual({ limits: null });
  });
});

import { randomUUID } from 'node:crypto';
import net from 'node:net';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi, type ApiLimits } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { createPostgres, type Postgres } from '../../src/infra/postgres.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

const names = topologyNames('lim_');
let tdb: TestDatabase;
let app: FastifyInstance;

const LIMITS: Partial<ApiLimits> = { maxPayloadBytes: 1024, requestTimeoutMs: 12_345, connectionTimeoutMs: 23_456, keepAliveTimeoutMs: 7_890, maxRequestsPerSocket: 99 };

beforeAll(async () => {
  tdb = await createTestDatabase('limits');
  app = await buildApi({
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxPerTenant: 3, minIntervalMs: 2000 }),
    db: tdb.db,
    tasks: createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 }),
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [],
    inputLimits: LIMITS,
  });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
  await tdb?.drop();
});

/** Rows of every table a request could write. */
async function counts(db = tdb) {
  const r = await sql<{ events: number; outbox: number; keys: number; schedules: number; current: number }>`
    SELECT (SELECT count(*)::int FROM events) AS events, (SELECT count(*)::int FROM outbox) AS outbox,
      (SELECT count(*)::int FROM idempotency_keys) AS keys, (SELECT count(*)::int FROM schedules) AS schedules,
      (SELECT count(*)::int FROM task_current) AS current`.execute(db.db);
  return r.rows[0]!;
}

function expectProblem(res: LightMyRequestResponse | { statusCode: number; headers: Record<string, unknown>; body: string }, status: number, code: string) {
  expect(res.statusCode, res.body).toBe(status);
  expect(String(res.headers['content-type'])).toMatch(/^application\/problem\+json/);
  const body = JSON.parse(res.body) as { status: number; code: string; detail: string; errors?: { path: string; message: string }[]; [k: string]: unknown };
  expect(body).toMatchObject({ status, code, type: `urn:fogsched:error:${code.toLowerCase().replace(/_/g, '-')}` });
  return body;
}

type Req = InjectOptions;

async function rejected(req: Req, status: number, code: string, path?: RegExp) {
  const before = await counts();
  const res = await app.inject(req);
  const body = expectProblem(res, status, code);
  if (path) expect((body.errors ?? []).map((e) => `${e.path} ${e.message}`).join('\n'), res.body).toMatch(path);
  expect(await counts()).toEqual(before);
  return body;
}

async function aTask(): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } });
  expect(res.statusCode, res.body).toBe(202);
  return res.json<{ id: string }>().id;
}

describe('a NUL character anywhere is a 400, never a 500, and writes nothing', () => {
  const cases: { name: string; req: () => Promise<Req> | Req; path: RegExp }[] = [
    { name: 'in a payload value, deep down', req: () => ({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: { a: [1, { b: 'x\u0000y' }] } } }), path: /^body\/payload\/a\/1\/b /m },
    { name: 'in a payload key', req: () => ({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: { 'k\u0000': 1 } } }), path: /^body\/payload /m },
    { name: 'in a top-level key', req: () => ({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', ['\u0000']: 1 } }), path: /^body /m },
    { name: 'in the Idempotency-Key header', req: () => ({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' }, headers: { 'idempotency-key': 'k\u0000' } }), path: /^headers\/idempotency-key /m },
    { name: 'in the X-Actor header', req: () => ({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' }, headers: { 'x-actor': 'al\u0000ice' } }), path: /^headers\/x-actor /m },
    { name: 'in a batch item idempotencyKey', req: () => ({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: [{ type: 'noop' }, { type: 'noop', idempotencyKey: '\u0000' }] } }), path: /^body\/tasks\/1\/idempotencyKey /m },
    { name: 'in a cancel reason', req: async () => ({ method: 'POST', url: `/v1/tasks/${await aTask()}/cancel`, payload: { reason: 'why\u0000' } }), path: /^body\/reason /m },
    { name: 'in a schedule name', req: () => ({ method: 'POST', url: '/v1/schedules', payload: { name: 'n\u0000', cron: '0 * * * *', template: { type: 'noop' } } }), path: /^body\/name /m },
    { name: 'in a schedule template payload', req: () => ({ method: 'POST', url: '/v1/schedules', payload: { cron: '0 * * * *', template: { type: 'noop', payload: ['\u0000'] } } }), path: /^body\/template\/payload\/0 /m },
    { name: 'in the type filter of GET /v1/tasks', req: () => ({ method: 'GET', url: '/v1/tasks?type=a%00b' }), path: /^querystring\/type /m },
    { name: 'in the tier filter of GET /v1/tasks', req: () => ({ method: 'GET', url: '/v1/tasks?tier=%00' }), path: /^querystring\/tier /m },
    { name: 'in the type filter of GET /v1/dlq', req: () => ({ method: 'GET', url: '/v1/dlq?type=x%00' }), path: /^querystring\/type /m },
    { name: 'in the type filter of POST /v1/dlq/requeue', req: () => ({ method: 'POST', url: '/v1/dlq/requeue', payload: { type: 'x\u0000' } }), path: /^body\/type /m },
    { name: 'in a path segment', req: () => ({ method: 'GET', url: '/v1/tasks/%00' }), path: /^url /m },
  ];
  it.each(cases)('$name', async (c) => {
    const body = await rejected(await c.req(), 400, 'VALIDATION_FAILED', c.path);
    expect(body.detail).toMatch(/NUL/);
  });
});

describe('text that PostgreSQL cannot store, and nesting it cannot parse', () => {
  it('a lone surrogate in a payload string → 400', async () => {
    await rejected({ method: 'POST', url: '/v1/tasks', headers: { 'content-type': 'application/json' }, payload: '{"type":"noop","payload":{"s":"\\ud800"}}' }, 400, 'VALIDATION_FAILED', /^body\/payload\/s .*surrogate/m);
  });
  it('a lone surrogate in a payload key → 400', async () => {
    await rejected({ method: 'POST', url: '/v1/tasks', headers: { 'content-type': 'application/json' }, payload: '{"type":"noop","payload":{"\\udc00":1}}' }, 400, 'VALIDATION_FAILED', /surrogate/);
  });
  it('a proper surrogate pair (an emoji) is stored and read back', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: { s: 'ok \u{1F600}' } } });
    expect(res.statusCode, res.body).toBe(202);
    const got = await app.inject({ method: 'GET', url: `/v1/tasks/${res.json<{ id: string }>().id}` });
    expect(got.json<{ payload: unknown }>().payload).toEqual({ s: 'ok \u{1F600}' });
  });
  it('a payload nested 33 levels → 400; 32 levels is accepted', async () => {
    const nest = (depth: number): unknown => (depth === 0 ? 1 : [nest(depth - 1)]);
    // body → payload is one level, so a payload of depth 31 makes the body 32 deep.
    await rejected({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: nest(32) } }, 400, 'VALIDATION_FAILED', /nested deeper than 32/);
    const ok = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: nest(31) } });
    expect(ok.statusCode, ok.body).toBe(202);
  });
  it('a body nested 500,000 levels (1 MB) → 400, not a stack overflow', async () => {
    const deep = `{"type":"noop","payload":${'['.repeat(500_000)}${']'.repeat(500_000)}}`;
    await rejected({ method: 'POST', url: '/v1/tasks', headers: { 'content-type': 'application/json' }, payload: deep }, 400, 'VALIDATION_FAILED', /nested deeper/);
  });
});

describe('cursors are positions: a positive bigint, else 400', () => {
  it.each(['/v1/tasks', '/v1/dlq', '/v1/schedules'])('%s', async (route) => {
    for (const bad of ['99999999999999999999999', '9223372036854775808', '0', '-1', '1.5', '1e3', '007']) {
      await rejected({ method: 'GET', url: `${route}?cursor=${bad}` }, 400, 'VALIDATION_FAILED', /^querystring\/cursor /m);
    }
    // The largest bigint is a valid position (past every row): the first page.
    const res = await app.inject({ method: 'GET', url: `${route}?cursor=9223372036854775807` });
    expect(res.statusCode, res.body).toBe(200);
    const first = await app.inject({ method: 'GET', url: route });
    expect(res.json()).toEqual(first.json());
  });
});

describe('times', () => {
  const years = (n: number) => new Date(Date.now() + n * 365.25 * 86_400_000).toISOString();
  it.each([
    { name: 'a leap second (no such instant in JavaScript)', body: { notBefore: '2030-12-31T23:59:60Z' }, path: /^body\/notBefore /m },
    { name: 'year 0000 (PostgreSQL has none)', body: { deadline: '0000-01-01T00:00:00Z' }, path: /^body\/deadline /m },
    { name: 'notBefore more than 10 years ahead', body: { notBefore: years(10.1) }, path: /^body\/notBefore .*10 years/m },
    { name: 'deadline more than 10 years ahead', body: { deadline: years(10.1) }, path: /^body\/deadline .*10 years/m },
    { name: 'deadline an hour ago', body: { deadline: new Date(Date.now() - 3_600_000).toISOString() }, path: /^body\/deadline .*past/m },
  ])('$name → 400', async (c) => {
    await rejected({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', ...c.body } }, 400, 'VALIDATION_FAILED', c.path);
  });
  it('the same bounds hold for each batch item', async () => {
    await rejected({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: [{ type: 'noop' }, { type: 'noop', notBefore: years(11) }] } }, 400, 'VALIDATION_FAILED', /^body\/tasks\/1\/notBefore /m);
  });
  it('a deadline a few seconds ago (clock skew) and a notBefore 9 years ahead are accepted', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', deadline: new Date(Date.now() - 5000).toISOString() } });
    expect(res.statusCode, res.body).toBe(202);
    const later = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', notBefore: years(9) } });
    expect(later.statusCode, later.body).toBe(202);
  });
  it('DLQ filters: a time JavaScript cannot represent → 400', async () => {
    await rejected({ method: 'GET', url: '/v1/dlq?since=2030-12-31T23:59:60Z' }, 400, 'VALIDATION_FAILED', /^querystring\/since /m);
    await rejected({ method: 'POST', url: '/v1/dlq/requeue', payload: { until: '0000-01-01T00:00:00Z' } }, 400, 'VALIDATION_FAILED', /^body\/until /m);
  });
});

describe('payload size (MAX_PAYLOAD_BYTES, 1 KiB here)', () => {
  const sized = (bytes: number) => 'x'.repeat(bytes - 2); // a JSON string: two quotes
  it('a payload of exactly the limit is accepted; one byte more → 413 PAYLOAD_TOO_LARGE', async () => {
    const ok = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: sized(1024) } });
    expect(ok.statusCode, ok.body).toBe(202);
    const body = await rejected({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: sized(1025) } }, 413, 'PAYLOAD_TOO_LARGE');
    expect(body).toMatchObject({ limitBytes: 1024, errors: [{ path: 'body/payload' }] });
  });
  it('counts UTF-8 bytes, not characters', async () => {
    await rejected({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: 'é'.repeat(600) } }, 413, 'PAYLOAD_TOO_LARGE');
  });
  it('each batch item and a schedule template are held to it too', async () => {
    const body = await rejected({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: [{ type: 'a' }, { type: 'b', payload: sized(2000) }] } }, 413, 'PAYLOAD_TOO_LARGE');
    expect(body.errors).toEqual([expect.objectContaining({ path: 'body/tasks/1/payload' })]);
    await rejected({ method: 'POST', url: '/v1/schedules', payload: { cron: '0 * * * *', template: { type: 'a', payload: sized(2000) } } }, 413, 'PAYLOAD_TOO_LARGE');
  });
});

describe('schedules', () => {
  it('a cron firing more often than SCHEDULE_MIN_INTERVAL_MS (2 s here) → 400; every 2 s is accepted', async () => {
    await rejected({ method: 'POST', url: '/v1/schedules', payload: { cron: '* * * * * *', template: { type: 'noop' } } }, 400, 'VALIDATION_FAILED', /^body\/cron .*2000 ms/m);
    // Irregular: mostly a minute apart, but two runs one second apart.
    await rejected({ method: 'POST', url: '/v1/schedules', payload: { cron: '0,1 * * * * *', template: { type: 'noop' } } }, 400, 'VALIDATION_FAILED', /^body\/cron /m);
    const ok = await app.inject({ method: 'POST', url: '/v1/schedules', payload: { cron: '*/2 * * * * *', template: { type: 'noop' } } });
    expect(ok.statusCode, ok.body).toBe(201);
    expect((await app.inject({ method: 'DELETE', url: `/v1/schedules/${ok.json<{ id: string }>().id}` })).statusCode).toBe(204);
  });

  it('TENANT_MAX_SCHEDULES (3 here), counted in PostgreSQL: 10 concurrent creates make exactly 3, the rest 409; a delete frees a place', async () => {
    const create = () => app.inject({ method: 'POST', url: '/v1/schedules', payload: { cron: '0 * * * *', template: { type: 'noop' } } });
    const before = await counts();
    const results = await Promise.all(Array.from({ length: 10 }, create));
    const created = results.filter((r) => r.statusCode === 201);
    expect(created).toHaveLength(3);
    for (const r of results.filter((x) => x.statusCode !== 201)) {
      expect(expectProblem(r, 409, 'SCHEDULE_LIMIT_REACHED')).toMatchObject({ limit: 3 });
    }
    expect((await counts()).schedules).toBe(before.schedules + 3);
    await rejected({ method: 'POST', url: '/v1/schedules', payload: { cron: '0 * * * *', template: { type: 'noop' } } }, 409, 'SCHEDULE_LIMIT_REACHED');
    expect((await app.inject({ method: 'DELETE', url: `/v1/schedules/${created[0]!.json<{ id: string }>().id}` })).statusCode).toBe(204);
    expect((await create()).statusCode).toBe(201);
  });
});

describe('Fastify settings', () => {
  it('request, connection and keep-alive timeouts and requests per socket come from the limits', () => {
    expect(app.server.requestTimeout).toBe(12_345);
    expect(app.server.timeout).toBe(23_456);
    expect(app.server.keepAliveTimeout).toBe(7_890);
    expect(app.server.maxRequestsPerSocket).toBe(99);
  });
});

describe("Fastify's own errors are problem+json too", () => {
  it('a bad percent-escape in the path → 400 problem', async () => {
    await rejected({ method: 'GET', url: '/v1/tasks/%zz' }, 400, 'FST_ERR_BAD_URL');
  });
  it('an id over 100 characters (the router refuses it) → 400 VALIDATION_FAILED like any other malformed id, not a 414 no operation declares', async () => {
    await rejected({ method: 'GET', url: `/v1/tasks/${'x'.repeat(300)}` }, 400, 'VALIDATION_FAILED', /^params /m);
  });

  describe('over a real socket', () => {
    let address: { port: number };
    let server: FastifyInstance;
    beforeAll(async () => {
      server = await buildApi({
        schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
        db: tdb.db,
        tasks: createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 }),
        logger: createLogger('silent'),
        version: '0.0.0-test',
        readiness: [],
      });
      await server.listen({ host: '127.0.0.1', port: 0 });
      address = server.server.address() as { port: number };
    });
    afterAll(async () => {
      await server?.close();
    });

    /** Sends raw bytes and reads the whole answer (the server closes after a client error). */
    function raw(request: string): Promise<{ statusCode: number; headers: Record<string, string>; body: string }> {
      return new Promise((resolve, reject) => {
        const socket = net.connect(address.port, '127.0.0.1', () => socket.end(request, 'latin1'));
        let data = '';
        socket.setEncoding('latin1');
        socket.on('data', (d: string) => (data += d));
        socket.on('error', reject);
        socket.on('close', () => {
          const [head = '', body = ''] = data.split('\r\n\r\n', 2) as [string?, string?];
          const [status = '', ...lines] = head.split('\r\n');
          const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
          resolve({ statusCode: Number(status.split(' ')[1]), headers, body });
        });
      });
    }

    it('a NUL byte in a header → 400 problem', async () => {
      const res = await raw('GET /v1/tasks HTTP/1.1\r\nHost: x\r\nX-Actor: a\u0000b\r\n\r\n');
      expectProblem(res, 400, 'BAD_REQUEST');
    });
    it('a header block over 16 KiB → 431 problem', async () => {
      const res = await raw(`GET /v1/tasks HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
      expectProblem(res, 431, 'HEADERS_TOO_LARGE');
    });
    it('garbage instead of HTTP → 400 problem', async () => {
      const res = await raw('HELLO\r\n\r\n');
      expectProblem(res, 400, 'BAD_REQUEST');
    });
  });
});

describe('the submit queue is bounded (SUBMIT_QUEUE_MAX)', () => {
  let narrow: Postgres;
  let api: FastifyInstance;
  const service = () => createTaskService({ db: narrow.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500, maxQueued: 4, concurrency: 1 });
  let tasks: ReturnType<typeof service>;
  beforeAll(async () => {
    // One connection: holding it (outside any transaction) makes submits wait in the group commit's queue.
    narrow = createPostgres({ url: tdb.url, poolMax: 1, connectTimeoutMs: 20_000, statementTimeoutMs: 30_000 });
    tasks = service();
    api = await buildApi({
      schedules: createScheduleService({ db: narrow.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
      db: narrow.db,
      tasks,
      logger: createLogger('silent'),
      version: '0.0.0-test',
      readiness: [],
    });
    await api.ready();
  });
  afterAll(async () => {
    await api?.close();
    await narrow?.close();
  });

  it('past it a submit (or a batch) gets 503 SUBMIT_QUEUE_FULL with Retry-After; nothing of it is written; the queued ones commit', async () => {
    const before = await counts();
    const held = await narrow.pool.connect();
    let released = false;
    try {
      // One transaction runs (waiting for the one connection), four submits wait in the queue.
      const accepted = Array.from({ length: 5 }, () => api.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } }));
      await eventually(() => tasks.queued() === 4, { timeoutMs: 10_000 });
      const full = await api.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } });
      const body = expectProblem(full, 503, 'SUBMIT_QUEUE_FULL');
      expect(full.headers['retry-after']).toBe('1');
      expect(body).toMatchObject({ retryAfterSeconds: 1 });
      const batch = await api.inject({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: [{ type: 'a' }] } });
      expectProblem(batch, 503, 'SUBMIT_QUEUE_FULL');
      held.release();
      released = true;
      const answers = await Promise.all(accepted);
      expect(answers.map((a) => a.statusCode)).toEqual([202, 202, 202, 202, 202]);
      const after = await counts();
      expect(after.events - before.events).toBe(5);
      expect(after.outbox - before.outbox).toBe(5);
    } finally {
      if (!released) held.release();
    }
  });

  it('with the queue drained, submits are accepted again', async () => {
    await eventually(() => tasks.queued() === 0);
    const res = await api.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } });
    expect(res.statusCode, res.body).toBe(202);
  });
});

describe('nothing else changed for a valid request', () => {
  it('an X-Actor longer than 200 characters is cut, as before', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' }, headers: { 'x-actor': 'a'.repeat(300) } });
    expect(res.statusCode).toBe(202);
    const row = await tdb.db.selectFrom('events').select('metadata').where('stream_id', '=', res.json<{ id: string }>().id).executeTakeFirstOrThrow();
    // X-Actor is kept as onBehalfOf beside the credential's actor (README, Authentication and limits).
    expect((row.metadata as { onBehalfOf: string }).onBehalfOf).toHaveLength(200);
  });
  it('an X-Actor is cut between characters, never inside a surrogate pair (which PostgreSQL refuses)', async () => {
    // Only inject can send such a header: Node reads a socket's header bytes as latin1.
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' }, headers: { 'x-actor': `${'a'.repeat(199)}😀` } });
    expect(res.statusCode, res.body).toBe(202);
    const row = await tdb.db.selectFrom('events').select('metadata').where('stream_id', '=', res.json<{ id: string }>().id).executeTakeFirstOrThrow();
    expect((row.metadata as { onBehalfOf: string }).onBehalfOf).toBe('a'.repeat(199));
  });
  it('an unknown id stays 404', async () => {
    await rejected({ method: 'GET', url: `/v1/tasks/${randomUUID()}` }, 404, 'TASK_NOT_FOUND');
  });
});

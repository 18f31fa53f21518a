import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi, type ReadinessCheck } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { createPostgres, pendingMigrations, type Postgres } from '../../src/infra/postgres.js';
import type { Database } from '../../src/store/index.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

const names = topologyNames('t_');

function postgresCheck(db: Kysely<Database>, pool: pg.Pool): ReadinessCheck {
  return {
    name: 'postgresql',
    critical: true,
    async check() {
      await sql`SELECT 1`.execute(db);
      const pending = await pendingMigrations(pool);
      if (pending.length > 0) throw new Error(`migrations not applied: ${pending.join(', ')}`);
    },
  };
}

async function apiOver(postgres: Postgres): Promise<FastifyInstance> {
  const app = await buildApi({
    schedules: createScheduleService({ db: postgres.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: postgres.db,
    tasks: createTaskService({ db: postgres.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 }),
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [postgresCheck(postgres.db, postgres.pool)],
  });
  await app.ready();
  return app;
}

function expectUnavailable(res: LightMyRequestResponse): void {
  expect(res.statusCode, res.body).toBe(503);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const body = res.json<Record<string, unknown>>();
  expect(body).toMatchObject({ status: 503, code: 'SERVICE_UNAVAILABLE', type: 'urn:fogsched:error:service-unavailable', title: 'Service Unavailable' });
  expect(typeof body.detail).toBe('string');
  expect(body.detail).toMatch(/postgresql/i);
  expect(body).not.toHaveProperty('stack');
  expect(res.body).not.toMatch(/\n\s+at |ECONNREFUSED|node_modules|\.ts:\d+/);
}

async function timed<T>(f: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const start = performance.now();
  const value = await f();
  return { value, ms: performance.now() - start };
}

describe('PostgreSQL unreachable (closed port)', () => {
  let postgres: Postgres;
  let app: FastifyInstance;

  beforeAll(async () => {
    postgres = createPostgres({ url: 'postgres://root@127.0.0.1:1/x', poolMax: 2, connectTimeoutMs: 500, statementTimeoutMs: 5000 });
    app = await apiOver(postgres);
  });
  afterAll(async () => {
    await app?.close();
    await postgres?.close();
  });

  it('POST /v1/tasks → 503 SERVICE_UNAVAILABLE within a few seconds', async () => {
    const { value: res, ms } = await timed(() => app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } }));
    expectUnavailable(res);
    expect(ms).toBeLessThan(5000);
  });

  it('POST /v1/tasks with an Idempotency-Key and POST /v1/tasks/batch → 503', async () => {
    expectUnavailable(await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' }, headers: { 'idempotency-key': 'k1' } }));
    expectUnavailable(await app.inject({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: [{ type: 'a' }, { type: 'b' }] } }));
  });

  it('many concurrent submits are all answered 503 (none hangs)', async () => {
    const { value: responses, ms } = await timed(() =>
      Promise.all(Array.from({ length: 10 }, (_, i) => app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop', payload: { i } } }))),
    );
    for (const res of responses) expectUnavailable(res);
    expect(ms).toBeLessThan(5000);
  });

  it('GET /v1/tasks/:id, GET /v1/tasks/:id/history, GET /v1/tasks and cancel → 503', async () => {
    const id = randomUUID();
    const { value: responses, ms } = await timed(() =>
      Promise.all([
        app.inject({ method: 'GET', url: `/v1/tasks/${id}` }),
        app.inject({ method: 'GET', url: `/v1/tasks/${id}/history` }),
        app.inject({ method: 'GET', url: '/v1/tasks' }),
        app.inject({ method: 'POST', url: `/v1/tasks/${id}/cancel` }),
      ]),
    );
    for (const res of responses) expectUnavailable(res);
    expect(ms).toBeLessThan(5000);
  });

  it('validation still answers 400 before touching the database', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: '' } });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ code: 'VALIDATION_FAILED' });
  });

  it('/readyz → 503 naming postgresql; /healthz still 200', async () => {
    const { value: ready, ms } = await timed(() => app.inject({ method: 'GET', url: '/readyz' }));
    expect(ready.statusCode, ready.body).toBe(503);
    expect(ms).toBeLessThan(5000);
    const body = ready.json<{ status: string; checks: Record<string, { ok: boolean; critical: boolean; error?: string }> }>();
    expect(body.status).toBe('unavailable');
    // Names and ok only: the error text (it can hold the address) goes to the log.
    expect(body.checks.postgresql).toEqual({ ok: false, critical: true });

    const health = await app.inject({ method: 'GET', url: '/healthz' });
    expect(health.statusCode).toBe(200);
    expect(health.json()).toEqual({ status: 'ok' });
  });
});

describe('PostgreSQL terminates the connections of a running API', () => {
  const applicationName = `fogsched-test-${randomUUID().slice(0, 8)}`;
  let tdb: TestDatabase;
  let postgres: Postgres;
  let app: FastifyInstance;
  let admin: pg.Client;
  /** Holds the table lock; a separate session, since pg_stat_activity is a snapshot fixed for a transaction. */
  let locker: pg.Client;

  beforeAll(async () => {
    tdb = await createTestDatabase('pgdown');
    postgres = createPostgres({ url: tdb.url, poolMax: 4, connectTimeoutMs: 1000, statementTimeoutMs: 10_000, applicationName });
    app = await apiOver(postgres);
    admin = new pg.Client({ connectionString: tdb.url });
    await admin.connect();
    locker = new pg.Client({ connectionString: tdb.url });
    await locker.connect();
  });
  afterAll(async () => {
    await admin?.end();
    await locker?.end();
    await app?.close();
    await postgres?.close();
    await tdb?.drop();
  });

  const terminate = (filter: string) =>
    admin.query<{ n: number }>(
      `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = $1 AND ${filter}`,
      [applicationName],
    );

  it('idle connections killed between requests: the next requests still succeed', async () => {
    const created = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } });
    expect(created.statusCode, created.body).toBe(202);
    const id = created.json<{ id: string }>().id;
    const killed = await terminate('true');
    expect(killed.rows[0]?.n).toBeGreaterThan(0);
    // The pool notices the dead clients; a request may still land on one, but it recovers at once.
    const read = await eventually(async () => {
      const res = await app.inject({ method: 'GET', url: `/v1/tasks/${id}` });
      return res.statusCode === 200 ? res : null;
    });
    expect(read.json<{ id: string }>().id).toBe(id);
    const again = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } });
    expect(again.statusCode, again.body).toBe(202);
  });

  it('a connection killed in the middle of a submit → 503, nothing half-written, and the API recovers', async () => {
    const count = async () =>
      (await admin.query<{ events: number; outbox: number; current: number }>(
        'SELECT (SELECT count(*)::int FROM events) AS events, (SELECT count(*)::int FROM outbox) AS outbox, (SELECT count(*)::int FROM task_current) AS current',
      )).rows[0];
    const before = await count();
    // Hold task_current so the submit blocks inside its transaction, after appending its events.
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE task_current IN ACCESS EXCLUSIVE MODE');
    let pending: Promise<LightMyRequestResponse> | undefined;
    try {
      pending = app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } });
      await eventually(async () => {
        const r = await admin.query(
          `SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock' AND state = 'active'`,
          [applicationName],
        );
        return (r.rowCount ?? 0) > 0;
      });
      const killed = await terminate(`wait_event_type = 'Lock'`);
      expect(killed.rows[0]?.n).toBe(1);
      const res = await pending;
      expectUnavailable(res);
    } finally {
      await locker.query('ROLLBACK');
      await pending?.catch(() => undefined);
    }
    expect(await count()).toEqual(before);

    const after = await eventually(async () => {
      const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'noop' } });
      return res.statusCode === 202 ? res : null;
    });
    expect(after.json<{ state: string }>().state).toBe('queued');
    const ready = await app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode, ready.body).toBe(200);
  });

  it('a read whose connection is killed mid-query → 503', async () => {
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE task_current IN ACCESS EXCLUSIVE MODE');
    let pending: Promise<LightMyRequestResponse> | undefined;
    try {
      pending = app.inject({ method: 'GET', url: '/v1/tasks?limit=5' });
      await eventually(async () => {
        const r = await admin.query(`SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, [applicationName]);
        return (r.rowCount ?? 0) > 0;
      });
      expect((await terminate(`wait_event_type = 'Lock'`)).rows[0]?.n).toBe(1);
      expectUnavailable(await pending);
    } finally {
      await locker.query('ROLLBACK');
      await pending?.catch(() => undefined);
    }
    // The killed client can go back to the pool before its socket reports the close, so the next
    // request on it may get one more 503; the pool then drops it and the API answers again.
    const statuses: number[] = [];
    const list = await eventually(async () => {
      const res = await app.inject({ method: 'GET', url: '/v1/tasks?limit=5' });
      statuses.push(res.statusCode);
      return res.statusCode === 200 ? res : null;
    });
    expect(list.json<{ items: unknown[] }>().items.length).toBeGreaterThan(0);
    expect(statuses.filter((s) => s !== 503 && s !== 200)).toEqual([]);
    expect(statuses.length).toBeLessThanOrEqual(3);
  });
});

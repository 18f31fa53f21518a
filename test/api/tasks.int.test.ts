import { randomUUID } from 'node:crypto';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { pendingMigrations } from '../../src/infra/postgres.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createTaskService, executeTaskCommands } from '../../src/tasks/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

interface TaskBody {
  id: string;
  type: string;
  state: string;
  tier: string;
  priority: string;
  attempt: number;
  maxAttempts: number;
  payload: unknown;
  resources: { cpu: number; memoryMb: number };
  timeoutMs: number | null;
  notBefore: string | null;
  deadline: string | null;
  idempotencyKey: string | null;
  availableAt: string | null;
  submittedAt: string;
  finishedAt: string | null;
  version: number;
}

interface ProblemJson {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  instance?: string;
  errors?: { path: string; message: string }[];
  [extra: string]: unknown;
}

interface HistoryBody {
  taskId: string;
  events: { position: number; version: number; type: string; state: string; attempt: number; actor: string | null; reason: string | null; at: string }[];
}

interface ListBody {
  items: TaskBody[];
  nextCursor: string | null;
}

const names = topologyNames('t_');
let tdb: TestDatabase;
let app: FastifyInstance;

beforeAll(async () => {
  tdb = await createTestDatabase('api');
  const tasks = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });
  app = await buildApi({
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: tdb.db,
    tasks,
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [
      {
        name: 'postgresql',
        critical: true,
        async check() {
          await sql`SELECT 1`.execute(tdb.db);
          const pending = await pendingMigrations(tdb.pool);
          if (pending.length > 0) throw new Error(`migrations not applied: ${pending.join(', ')}`);
        },
      },
    ],
  });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
  await tdb?.drop();
});

/** Row counts of every table a submit writes. */
async function counts() {
  const r = await sql<{ events: number; outbox: number; current: number; history: number; keys: number }>`
    SELECT (SELECT count(*)::int FROM events) AS events, (SELECT count(*)::int FROM outbox) AS outbox,
      (SELECT count(*)::int FROM task_current) AS current, (SELECT count(*)::int FROM task_history) AS history,
      (SELECT count(*)::int FROM idempotency_keys) AS keys`.execute(tdb.db);
  return r.rows[0];
}

function submit(body: unknown, headers: Record<string, string> = {}) {
  return app.inject({ method: 'POST', url: '/v1/tasks', payload: body as object, headers });
}

function expectProblem(res: LightMyRequestResponse, status: number, code: string): ProblemJson {
  expect(res.statusCode, res.body).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const body = res.json<ProblemJson>();
  expect(body).toMatchObject({ status, code });
  expect(body.type).toBe(`urn:fogsched:error:${code.toLowerCase().replace(/_/g, '-')}`);
  expect(typeof body.title).toBe('string');
  expect(body.title.length).toBeGreaterThan(0);
  expect(typeof body.detail).toBe('string');
  expect(body.detail.length).toBeGreaterThan(0);
  expect(res.body).not.toMatch(/\n\s+at /); // no stack trace
  return body;
}

describe('POST /v1/tasks', () => {
  it('answers 202 with the queued task and a Location header, after writing events, projections and one outbox row', async () => {
    const before = Date.now();
    const res = await submit({ type: 'noop', payload: { n: 1 } }, { 'x-actor': 'alice' });
    expect(res.statusCode, res.body).toBe(202);
    const task = res.json<TaskBody>();
    expect(task.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(task).toMatchObject({
      type: 'noop',
      state: 'queued',
      tier: 'light',
      priority: 'normal',
      attempt: 1,
      maxAttempts: 3,
      payload: { n: 1 },
      resources: { cpu: 0.1, memoryMb: 64 },
      idempotencyKey: null,
      version: 1,
    });
    expect(res.headers.location).toBe(`/v1/tasks/${task.id}`);

    const events = await tdb.db.selectFrom('events').selectAll().where('stream_id', '=', task.id).orderBy('stream_version').execute();
    expect(events.map((e) => [e.type, e.stream_version, e.stream_type])).toEqual([
      ['TaskSubmitted', 1, 'task'],
    ]);
    // One event is the submit and the dispatch of attempt 1 (schema v3).
    expect(events[0]).toMatchObject({ schema_version: 3, data: { attempt: 1, availableAt: expect.any(String) } });
    // Without credentials the actor is `anonymous`; X-Actor is only what the caller says it acts for.
    expect(events[0]?.metadata).toMatchObject({ tenant: 'default', actor: 'anonymous', onBehalfOf: 'alice' });

    const current = await tdb.db.selectFrom('task_current').selectAll().where('task_id', '=', task.id).execute();
    expect(current).toHaveLength(1);
    expect(current[0]).toMatchObject({ state: 'queued', tier: 'light', priority: 'normal', tenant: 'default', type: 'noop', version: 1, attempt: 1 });

    const history = await tdb.db.selectFrom('task_history').selectAll().where('task_id', '=', task.id).orderBy('version').execute();
    expect(history.map((h) => [h.type, h.state])).toEqual([
      ['TaskSubmitted', 'queued'],
    ]);
    expect(history.map((h) => h.position)).toEqual(events.map((e) => e.position));

    const outbox = await tdb.db.selectFrom('outbox').selectAll().where('stream_id', '=', task.id).execute();
    expect(outbox).toHaveLength(1);
    const row = outbox[0]!;
    expect(row.routing_key).toBe('light.normal');
    expect(row.exchange).toBe('t_tasks');
    expect(row.published_at).toBeNull();
    expect(row.message_id).toBe(events[0]?.event_id);
    expect(row.available_at).toBeInstanceOf(Date);
    expect(row.available_at.getTime()).toBeGreaterThanOrEqual(before - 1000);
    expect(row.available_at.getTime()).toBeLessThanOrEqual(Date.now() + 1000);
    expect(row.available_at.toISOString()).toBe(task.availableAt);
    expect(row.body).toMatchObject({ taskId: task.id, attempt: 1, type: 'noop', tier: 'light', priority: 'normal', payload: { n: 1 } });
  });

  it('routes by resources and priority, and a future notBefore makes the task scheduled with a delayed outbox row', async () => {
    const notBefore = new Date(Date.now() + 3_600_000).toISOString();
    const res = await submit({ type: 'sleep', priority: 'high', resources: { cpu: 0.7, memoryMb: 600 }, notBefore, timeoutMs: 5000, maxAttempts: 5 });
    expect(res.statusCode, res.body).toBe(202);
    const task = res.json<TaskBody>();
    expect(task).toMatchObject({ state: 'scheduled', tier: 'medium', priority: 'high', notBefore, availableAt: notBefore, timeoutMs: 5000, maxAttempts: 5 });
    const outbox = await tdb.db.selectFrom('outbox').selectAll().where('stream_id', '=', task.id).execute();
    expect(outbox).toHaveLength(1);
    expect(outbox[0]?.routing_key).toBe('medium.high');
    expect(outbox[0]?.available_at.toISOString()).toBe(notBefore);
  });

  it('answers 422 NO_TIER_FITS for resources larger than every tier, writing nothing', async () => {
    const before = await counts();
    const res = await submit({ type: 'big', resources: { cpu: 8, memoryMb: 64 } });
    const body = expectProblem(res, 422, 'NO_TIER_FITS');
    expect(body.detail).toMatch(/heavy/);
    expect(await counts()).toEqual(before);
  });
});

describe('GET /v1/tasks/:id and /history', () => {
  it('returns the task as submitted', async () => {
    const created = (await submit({ type: 'checksum', payload: { data: 'abc' }, priority: 'low' })).json<TaskBody>();
    const res = await app.inject({ method: 'GET', url: `/v1/tasks/${created.id}` });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json<TaskBody>()).toEqual(created);
  });

  it('answers 404 TASK_NOT_FOUND for an unknown id', async () => {
    const id = randomUUID();
    const body = expectProblem(await app.inject({ method: 'GET', url: `/v1/tasks/${id}` }), 404, 'TASK_NOT_FOUND');
    expect(body.detail).toContain(id);
    expectProblem(await app.inject({ method: 'GET', url: `/v1/tasks/${id}/history` }), 404, 'TASK_NOT_FOUND');
  });

  it('lists the lifecycle oldest first', async () => {
    const created = (await submit({ type: 'noop' }, { 'x-actor': 'bob' })).json<TaskBody>();
    await app.inject({ method: 'POST', url: `/v1/tasks/${created.id}/cancel`, payload: { reason: 'not needed' } });
    const res = await app.inject({ method: 'GET', url: `/v1/tasks/${created.id}/history` });
    expect(res.statusCode, res.body).toBe(200);
    const history = res.json<HistoryBody>();
    expect(history.taskId).toBe(created.id);
    expect(history.events.map((e) => [e.version, e.type, e.state])).toEqual([
      [1, 'TaskSubmitted', 'queued'],
      [2, 'TaskCancelled', 'cancelled'],
    ]);
    const positions = history.events.map((e) => e.position);
    expect([...positions].sort((a, b) => a - b)).toEqual(positions);
    expect(history.events[0]?.actor).toBe('anonymous'); // X-Actor is never the actor (it is onBehalfOf in the metadata)
    expect(history.events[1]?.reason).toBe('not needed');
    expect(Date.parse(history.events[1]!.at)).toBeGreaterThanOrEqual(Date.parse(history.events[0]!.at));
  });
});

describe('GET /v1/tasks', () => {
  it('filters by state and priority', async () => {
    const type = `filter.${randomUUID().slice(0, 8)}`;
    const high = (await submit({ type, priority: 'high' })).json<TaskBody>();
    const low = (await submit({ type, priority: 'low' })).json<TaskBody>();
    const cancelled = (await submit({ type, priority: 'low' })).json<TaskBody>();
    expect((await app.inject({ method: 'POST', url: `/v1/tasks/${cancelled.id}/cancel` })).statusCode).toBe(200);

    const list = async (query: string) => {
      const res = await app.inject({ method: 'GET', url: `/v1/tasks?type=${type}&${query}` });
      expect(res.statusCode, res.body).toBe(200);
      return res.json<ListBody>().items.map((t) => t.id);
    };
    expect(await list('')).toEqual([cancelled.id, low.id, high.id]);
    expect(await list('priority=high')).toEqual([high.id]);
    expect(await list('priority=low')).toEqual([cancelled.id, low.id]);
    expect(await list('state=cancelled')).toEqual([cancelled.id]);
    expect(await list('state=queued')).toEqual([low.id, high.id]);
    expect(await list('state=queued&priority=low')).toEqual([low.id]);
    expect(await list('state=running')).toEqual([]);
    expect(await list('tier=medium')).toEqual([]);
  });

  it('pages with a cursor: newest first, no duplicates, no gaps, stable while tasks are added, null cursor at the end', async () => {
    const type = `page.${randomUUID().slice(0, 8)}`;
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) ids.push((await submit({ type, payload: { i } })).json<TaskBody>().id);
    const newestFirst = [...ids].reverse();

    const seen: string[] = [];
    const pageSizes: number[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const url: string = `/v1/tasks?type=${type}&limit=3${cursor ? `&cursor=${cursor}` : ''}`;
      const res = await app.inject({ method: 'GET', url });
      expect(res.statusCode, res.body).toBe(200);
      const page = res.json<ListBody>();
      seen.push(...page.items.map((t) => t.id));
      pageSizes.push(page.items.length);
      cursor = page.nextCursor;
      if (pages === 0) {
        // A task added after the first page must not shift later pages.
        expect((await submit({ type })).statusCode).toBe(202);
      }
      pages++;
    } while (cursor !== null && pages < 10);

    expect(pageSizes).toEqual([3, 3, 1]);
    expect(cursor).toBeNull();
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual(newestFirst);

    // Asking the same first page again gives the newer task first, then the same order.
    const again = (await app.inject({ method: 'GET', url: `/v1/tasks?type=${type}&limit=500` })).json<ListBody>();
    expect(again.items).toHaveLength(8);
    expect(again.items.slice(1).map((t) => t.id)).toEqual(newestFirst);
    expect(again.nextCursor).toBeNull();
  });
});

describe('a page of a list is bounded in bytes, not only in items', () => {
  // 500 tasks with 256 KiB payloads (the default MAX_PAYLOAD_BYTES; an echo handler doubles it with its
  // output) would be one answer of 128 MiB or more, built in the API's memory: a few such reads at once
  // by any submitter or auditor could take the process down. A page ends after INPUT_LIMITS.maxPageBytes.
  const big = 'x'.repeat(250 * 1024);
  const MAX_PAGE = 8 * 1024 * 1024;

  /** Every page of `url` (limit=500), with the size of each answer. */
  async function walk(url: string): Promise<{ ids: string[]; sizes: number[]; counts: number[] }> {
    const out = { ids: [] as string[], sizes: [] as number[], counts: [] as number[] };
    let cursor: string | null = null;
    do {
      const res: LightMyRequestResponse = await app.inject({ method: 'GET', url: `${url}${url.includes('?') ? '&' : '?'}limit=500${cursor ? `&cursor=${cursor}` : ''}` });
      expect(res.statusCode, res.body.slice(0, 300)).toBe(200);
      const page: { items: { id: string }[]; nextCursor: string | null } = res.json();
      out.ids.push(...page.items.map((t) => t.id));
      out.sizes.push(res.body.length);
      out.counts.push(page.items.length);
      cursor = page.nextCursor;
    } while (cursor !== null && out.sizes.length < 20);
    return out;
  }

  it('GET /v1/tasks and /v1/dlq: about 8 MiB of payloads, outputs and errors per page, a cursor to the rest, every task once', async () => {
    const type = `big.${randomUUID().slice(0, 8)}`;
    const ids: string[] = [];
    for (let b = 0; b < 3; b++) {
      const res = await app.inject({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: Array.from({ length: 15 }, () => ({ type, payload: big })) } });
      expect(res.statusCode, res.body.slice(0, 300)).toBe(202);
      ids.push(...res.json<{ tasks: { id: string }[] }>().tasks.map((t) => t.id));
    }
    const tasks = await walk(`/v1/tasks?type=${type}`);
    expect(new Set(tasks.ids)).toEqual(new Set(ids));
    expect(tasks.ids).toHaveLength(ids.length);
    expect(tasks.counts.length, tasks.counts.join(',')).toBeGreaterThan(1);
    for (const size of tasks.sizes) expect(size).toBeLessThan(MAX_PAGE + 2 * big.length); // the row that passes the budget ends the page

    // The same tasks failed: the DLQ pages the same way (each failure's error counts too).
    const command = { type: 'DeadLetterTask' as const, data: { attempt: 1, reason: 'rejected' as const, queue: null, now: new Date().toISOString() } };
    await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, ids.map((taskId) => ({ taskId, command, metadata: { actor: 'test' } })), names));
    const dlq = await walk(`/v1/dlq?type=${type}`);
    expect(new Set(dlq.ids)).toEqual(new Set(ids));
    expect(dlq.ids).toHaveLength(ids.length);
    for (const size of dlq.sizes) expect(size).toBeLessThan(MAX_PAGE + 2 * big.length);
  });

  it('GET /v1/schedules: the same for templates', async () => {
    const created: string[] = [];
    for (let i = 0; i < 40; i++) {
      const res = await app.inject({ method: 'POST', url: '/v1/schedules', payload: { cron: '0 0 1 1 *', template: { type: 'noop', payload: big } } });
      expect(res.statusCode, res.body.slice(0, 300)).toBe(201);
      created.push(res.json<{ id: string }>().id);
    }
    const schedules = await walk('/v1/schedules');
    expect(schedules.ids.filter((id) => created.includes(id))).toHaveLength(created.length);
    expect(new Set(schedules.ids).size).toBe(schedules.ids.length);
    for (const size of schedules.sizes) expect(size).toBeLessThan(MAX_PAGE + 2 * big.length);
    for (const id of created) expect((await app.inject({ method: 'DELETE', url: `/v1/schedules/${id}` })).statusCode).toBe(204);
  });
});

describe('POST /v1/tasks/:id/cancel', () => {
  it('cancels a queued task (200 cancelled); a second cancel returns it unchanged', async () => {
    const created = (await submit({ type: 'noop' })).json<TaskBody>();
    const first = await app.inject({ method: 'POST', url: `/v1/tasks/${created.id}/cancel`, payload: { reason: 'changed my mind' } });
    expect(first.statusCode, first.body).toBe(200);
    const cancelled = first.json<TaskBody>();
    expect(cancelled).toMatchObject({ id: created.id, state: 'cancelled', version: 2 });
    expect(cancelled.finishedAt).not.toBeNull();

    const before = await counts();
    const second = await app.inject({ method: 'POST', url: `/v1/tasks/${created.id}/cancel` });
    expect(second.statusCode, second.body).toBe(200);
    expect(second.json<TaskBody>()).toEqual(cancelled);
    expect(await counts()).toEqual(before);

    const current = await tdb.db.selectFrom('task_current').select(['state', 'version']).where('task_id', '=', created.id).executeTakeFirst();
    expect(current).toEqual({ state: 'cancelled', version: 2 });
  });

  it('answers 404 problem for an unknown id', async () => {
    const id = randomUUID();
    const before = await counts();
    const body = expectProblem(await app.inject({ method: 'POST', url: `/v1/tasks/${id}/cancel` }), 404, 'TASK_NOT_FOUND');
    expect(body.detail).toContain(id);
    expect(await counts()).toEqual(before);
  });

  it('answers 409 TASK_NOT_CANCELLABLE for a task that already succeeded', async () => {
    const created = (await submit({ type: 'noop' })).json<TaskBody>();
    const now = new Date().toISOString();
    await tdb.db.transaction().execute((trx) =>
      executeTaskCommands(
        trx,
        [
          {
            taskId: created.id,
            command: { type: 'SucceedTask', data: { attempt: 1, nodeId: 'n1', output: { ok: true }, durationMs: 1, startedAt: now, now } },
            metadata: { actor: 'test' },
          },
        ],
        names,
      ),
    );
    const before = await counts();
    const body = expectProblem(await app.inject({ method: 'POST', url: `/v1/tasks/${created.id}/cancel` }), 409, 'TASK_NOT_CANCELLABLE');
    expect(body.state).toBe('succeeded');
    expect(await counts()).toEqual(before);
  });
});

describe('validation', () => {
  const ok = { type: 'noop' };
  const cases: { name: string; url?: string; method?: 'GET' | 'POST'; body?: unknown; raw?: string; headers?: Record<string, string>; path: RegExp }[] = [
    { name: 'missing type', body: { payload: 1 }, path: /^body\b.*type/ },
    { name: 'empty type', body: { type: '' }, path: /^body\/type/ },
    { name: 'type with bad characters', body: { type: 'no spaces allowed!' }, path: /^body\/type/ },
    { name: 'type too long', body: { type: 'x'.repeat(201) }, path: /^body\/type/ },
    { name: 'unknown field', body: { ...ok, colour: 'red' }, path: /^body\/colour is not a known field/ },
    { name: 'priority not in the enum', body: { ...ok, priority: 'urgent' }, path: /^body\/priority/ },
    { name: 'resources.cpu of 0', body: { ...ok, resources: { cpu: 0, memoryMb: 64 } }, path: /^body\/resources\/cpu/ },
    { name: 'negative resources.cpu', body: { ...ok, resources: { cpu: -1, memoryMb: 64 } }, path: /^body\/resources\/cpu/ },
    { name: 'memoryMb not an integer', body: { ...ok, resources: { cpu: 0.1, memoryMb: 1.5 } }, path: /^body\/resources\/memoryMb/ },
    { name: 'resources missing memoryMb', body: { ...ok, resources: { cpu: 0.1 } }, path: /^body\/resources\b.*memoryMb/ },
    { name: 'maxAttempts 0', body: { ...ok, maxAttempts: 0 }, path: /^body\/maxAttempts/ },
    { name: 'maxAttempts 101', body: { ...ok, maxAttempts: 101 }, path: /^body\/maxAttempts/ },
    { name: 'timeoutMs 0', body: { ...ok, timeoutMs: 0 }, path: /^body\/timeoutMs/ },
    { name: 'notBefore not a date-time', body: { ...ok, notBefore: 'tomorrow' }, path: /^body\/notBefore/ },
    { name: 'deadline not a date-time', body: { ...ok, deadline: '2030-01-01' }, path: /^body\/deadline/ },
    {
      name: 'deadline before notBefore',
      body: { ...ok, notBefore: '2030-01-02T00:00:00Z', deadline: '2030-01-01T00:00:00Z' },
      path: /^body\/deadline must be after notBefore/,
    },
    { name: 'a body that is not an object', body: [1, 2], path: /^body\b/ },
    { name: 'text/plain body', raw: 'noop', headers: { 'content-type': 'text/plain' }, path: /^body\b/ },
    { name: 'Idempotency-Key too long', body: ok, headers: { 'idempotency-key': 'k'.repeat(201) }, path: /^headers\/idempotency-key/ },
    { name: 'bad uuid in GET path', method: 'GET', url: '/v1/tasks/not-a-uuid', path: /^params\/id/ },
    { name: 'bad uuid in history path', method: 'GET', url: '/v1/tasks/123/history', path: /^params\/id/ },
    { name: 'bad uuid in cancel path', url: '/v1/tasks/xyz/cancel', body: {}, path: /^params\/id/ },
    { name: 'unknown field in cancel body', url: `/v1/tasks/${randomUUID()}/cancel`, body: { why: 'x' }, path: /^body\/why is not a known field/ },
    { name: 'limit 0', method: 'GET', url: '/v1/tasks?limit=0', path: /^querystring\/limit/ },
    { name: 'limit 501', method: 'GET', url: '/v1/tasks?limit=501', path: /^querystring\/limit/ },
    { name: 'limit not a number', method: 'GET', url: '/v1/tasks?limit=ten', path: /^querystring\/limit/ },
    { name: 'cursor not a number', method: 'GET', url: '/v1/tasks?cursor=abc', path: /^querystring\/cursor/ },
    { name: 'state not in the enum', method: 'GET', url: '/v1/tasks?state=sleeping', path: /^querystring\/state/ },
    { name: 'unknown query field', method: 'GET', url: '/v1/tasks?colour=red', path: /^querystring\/colour is not a known field/ },
    { name: 'empty batch', url: '/v1/tasks/batch', body: { tasks: [] }, path: /^body\/tasks/ },
    { name: 'batch item without a type', url: '/v1/tasks/batch', body: { tasks: [ok, { payload: 1 }, ok] }, path: /^body\/tasks\/1\b/ },
    {
      name: 'batch item with deadline before notBefore',
      url: '/v1/tasks/batch',
      body: { tasks: [ok, { ...ok, notBefore: '2030-01-02T00:00:00Z', deadline: '2030-01-01T00:00:00Z' }] },
      path: /^body\/tasks\/1\/deadline must be after notBefore/,
    },
  ];

  it.each(cases)('$name → 400 VALIDATION_FAILED with errors, nothing stored', async (c) => {
    const before = await counts();
    const res = await app.inject({
      method: c.method ?? 'POST',
      url: c.url ?? '/v1/tasks',
      ...(c.raw !== undefined ? { payload: c.raw } : c.body !== undefined ? { payload: c.body as object } : {}),
      headers: c.headers ?? {},
    });
    const body = expectProblem(res, 400, 'VALIDATION_FAILED');
    expect(Array.isArray(body.errors), res.body).toBe(true);
    expect(body.errors!.length).toBeGreaterThan(0);
    for (const e of body.errors!) {
      expect(typeof e.path).toBe('string');
      expect(typeof e.message).toBe('string');
    }
    expect(body.errors!.map((e) => `${e.path} ${e.message}`).join('\n')).toMatch(new RegExp(c.path.source, 'm'));
    expect(body.instance).toBe(c.url ?? '/v1/tasks');
    expect(await counts()).toEqual(before);
  });

  it('lists every violation of a body at once', async () => {
    const res = await submit({ type: '', priority: 'urgent', maxAttempts: 0, extra: true });
    const body = expectProblem(res, 400, 'VALIDATION_FAILED');
    const paths = body.errors!.map((e) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['body/type', 'body/priority', 'body/maxAttempts', 'body/extra']));
  });

  it('a body that is not JSON → 400 problem, nothing stored', async () => {
    const before = await counts();
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: '{"type": "noop",', headers: { 'content-type': 'application/json' } });
    expectProblem(res, 400, 'FST_ERR_CTP_INVALID_JSON_BODY');
    expect(await counts()).toEqual(before);
  });

  it('an empty JSON body → 400 problem, nothing stored', async () => {
    const before = await counts();
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: '', headers: { 'content-type': 'application/json' } });
    expectProblem(res, 400, 'FST_ERR_CTP_EMPTY_JSON_BODY');
    expect(await counts()).toEqual(before);
  });

  it('a content type the API does not read → 415 problem, nothing stored', async () => {
    const before = await counts();
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', payload: '<task type="noop"/>', headers: { 'content-type': 'application/xml' } });
    expectProblem(res, 415, 'FST_ERR_CTP_INVALID_MEDIA_TYPE');
    expect(await counts()).toEqual(before);
  });

  it('a body over 4 MiB → 413 problem, nothing stored', async () => {
    const before = await counts();
    const res = await submit({ type: 'noop', payload: 'x'.repeat(4 * 1024 * 1024 + 10) });
    expectProblem(res, 413, 'FST_ERR_CTP_BODY_TOO_LARGE');
    expect(await counts()).toEqual(before);
  });

  it('an unknown route → 404 ROUTE_NOT_FOUND problem', async () => {
    const body = expectProblem(await app.inject({ method: 'GET', url: '/v1/nope?x=1' }), 404, 'ROUTE_NOT_FOUND');
    expect(body.detail).toBe('no route GET /v1/nope');
    expectProblem(await app.inject({ method: 'DELETE', url: `/v1/tasks/${randomUUID()}` }), 404, 'ROUTE_NOT_FOUND');
  });
});

describe('POST /v1/tasks/batch', () => {
  it('submits 3 tasks in one request (202) and stores all of them', async () => {
    const before = await counts();
    const res = await app.inject({
      method: 'POST',
      url: '/v1/tasks/batch',
      payload: { tasks: [{ type: 'a' }, { type: 'b', priority: 'high' }, { type: 'c', resources: { cpu: 1, memoryMb: 1024 } }] },
    });
    expect(res.statusCode, res.body).toBe(202);
    const { tasks } = res.json<{ tasks: TaskBody[] }>();
    expect(tasks.map((t) => [t.type, t.state, t.tier, t.priority])).toEqual([
      ['a', 'queued', 'light', 'normal'],
      ['b', 'queued', 'light', 'high'],
      ['c', 'queued', 'heavy', 'normal'],
    ]);
    expect(new Set(tasks.map((t) => t.id)).size).toBe(3);
    const after = await counts();
    expect(after).toEqual({ ...before!, events: before!.events + 3, outbox: before!.outbox + 3, current: before!.current + 3, history: before!.history + 3 });
    for (const t of tasks) {
      const got = await app.inject({ method: 'GET', url: `/v1/tasks/${t.id}` });
      expect(got.json<TaskBody>()).toEqual(t);
    }
    const keys = await tdb.db
      .selectFrom('outbox')
      .select(['stream_id', 'routing_key'])
      .where('stream_id', 'in', tasks.map((t) => t.id))
      .execute();
    expect(new Map(keys.map((k) => [k.stream_id, k.routing_key]))).toEqual(
      new Map([
        [tasks[0]!.id, 'light.normal'],
        [tasks[1]!.id, 'light.high'],
        [tasks[2]!.id, 'heavy.normal'],
      ]),
    );
  });

  it('accepts an idempotencyKey per item and replays it', async () => {
    const key = `batch-${randomUUID()}`;
    const first = await app.inject({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: [{ type: 'a', idempotencyKey: key }, { type: 'b' }] } });
    expect(first.statusCode, first.body).toBe(202);
    const [keyed] = first.json<{ tasks: TaskBody[] }>().tasks;
    expect(keyed?.idempotencyKey).toBe(key);
    const again = await app.inject({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: [{ type: 'a', idempotencyKey: key }] } });
    expect(again.statusCode, again.body).toBe(202);
    expect(again.json<{ tasks: TaskBody[] }>().tasks[0]?.id).toBe(keyed?.id);
    const rows = await tdb.db.selectFrom('idempotency_keys').selectAll().where('key', '=', key).execute();
    expect(rows.map((r) => r.task_id)).toEqual([keyed?.id]);
  });

  it('is all or nothing: one item no tier fits → 422 and none of the batch is stored', async () => {
    const before = await counts();
    const res = await app.inject({
      method: 'POST',
      url: '/v1/tasks/batch',
      payload: { tasks: [{ type: 'a' }, { type: 'b', resources: { cpu: 64, memoryMb: 64 } }, { type: 'c' }] },
    });
    expectProblem(res, 422, 'NO_TIER_FITS');
    expect(await counts()).toEqual(before);
  });

  it('is all or nothing: an item reusing a key for another request → 422 and none of the batch is stored', async () => {
    const key = `reuse-${randomUUID()}`;
    expect((await submit({ type: 'first' }, { 'idempotency-key': key })).statusCode).toBe(202);
    const before = await counts();
    const res = await app.inject({
      method: 'POST',
      url: '/v1/tasks/batch',
      payload: { tasks: [{ type: 'a', idempotencyKey: `fresh-${randomUUID()}` }, { type: 'other', idempotencyKey: key }, { type: 'c' }] },
    });
    expectProblem(res, 422, 'IDEMPOTENCY_KEY_REUSED');
    expect(await counts()).toEqual(before);
  });
});

describe('Idempotency-Key', () => {
  it('20 concurrent submits with one key and body create exactly one task; every answer carries its id', async () => {
    const key = `conc-${randomUUID()}`;
    const body = { type: 'noop', payload: { order: 42 }, priority: 'high' };
    const before = await counts();
    const responses = await Promise.all(Array.from({ length: 20 }, () => submit(body, { 'idempotency-key': key })));
    const statuses = responses.map((r) => r.statusCode);
    expect(statuses.filter((s) => s === 202), JSON.stringify(statuses)).toHaveLength(1);
    expect(statuses.filter((s) => s === 200)).toHaveLength(19);
    const ids = new Set(responses.map((r) => r.json<TaskBody>().id));
    expect(ids.size).toBe(1);
    const [id] = [...ids];
    for (const r of responses) {
      expect(r.headers.location).toBe(`/v1/tasks/${id}`);
      expect(r.json<TaskBody>()).toMatchObject({ id, idempotencyKey: key, priority: 'high', state: 'queued' });
    }

    const submitted = await sql<{ n: number }>`SELECT count(*)::int AS n FROM events WHERE type = 'TaskSubmitted' AND data->'task'->>'idempotencyKey' = ${key}`.execute(tdb.db);
    expect(submitted.rows[0]?.n).toBe(1);
    const keys = await tdb.db.selectFrom('idempotency_keys').selectAll().where('key', '=', key).execute();
    expect(keys.map((k) => k.task_id)).toEqual([id]);
    expect(await tdb.db.selectFrom('outbox').select('id').where('stream_id', '=', id!).execute()).toHaveLength(1);
    expect(await counts()).toEqual({ events: before!.events + 1, outbox: before!.outbox + 1, current: before!.current + 1, history: before!.history + 1, keys: before!.keys + 1 });
  });

  it('a sequential retry answers 200 with the first task', async () => {
    const key = `retry-${randomUUID()}`;
    const first = await submit({ type: 'noop' }, { 'idempotency-key': key });
    expect(first.statusCode).toBe(202);
    const before = await counts();
    const second = await submit({ type: 'noop' }, { 'idempotency-key': key });
    expect(second.statusCode, second.body).toBe(200);
    expect(second.json<TaskBody>()).toEqual(first.json<TaskBody>());
    expect(await counts()).toEqual(before);
  });

  it('the same key with a different body → 422 IDEMPOTENCY_KEY_REUSED, nothing stored', async () => {
    const key = `reused-${randomUUID()}`;
    const first = (await submit({ type: 'noop', payload: { a: 1 } }, { 'idempotency-key': key })).json<TaskBody>();
    const before = await counts();
    const res = await submit({ type: 'noop', payload: { a: 2 } }, { 'idempotency-key': key });
    const body = expectProblem(res, 422, 'IDEMPOTENCY_KEY_REUSED');
    expect(body.taskId).toBe(first.id);
    expect(await counts()).toEqual(before);
  });

  it('concurrent submits with one key but different bodies: one is created, the others are refused', async () => {
    const key = `mixed-${randomUUID()}`;
    const before = await counts();
    const responses = await Promise.all(Array.from({ length: 6 }, (_, i) => submit({ type: 'noop', payload: { i } }, { 'idempotency-key': key })));
    const statuses = responses.map((r) => r.statusCode).sort();
    expect(statuses).toEqual([202, 422, 422, 422, 422, 422]);
    for (const r of responses.filter((x) => x.statusCode === 422)) expectProblem(r, 422, 'IDEMPOTENCY_KEY_REUSED');
    expect((await counts())!.keys).toBe(before!.keys + 1);
    expect((await counts())!.outbox).toBe(before!.outbox + 1);
  });
});

describe('health and docs', () => {
  it('/healthz → 200', async () => {
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: 'ok' });
  });

  it('/readyz → 200 with postgresql ok', async () => {
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toEqual({ status: 'ready', checks: { postgresql: { ok: true, critical: true } } });
  });

  it('/docs/json is an OpenAPI 3.1 document listing the task routes', async () => {
    const res = await app.inject({ method: 'GET', url: '/docs/json' });
    expect(res.statusCode).toBe(200);
    const doc = res.json<{ openapi: string; info: { title: string; version: string }; paths: Record<string, Record<string, unknown>> }>();
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.info).toMatchObject({ title: 'fogsched', version: '0.0.0-test' });
    expect(Object.keys(doc.paths['/v1/tasks'] ?? {})).toEqual(expect.arrayContaining(['get', 'post']));
    expect(doc.paths['/v1/tasks/batch']).toHaveProperty('post');
    expect(doc.paths['/v1/tasks/{id}']).toHaveProperty('get');
    expect(doc.paths['/v1/tasks/{id}/history']).toHaveProperty('get');
    expect(doc.paths['/v1/tasks/{id}/cancel']).toHaveProperty('post');
    const html = await app.inject({ method: 'GET', url: '/docs' });
    expect([200, 302]).toContain(html.statusCode);
  });
});

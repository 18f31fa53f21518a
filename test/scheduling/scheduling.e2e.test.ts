import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { getJson, killAll, postJson, spawnFogsched, testEnv, waitReady, type Spawned } from '../helpers/processes.js';

// Issue 6, end to end: the BUILT CLI (`npm run build` first) against the real
// PostgreSQL, RabbitMQ and Redis, with ms-level timings. Each describe block has
// its own database and queue prefix and shares its long-lived processes between
// its tests; processes one test needs alone are started and stopped by that test.

/** Short timings for every process. */
const FAST: Record<string, string> = {
  RETRY_BASE_MS: '50',
  RELAY_POLL_INTERVAL_MS: '200',
  SCHEDULER_POLL_INTERVAL_MS: '200',
  FOG_NODE_METRICS_INTERVAL_MS: '1000',
  FOG_NODE_GRACE_MS: '1000',
};

/** Lets wall-clock time pass; only where the behaviour under test is about time itself. */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Per environment: closes its pool, drops its database and deletes its queues and exchanges (once). */
const teardowns = new Set<() => Promise<void>>();
/** Processes one test started for itself; SIGKILLed after that test whatever happened. */
const scoped: Spawned[] = [];

afterEach(async () => {
  await Promise.all(scoped.splice(0).map((s) => s.kill('SIGKILL')));
});
afterAll(async () => {
  await killAll();
  for (const teardown of [...teardowns]) await teardown();
});

/** Ends a describe block: its processes, then its database and broker topology (quorum queues hold broker file handles). */
async function finish(t: T | undefined): Promise<void> {
  await killAll();
  await t?.teardown();
}

interface HistoryEvent {
  type: string;
  state: string;
  attempt: number;
  nodeId: string | null;
  actor: string | null;
  reason: string | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arbitrary JSON from the API
  error: any;
  at: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arbitrary JSON from the API
  data: any;
}

async function setup(label: string) {
  const env = await testEnv(label);
  const pool = new pg.Pool({ connectionString: env.dbUrl, max: 3 });
  // An idle client whose backend goes (the database dropped WITH (FORCE) at the end, once seen
  // under load) must not become an uncaught exception that fails the whole run.
  pool.on('error', () => {});
  const teardown = async () => {
    if (!teardowns.delete(teardown)) return;
    await pool.end();
    await env.drop();
  };
  teardowns.add(teardown);
  const base = `http://127.0.0.1:${env.port}`;
  const q = async <T = Record<string, unknown>>(text: string, values: unknown[] = []) => (await pool.query(text, values)).rows as T[];
  const count = async (text: string, values: unknown[] = []) => Number((await q<{ n: string }>(text, values))[0]?.n ?? 0);
  const allEnv = { ...env.env, ...FAST };
  const t = {
    ...env,
    env: allEnv,
    base,
    teardown,
    q,
    count,
    /** Spawns `fogsched start --roles <roles>` with the block's environment plus `extra`. */
    start: (roles: string, extra: Record<string, string> = {}, args: string[] = []) => spawnFogsched(['start', '--roles', roles, ...args], { ...allEnv, ...extra }),
    /** Like start, but SIGKILLed after the current test. */
    startScoped: (roles: string, extra: Record<string, string> = {}, args: string[] = []) => {
      const s = t.start(roles, extra, args);
      scoped.push(s);
      return s;
    },
    post: (path: string, body: unknown = {}, headers: Record<string, string> = {}) => postJson(`${base}${path}`, body, headers),
    get: (path: string) => getJson(`${base}${path}`),
    async status(path: string, method = 'GET'): Promise<number> {
      return (await fetch(`${base}${path}`, { method })).status;
    },
    /** Submits one task; expects 202 and returns its view. */
    async submit(body: Record<string, unknown>) {
      const res = await postJson(`${base}/v1/tasks`, body);
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      return res.body;
    },
    async history(id: string): Promise<HistoryEvent[]> {
      return (await getJson(`${base}/v1/tasks/${id}/history`)).events as HistoryEvent[];
    },
    /** Waits for the task to reach `state`; returns its view. */
    async waitState(id: string, state: string, timeoutMs = 15_000) {
      return eventually(
        async () => {
          const task = await getJson(`${base}/v1/tasks/${id}`);
          return task.state === state ? task : null;
        },
        { timeoutMs, message: `task ${id} did not reach ${state}` },
      );
    },
    /** Waits until every dispatch row of the tasks is published (their messages are on the queues). */
    async waitPublished(ids: string[], timeoutMs = 10_000) {
      await eventually(async () => (await count(`SELECT count(*) AS n FROM outbox WHERE stream_id = ANY($1) AND published_at IS NULL`, [ids])) === 0 && (await count(`SELECT count(*) AS n FROM outbox WHERE stream_id = ANY($1)`, [ids])) >= ids.length, {
        timeoutMs,
      });
    },
  };
  return t;
}
type T = Awaited<ReturnType<typeof setup>>;

const types = (h: HistoryEvent[]) => h.map((e) => e.type);
const ofType = (h: HistoryEvent[], type: string) => h.filter((e) => e.type === type);
const ms = (iso: string | Date) => (iso instanceof Date ? iso.getTime() : Date.parse(iso));

describe('delays, retries, timeouts, DLQ and batches on one pipeline', () => {
  let t: T;
  beforeAll(async () => {
    t = await setup('pipe');
    const app = t.start('api,relay,ingest,fog-node', { FOG_NODE_ID: 'pipe-node', FOG_NODE_SLOTS: '16' });
    await waitReady(t.port, app);
  });
  afterAll(() => finish(t));

  it('delayed task: scheduled with a future outbox row, starts within 1 s after notBefore and not before', async () => {
    const notBefore = new Date(Date.now() + 1500).toISOString();
    const task = await t.submit({ type: 'noop', notBefore });
    expect(task.state).toBe('scheduled');
    expect(task.notBefore).toBe(notBefore);
    // The dispatch is a row that comes due at notBefore: no timer in memory.
    const rows = await t.q<{ available_at: Date; published_at: Date | null }>(`SELECT available_at, published_at FROM outbox WHERE stream_id = $1`, [task.id]);
    expect(rows).toHaveLength(1);
    expect(rows[0]?.available_at.toISOString()).toBe(notBefore);
    expect(rows[0]?.published_at).toBeNull();

    await t.waitState(task.id, 'succeeded', 10_000);
    const [row] = await t.q<{ started_at: Date }>(`SELECT started_at FROM task_current WHERE task_id = $1`, [task.id]);
    const late = ms(row!.started_at) - ms(notBefore);
    expect(late).toBeGreaterThanOrEqual(0);
    expect(late).toBeLessThan(1000);
    expect(types(await t.history(task.id))).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskSucceeded']);
  });

  it('retries: failed twice then succeeded reads exactly that, with backoff delays in range', async () => {
    const task = await t.submit({ type: 'flaky', payload: { failTimes: 2 } });
    await t.waitState(task.id, 'succeeded');
    const h = await t.history(task.id);
    expect(types(h)).toEqual([
      'TaskSubmitted',
      'TaskStarted',
      'TaskAttemptFailed',
      'TaskRetryScheduled',
      'TaskStarted',
      'TaskAttemptFailed',
      'TaskRetryScheduled',
      'TaskStarted',
      'TaskSucceeded',
    ]);
    expect(ofType(h, 'TaskStarted').map((e) => e.attempt)).toEqual([1, 2, 3]);
    expect(ofType(h, 'TaskAttemptFailed').map((e) => e.attempt)).toEqual([1, 2]);
    expect(ofType(h, 'TaskRetryScheduled').map((e) => e.attempt)).toEqual([2, 3]);
    expect(ofType(h, 'TaskSucceeded')[0]?.attempt).toBe(3);
    for (const failed of ofType(h, 'TaskAttemptFailed')) expect(failed.error).toMatchObject({ code: 'flaky', retryable: true });
    // RETRY_BASE_MS=50, factor 2, equal jitter: [25, 50] then [50, 100].
    const [r1, r2] = ofType(h, 'TaskRetryScheduled');
    expect(r1!.data.delayMs).toBeGreaterThanOrEqual(25);
    expect(r1!.data.delayMs).toBeLessThanOrEqual(50);
    expect(r2!.data.delayMs).toBeGreaterThanOrEqual(50);
    expect(r2!.data.delayMs).toBeLessThanOrEqual(100);
    // Each retry starts no earlier than its due time.
    const starts = ofType(h, 'TaskStarted');
    for (const [i, r] of [r1!, r2!].entries()) {
      expect(ms(r.data.availableAt) - ms(r.at)).toBe(r.data.delayMs);
      expect(ms(starts[i + 1]!.at)).toBeGreaterThanOrEqual(ms(r.data.availableAt));
    }
    const view = await t.get(`/v1/tasks/${task.id}`);
    expect(view).toMatchObject({ attempt: 3, output: { attempt: 3 }, failureReason: null });
  });

  it('retries: the per-task retry {baseMs, factor, maxMs} overrides the server default', async () => {
    const task = await t.submit({ type: 'flaky', payload: { failTimes: 2 }, retry: { baseMs: 300, factor: 3, maxMs: 500 } });
    await t.waitState(task.id, 'succeeded');
    const [r1, r2] = ofType(await t.history(task.id), 'TaskRetryScheduled');
    // First: [150, 300]; second: min(500, 900) = 500 capped, so [250, 500] (the default would give ≤ 100).
    expect(r1!.data.delayMs).toBeGreaterThanOrEqual(150);
    expect(r1!.data.delayMs).toBeLessThanOrEqual(300);
    expect(r2!.data.delayMs).toBeGreaterThanOrEqual(250);
    expect(r2!.data.delayMs).toBeLessThanOrEqual(500);
  });

  it('a non-retryable error fails at once with reason non-retryable', async () => {
    const task = await t.submit({ type: 'fail', payload: { message: 'bad input', code: 'bad_input', retryable: false } });
    const done = await t.waitState(task.id, 'failed');
    expect(done.failureReason).toBe('non-retryable');
    expect(done.lastError).toEqual({ message: 'bad input', code: 'bad_input', retryable: false });
    expect(done.attempt).toBe(1);
    const h = await t.history(task.id);
    expect(types(h)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskAttemptFailed', 'TaskFailed']);
    expect(h[3]?.reason).toBe('non-retryable');
  });

  it('failing on every one of maxAttempts (default 3) ends failed with reason max-attempts and the last error', async () => {
    const task = await t.submit({ type: 'flaky', payload: { failTimes: 3 } });
    const done = await t.waitState(task.id, 'failed');
    expect(done.maxAttempts).toBe(3);
    expect(done.failureReason).toBe('max-attempts');
    expect(done.lastError).toEqual({ message: 'flaky failure on attempt 3', code: 'flaky', retryable: true });
    const h = await t.history(task.id);
    expect(ofType(h, 'TaskStarted')).toHaveLength(3);
    expect(ofType(h, 'TaskRetryScheduled')).toHaveLength(2);
    expect(h.at(-1)).toMatchObject({ type: 'TaskFailed', reason: 'max-attempts', attempt: 3 });
  });

  it('timeoutMs aborts a sleeping handler: TaskAttemptFailed with code timeout, then retried', async () => {
    const task = await t.submit({ type: 'sleep', payload: { ms: 5000 }, timeoutMs: 200, maxAttempts: 2 });
    const done = await t.waitState(task.id, 'failed', 10_000);
    const h = await t.history(task.id);
    expect(types(h)).toEqual([
      'TaskSubmitted',
      'TaskStarted',
      'TaskAttemptFailed',
      'TaskRetryScheduled',
      'TaskStarted',
      'TaskAttemptFailed',
      'TaskFailed',
    ]);
    for (const failed of ofType(h, 'TaskAttemptFailed')) expect(failed.error).toMatchObject({ code: 'timeout', retryable: true });
    expect(done.failureReason).toBe('max-attempts');
    // Both 5 s sleeps were cut short.
    expect(ms(done.finishedAt) - ms(done.submittedAt)).toBeLessThan(4000);
  });

  it('timeoutMs terminates a thread that ignores its abort signal (spin): failed within ~1.5 s, code timeout', async () => {
    const task = await t.submit({ type: 'spin', payload: { ms: 3000 }, timeoutMs: 200, maxAttempts: 1 });
    const done = await t.waitState(task.id, 'failed', 10_000);
    expect(done.lastError).toMatchObject({ code: 'timeout', retryable: true });
    expect(done.failureReason).toBe('max-attempts');
    const h = await t.history(task.id);
    const started = ofType(h, 'TaskStarted')[0]!;
    const failed = ofType(h, 'TaskFailed')[0]!;
    expect(ms(failed.at) - ms(started.at)).toBeLessThan(1500);
    // The node is fine afterwards and can run thread handlers again.
    const after = await t.submit({ type: 'spin', payload: { ms: 20 } });
    await t.waitState(after.id, 'succeeded');
  });

  it('GET /v1/dlq lists failed tasks with reason and last error; type, reason, since and until filter', async () => {
    const before = new Date(Date.now() - 1).toISOString();
    const a = await t.submit({ type: 'fail', payload: { message: 'dlq-a', retryable: false } });
    const b = await t.submit({ type: 'flaky', payload: { failTimes: 9 }, maxAttempts: 1 });
    await t.waitState(a.id, 'failed');
    await t.waitState(b.id, 'failed');
    const after = new Date(Date.now() + 1).toISOString();

    const all = await t.get('/v1/dlq?limit=500');
    const ids = all.items.map((i: { id: string }) => i.id);
    expect(ids).toEqual(expect.arrayContaining([a.id, b.id]));
    expect(all.items.every((i: { state: string }) => i.state === 'failed')).toBe(true);
    const itemA = all.items.find((i: { id: string }) => i.id === a.id);
    expect(itemA).toMatchObject({ failureReason: 'non-retryable', lastError: { message: 'dlq-a', code: 'fail', retryable: false } });
    const itemB = all.items.find((i: { id: string }) => i.id === b.id);
    expect(itemB).toMatchObject({ failureReason: 'max-attempts', lastError: { code: 'flaky' } });

    const byType = await t.get(`/v1/dlq?type=flaky&since=${encodeURIComponent(before)}`);
    expect(byType.items.map((i: { id: string }) => i.id)).toEqual([b.id]);
    const byReason = await t.get(`/v1/dlq?reason=non-retryable&since=${encodeURIComponent(before)}`);
    expect(byReason.items.map((i: { id: string }) => i.id)).toEqual([a.id]);
    const window = await t.get(`/v1/dlq?since=${encodeURIComponent(before)}&until=${encodeURIComponent(after)}`);
    expect(window.items.map((i: { id: string }) => i.id).sort()).toEqual([a.id, b.id].sort());
    const earlier = await t.get(`/v1/dlq?until=${encodeURIComponent(before)}`);
    expect(earlier.items.map((i: { id: string }) => i.id)).not.toContain(a.id);
    const later = await t.get(`/v1/dlq?since=${encodeURIComponent(after)}`);
    expect(later.items).toEqual([]);
    const bad = await t.post('/v1/dlq/requeue', { reason: 'bored' });
    expect(bad.status).toBe(400);
  });

  it('POST /v1/tasks/:id/requeue puts a failed task back (TaskRequeued by the actor) and it runs again; a non-failed one is 409', async () => {
    const task = await t.submit({ type: 'flaky', payload: { failTimes: 1 }, maxAttempts: 1 });
    const failed = await t.waitState(task.id, 'failed');
    expect(failed.failureReason).toBe('max-attempts');

    const res = await t.post(`/v1/tasks/${task.id}/requeue`, {}, { 'x-actor': 'alice' });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ state: 'queued', attempt: 2, failureReason: null });
    const done = await t.waitState(task.id, 'succeeded');
    expect(done.output).toEqual({ attempt: 2 });
    const h = await t.history(task.id);
    expect(types(h)).toEqual([
      'TaskSubmitted',
      'TaskStarted',
      'TaskAttemptFailed',
      'TaskFailed',
      'TaskRequeued',
      'TaskStarted',
      'TaskSucceeded',
    ]);
    // No credentials on this API: the actor is `anonymous`; X-Actor goes to the metadata as onBehalfOf.
    expect(ofType(h, 'TaskRequeued')[0]).toMatchObject({ actor: 'anonymous', attempt: 2 });
    expect(await t.q(`SELECT metadata->>'onBehalfOf' AS who FROM events WHERE stream_id = $1 AND type = 'TaskRequeued'`, [task.id])).toEqual([{ who: 'alice' }]);

    const again = await t.post(`/v1/tasks/${task.id}/requeue`, {}, { 'x-actor': 'alice' });
    expect(again.status).toBe(409);
    expect(again.body.code).toBe('TASK_NOT_REQUEUEABLE');
    const missing = await t.post(`/v1/tasks/00000000-0000-4000-8000-000000000000/requeue`);
    expect(missing.status).toBe(404);
  });

  it('POST /v1/dlq/requeue: dryRun counts and changes nothing; without it, requeues the matching tasks', async () => {
    const since = new Date(Date.now() - 1).toISOString();
    const failing = await Promise.all([1, 2, 3].map((i) => t.submit({ type: 'fail', payload: { message: `bulk-${i}`, retryable: false } })));
    const other = await t.submit({ type: 'flaky', payload: { failTimes: 9 }, maxAttempts: 1 });
    for (const f of [...failing, other]) await t.waitState(f.id, 'failed');
    const versions = async () => (await t.q<{ v: number }>(`SELECT sum(version)::int AS v FROM task_current WHERE task_id = ANY($1)`, [failing.map((f) => f.id)]))[0]?.v;
    const v0 = await versions();

    const dry = await t.post('/v1/dlq/requeue', { type: 'fail', since, dryRun: true }, { 'x-actor': 'bob' });
    expect(dry.status).toBe(200);
    expect(dry.body).toMatchObject({ matched: 3, requeued: 0, taskIds: [], dryRun: true });
    expect(await versions()).toBe(v0);
    expect(await t.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1) AND state = 'failed'`, [failing.map((f) => f.id)])).toBe(3);

    const wet = await t.post('/v1/dlq/requeue', { type: 'fail', since }, { 'x-actor': 'bob' });
    expect(wet.status).toBe(200);
    expect(wet.body.matched).toBe(3);
    expect(wet.body.requeued).toBe(3);
    expect([...wet.body.taskIds].sort()).toEqual(failing.map((f) => f.id).sort());
    for (const f of failing) {
      // `fail` fails again, with its fresh attempt.
      await eventually(async () => {
        const h = await t.history(f.id);
        return h.at(-1)?.type === 'TaskFailed' && ofType(h, 'TaskRequeued').length === 1 ? h : null;
      });
      const h = await t.history(f.id);
      expect(ofType(h, 'TaskRequeued')[0]).toMatchObject({ actor: 'anonymous', attempt: 2 });
      expect(ofType(h, 'TaskStarted').map((e) => e.attempt)).toEqual([1, 2]);
    }
    expect((await t.get(`/v1/tasks/${other.id}`)).state).toBe('failed');
  });

  it('batch: 1,000 noop tasks in one request, all stored and run', async () => {
    const res = await t.post('/v1/tasks/batch', { tasks: Array.from({ length: 1000 }, (_, i) => ({ type: 'noop', payload: { i } })) });
    expect(res.status).toBe(202);
    expect(res.body.tasks).toHaveLength(1000);
    const ids: string[] = res.body.tasks.map((x: { id: string }) => x.id);
    expect(new Set(ids).size).toBe(1000);
    expect(res.body.tasks[999].payload).toEqual({ i: 999 });
    expect(await t.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1)`, [ids])).toBe(1000);
    await eventually(async () => (await t.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1) AND state = 'succeeded'`, [ids])) === 1000, { timeoutMs: 60_000 });
  });

  it('batch: all or nothing, with every invalid item named by index', async () => {
    const before = await t.count(`SELECT count(*) AS n FROM task_current`);
    const items = (bad: Record<string, unknown>) => Array.from({ length: 10 }, (_, i) => (i === 3 || i === 7 ? { type: 'noop', ...bad } : { type: 'noop' }));

    // No tier fits: a domain error per item (422).
    const tooBig = await t.post('/v1/tasks/batch', { tasks: items({ resources: { cpu: 8, memoryMb: 100_000 } }) });
    expect(tooBig.status).toBe(422);
    expect(tooBig.body.code).toBe('NO_TIER_FITS');
    expect(tooBig.body.errors.map((e: { path: string }) => e.path)).toEqual(['body/tasks/3', 'body/tasks/7']);

    // Schema errors (400), also reported for every bad item.
    const badSchema = await t.post('/v1/tasks/batch', { tasks: items({ priority: 'urgent' }) });
    expect(badSchema.status).toBe(400);
    expect(badSchema.body.code).toBe('VALIDATION_FAILED');
    const paths: string[] = badSchema.body.errors.map((e: { path: string }) => e.path);
    expect(paths.some((p) => p.startsWith('body/tasks/3'))).toBe(true);
    expect(paths.some((p) => p.startsWith('body/tasks/7'))).toBe(true);
    expect(paths.every((p) => p.startsWith('body/tasks/3') || p.startsWith('body/tasks/7'))).toBe(true);

    expect(await t.count(`SELECT count(*) AS n FROM task_current`)).toBe(before);
    const tooMany = await t.post('/v1/tasks/batch', { tasks: Array.from({ length: 1001 }, () => ({ type: 'noop' })) });
    expect(tooMany.status).toBe(400);
    expect(await t.count(`SELECT count(*) AS n FROM task_current`)).toBe(before);
  });

  it('batch: per-item idempotency keys; resubmitting the batch returns the same ids and stores nothing new', async () => {
    const key = `batch-${Date.now()}`;
    const body = { tasks: Array.from({ length: 5 }, (_, i) => ({ type: 'noop', payload: { i }, idempotencyKey: `${key}-${i}` })) };
    const first = await t.post('/v1/tasks/batch', body);
    expect(first.status).toBe(202);
    const before = await t.count(`SELECT count(*) AS n FROM task_current`);
    const second = await t.post('/v1/tasks/batch', body);
    expect(second.status).toBe(202);
    expect(second.body.tasks.map((x: { id: string }) => x.id)).toEqual(first.body.tasks.map((x: { id: string }) => x.id));
    expect(await t.count(`SELECT count(*) AS n FROM task_current`)).toBe(before);
    // Mixed: old keys replay, a new key creates one task.
    const mixed = await t.post('/v1/tasks/batch', { tasks: [...body.tasks.slice(0, 2), { type: 'noop', idempotencyKey: `${key}-new` }] });
    expect(mixed.status).toBe(202);
    expect(mixed.body.tasks.slice(0, 2).map((x: { id: string }) => x.id)).toEqual(first.body.tasks.slice(0, 2).map((x: { id: string }) => x.id));
    expect(await t.count(`SELECT count(*) AS n FROM task_current`)).toBe(before + 1);
    expect(await t.count(`SELECT count(*) AS n FROM task_current WHERE spec->>'idempotencyKey' LIKE $1`, [`${key}-%`])).toBe(6);
  });
});

describe('deadlines and cancellation', () => {
  let t: T;
  beforeAll(async () => {
    t = await setup('cancel');
    // No fog node here: each test starts the one it needs.
    const core = t.start('api,relay,ingest');
    await waitReady(t.port, core);
  });
  afterAll(() => finish(t));

  it('deadline: a task not started by its deadline ends failed (expired) and is never run', async () => {
    const deadline = new Date(Date.now() + 300).toISOString();
    const task = await t.submit({ type: 'noop', deadline });
    expect(task.deadline).toBe(deadline);
    await t.waitPublished([task.id]);
    // Wall-clock time must pass the deadline while no fog node runs.
    await sleep(Math.max(0, ms(deadline) - Date.now()) + 200);
    t.startScoped('fog-node', { FOG_NODE_ID: 'late-node', FOG_NODE_SLOTS: '1' });
    const done = await t.waitState(task.id, 'failed', 20_000);
    expect(done.failureReason).toBe('expired');
    expect(done.startedAt).toBeNull();
    const h = await t.history(task.id);
    expect(types(h)).not.toContain('TaskStarted');
    expect(types(h)).toEqual(['TaskSubmitted', 'TaskAttemptFailed', 'TaskFailed']);
    expect(h.at(-1)).toMatchObject({ reason: 'expired' });
  });

  it('cancel of a queued task: a fog node started afterwards never starts it', async () => {
    const task = await t.submit({ type: 'noop' });
    await t.waitPublished([task.id]); // its message waits on the queue
    const res = await t.post(`/v1/tasks/${task.id}/cancel`, { reason: 'not needed' }, { 'x-actor': 'carol' });
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('cancelled');
    t.startScoped('fog-node', { FOG_NODE_ID: 'joiner', FOG_NODE_SLOTS: '1' });
    // A task behind it on the same queue and 1-slot node: once it ran, the cancelled one was dealt with.
    const next = await t.submit({ type: 'noop' });
    await t.waitState(next.id, 'succeeded', 20_000);
    const h = await t.history(task.id);
    expect(types(h)).toEqual(['TaskSubmitted', 'TaskCancelled']);
    expect(h.at(-1)).toMatchObject({ actor: 'anonymous', reason: 'not needed' });
    expect((await t.get(`/v1/tasks/${task.id}`)).state).toBe('cancelled');
  });

  it('cancel of a queued task: a fog node that joins after the cancel does not run its handler', async () => {
    const task = await t.submit({ type: 'sleep', payload: { ms: 8000 } });
    await t.waitPublished([task.id]);
    expect((await t.post(`/v1/tasks/${task.id}/cancel`)).status).toBe(200);
    const joinedAt = Date.now();
    t.startScoped('fog-node', { FOG_NODE_ID: 'joiner-2', FOG_NODE_SLOTS: '1' });
    // If the node ran the cancelled 8 s sleep, this noop would wait behind it on the only slot.
    const next = await t.submit({ type: 'noop' });
    await t.waitState(next.id, 'succeeded', 20_000);
    expect(Date.now() - joinedAt).toBeLessThan(5000);
  });

  it('cancel of a running task aborts its handler and frees the slot; cancelling again is 200, a succeeded task 409', async () => {
    t.startScoped('fog-node', { FOG_NODE_ID: 'one-slot', FOG_NODE_SLOTS: '1' });
    const long = await t.submit({ type: 'sleep', payload: { ms: 20_000 } });
    await t.waitState(long.id, 'running', 20_000);
    const res = await t.post(`/v1/tasks/${long.id}/cancel`, {}, { 'x-actor': 'dave' });
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('cancelled');
    const cancelledAt = Date.now();
    const next = await t.submit({ type: 'noop' });
    const done = await t.waitState(next.id, 'succeeded', 10_000);
    expect(done.nodeId).toBe('one-slot');
    expect(Date.now() - cancelledAt).toBeLessThan(5000);
    const h = await t.history(long.id);
    expect(types(h)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskCancelled']);
    expect(types(h)).not.toContain('TaskSucceeded');

    const again = await t.post(`/v1/tasks/${long.id}/cancel`);
    expect(again.status).toBe(200);
    expect(again.body.state).toBe('cancelled');
    expect(ofType(await t.history(long.id), 'TaskCancelled')).toHaveLength(1);

    const refused = await t.post(`/v1/tasks/${next.id}/cancel`);
    expect(refused.status).toBe(409);
    expect(refused.body.code).toBe('TASK_NOT_CANCELLABLE');
    const missing = await t.post(`/v1/tasks/00000000-0000-4000-8000-000000000000/cancel`);
    expect(missing.status).toBe(404);
  });

  it('a delayed task cancelled while no fog node listened, its Redis copy lost: never dispatched, never run', async () => {
    const notBefore = new Date(Date.now() + 2000).toISOString();
    const task = await t.submit({ type: 'noop', notBefore });
    expect((await t.post(`/v1/tasks/${task.id}/cancel`)).status).toBe(200);
    // The copy kept for nodes that join later is gone (Redis restarted empty, or the best-effort write failed).
    const redis = new Redis(inject('redisUrl'), { maxRetriesPerRequest: 1 });
    try {
      await redis.del(`${t.prefix}fog:cancelled`);
    } finally {
      redis.disconnect();
    }
    // The cancel withdrew the dispatch in its own transaction: nothing is left to come due.
    expect(await t.count(`SELECT count(*) AS n FROM outbox WHERE stream_id = $1 AND exchange = $2`, [task.id, `${t.prefix}tasks`])).toBe(0);
    // A node started now missed the broadcast and finds no cancel in Redis. A probe due just after
    // the cancelled task, on the same queue and the node's only slot, runs after it would have.
    t.startScoped('fog-node', { FOG_NODE_ID: 'forgetful', FOG_NODE_SLOTS: '1' });
    const probe = await t.submit({ type: 'noop', notBefore: new Date(ms(notBefore) + 200).toISOString() });
    const done = await t.waitState(probe.id, 'succeeded', 20_000);
    expect(done.nodeId).toBe('forgetful');
    // The node's own count of handlers it ran, from a metric sample taken after the probe finished:
    // on main it was 2 (the cancelled task ran when due; ingest then ignored its records).
    const sample = await eventually(
      async () => (await t.q<{ completed: string }>(`SELECT completed FROM node_metrics WHERE node_id = 'forgetful' AND at > $1 ORDER BY at DESC LIMIT 1`, [done.finishedAt]))[0],
      { timeoutMs: 10_000, message: 'no metric sample from the node after the probe' },
    );
    expect(Number(sample.completed)).toBe(1);
    expect(types(await t.history(task.id))).toEqual(['TaskSubmitted', 'TaskCancelled']);
    expect(await t.count(`SELECT count(*) AS n FROM outbox WHERE stream_id = $1 AND exchange = $2`, [task.id, `${t.prefix}tasks`])).toBe(0);
  });

  it('cancel works in the scheduled and retrying states too; a failed task is 409', async () => {
    t.startScoped('fog-node', { FOG_NODE_ID: 'cancel-node', FOG_NODE_SLOTS: '4' });
    const failing = await t.submit({ type: 'fail', payload: { retryable: false } });
    await t.waitState(failing.id, 'failed', 20_000);
    const notBefore = new Date(Date.now() + 1000).toISOString();
    const scheduled = await t.submit({ type: 'noop', notBefore });
    const retrying = await t.submit({ type: 'flaky', payload: { failTimes: 1 }, retry: { baseMs: 1000, factor: 1, maxMs: 1000 } });
    await t.waitState(retrying.id, 'retrying');
    for (const id of [scheduled.id, retrying.id]) {
      const res = await t.post(`/v1/tasks/${id}/cancel`);
      expect(res.status).toBe(200);
      expect(res.body.state).toBe('cancelled');
    }
    // The cancel withdrew both pending dispatches (notBefore, retry due): none goes out when due.
    expect(await t.count(`SELECT count(*) AS n FROM outbox WHERE stream_id = ANY($1) AND exchange = $2 AND published_at IS NULL`, [[scheduled.id, retrying.id], `${t.prefix}tasks`])).toBe(0);
    await sleep(1500); // wall-clock time passes both due times
    const probe = await t.submit({ type: 'noop' });
    await t.waitState(probe.id, 'succeeded');
    expect(types(await t.history(scheduled.id))).toEqual(['TaskSubmitted', 'TaskCancelled']);
    expect(ofType(await t.history(retrying.id), 'TaskStarted')).toHaveLength(1);
    expect((await t.get(`/v1/tasks/${retrying.id}`)).state).toBe('cancelled');
    const refused = await t.post(`/v1/tasks/${failing.id}/cancel`);
    expect(refused.status).toBe(409);
    expect(refused.body.code).toBe('TASK_NOT_CANCELLABLE');
  });
});

describe('priority, aging and tiers', () => {
  let t: T;
  beforeAll(async () => {
    t = await setup('prio');
    const core = t.start('api,relay,ingest');
    await waitReady(t.port, core);
  });
  afterAll(() => finish(t));

  it('with a backlog of low tasks, high tasks submitted after them start first', async () => {
    const lows = await t.post('/v1/tasks/batch', { tasks: Array.from({ length: 20 }, () => ({ type: 'sleep', payload: { ms: 30 }, priority: 'low' })) });
    const highs = await t.post('/v1/tasks/batch', { tasks: Array.from({ length: 5 }, () => ({ type: 'sleep', payload: { ms: 30 }, priority: 'high' })) });
    expect(lows.status).toBe(202);
    expect(highs.status).toBe(202);
    const lowIds: string[] = lows.body.tasks.map((x: { id: string }) => x.id);
    const highIds: string[] = highs.body.tasks.map((x: { id: string }) => x.id);
    await t.waitPublished([...lowIds, ...highIds]);
    t.startScoped('fog-node', { FOG_NODE_ID: 'prio-node', FOG_NODE_SLOTS: '1', FOG_NODE_AGING_MS: '60000' });
    const all = [...lowIds, ...highIds];
    await eventually(async () => (await t.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1) AND state = 'succeeded'`, [all])) === all.length, { timeoutMs: 30_000 });
    const startedAt = async (ids: string[]) => (await t.q<{ s: Date }>(`SELECT started_at AS s FROM task_current WHERE task_id = ANY($1) ORDER BY started_at`, [ids])).map((r) => ms(r.s));
    const lowStarts = await startedAt(lowIds);
    const highStarts = await startedAt(highIds);
    expect(Math.max(...highStarts)).toBeLessThan(lowStarts[5]!);
  });

  it('aging: a low task still starts within a couple of seconds under a continuous stream of high tasks', async () => {
    t.startScoped('fog-node', { FOG_NODE_ID: 'aging-node', FOG_NODE_SLOTS: '1', FOG_NODE_PREFETCH: '10', FOG_NODE_AGING_MS: '100' });
    const high = () => ({ type: 'sleep', payload: { ms: 40 }, priority: 'high' });
    const first = await t.post('/v1/tasks/batch', { tasks: Array.from({ length: 20 }, high) });
    expect(first.status).toBe(202);
    const low = await t.submit({ type: 'noop', priority: 'low' });
    const highIds: string[] = first.body.tasks.map((x: { id: string }) => x.id);
    let streaming = true;
    const stream = (async () => {
      // Keeps more high work arriving than the one slot can do (5 × 40 ms every 150 ms).
      while (streaming) {
        const more = await t.post('/v1/tasks/batch', { tasks: Array.from({ length: 5 }, high) });
        highIds.push(...more.body.tasks.map((x: { id: string }) => x.id));
        await sleep(150);
      }
    })();
    try {
      const started = await eventually(async () => {
        const task = await t.get(`/v1/tasks/${low.id}`);
        return task.startedAt ? task : null;
      }, { timeoutMs: 10_000 });
      expect(ms(started.startedAt) - ms(low.submittedAt)).toBeLessThan(2500);
      // High tasks submitted before the low one were still waiting when it started: it did not just come last.
      const overtaken = await t.count(
        `SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1) AND submitted_at < $2 AND (started_at IS NULL OR started_at > $3)`,
        [highIds, new Date(low.submittedAt), new Date(started.startedAt)],
      );
      expect(overtaken).toBeGreaterThan(0);
    } finally {
      streaming = false;
      await stream;
    }
    await eventually(async () => (await t.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1) AND state <> 'succeeded'`, [highIds])) === 0, { timeoutMs: 30_000 });
  });

  it('a medium node runs light tasks when no light node exists (and its own tier too)', async () => {
    t.startScoped('fog-node', { FOG_NODE_ID: 'medium-node', FOG_NODE_SLOTS: '2' }, ['--tier', 'medium']);
    const light = await t.submit({ type: 'noop' });
    const medium = await t.submit({ type: 'noop', resources: { cpu: 0.7, memoryMb: 600 } });
    expect(light.tier).toBe('light');
    expect(medium.tier).toBe('medium');
    const l = await t.waitState(light.id, 'succeeded', 20_000);
    const m = await t.waitState(medium.id, 'succeeded', 20_000);
    expect(l.nodeId).toBe('medium-node');
    expect(m.nodeId).toBe('medium-node');
    // A heavy task is not something a medium node takes.
    const heavy = await t.submit({ type: 'noop', resources: { cpu: 1, memoryMb: 1000 } });
    expect(heavy.tier).toBe('heavy');
    const probe = await t.submit({ type: 'noop' });
    await t.waitState(probe.id, 'succeeded');
    expect((await t.get(`/v1/tasks/${heavy.id}`)).state).toBe('queued');
  });
});

describe('recurring schedules', () => {
  let t: T;
  let s1: Spawned;
  let scheduleId = '';
  /** ScheduleFired events of a schedule: fireAt and taskId, oldest first. */
  const fired = (id: string) =>
    t.q<{ fire_at: string; task_id: string }>(`SELECT data->>'fireAt' AS fire_at, data->>'taskId' AS task_id FROM events WHERE type = 'ScheduleFired' AND stream_id = $1 ORDER BY position`, [id]);
  const tasksOf = (id: string) => t.q<{ task_id: string }>(`SELECT stream_id AS task_id FROM events WHERE type = 'TaskSubmitted' AND metadata->>'actor' = $1`, [`schedule:${id}`]);

  beforeAll(async () => {
    t = await setup('cron');
    const core = t.start('api,relay,ingest,fog-node', { FOG_NODE_ID: 'cron-node' });
    await waitReady(t.port, core);
  });
  afterAll(() => finish(t));

  it('rejects an invalid cron, time zone or catch-up with 400 VALIDATION_FAILED', async () => {
    const badCron = await t.post('/v1/schedules', { cron: '61 * * * *', template: { type: 'noop' } });
    expect(badCron.status).toBe(400);
    expect(badCron.body.code).toBe('VALIDATION_FAILED');
    expect(badCron.body.errors[0].path).toBe('body/cron');
    const badZone = await t.post('/v1/schedules', { cron: '* * * * *', timezone: 'Mars/Olympus_Mons', template: { type: 'noop' } });
    expect(badZone.status).toBe(400);
    expect(badZone.body.code).toBe('VALIDATION_FAILED');
    expect(badZone.body.errors[0].path).toBe('body/timezone');
    const badCatchUp = await t.post('/v1/schedules', { cron: '* * * * *', catchUp: 'all', template: { type: 'noop' } });
    expect(badCatchUp.status).toBe(400);
    const badTemplate = await t.post('/v1/schedules', { cron: '* * * * *', template: { type: 'noop', resources: { cpu: 8, memoryMb: 100_000 } } });
    expect(badTemplate.status).toBe(422);
    expect(await t.count(`SELECT count(*) AS n FROM schedules`)).toBe(0);
  });

  it('an every-second schedule creates a task about once per second, and they succeed', async () => {
    s1 = t.start('scheduler');
    const res = await t.post('/v1/schedules', { name: 'tick', cron: '* * * * * *', template: { type: 'noop', payload: { from: 'cron' } } }, { 'x-actor': 'erin' });
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({ name: 'tick', cron: '* * * * * *', timezone: 'UTC', catchUp: 'skip', state: 'active', firedCount: 0 });
    expect(ms(res.body.nextFireAt) - Date.now()).toBeLessThanOrEqual(1000);
    scheduleId = res.body.id;
    const runs = await eventually(async () => {
      const f = await fired(scheduleId);
      return f.length >= 3 ? f : null;
    }, { timeoutMs: 15_000 });
    // One run per second: consecutive run times are whole seconds apart (a run folded into a late tick may make a gap, never a repeat).
    for (let i = 1; i < runs.length; i++) {
      const gap = ms(runs[i]!.fire_at) - ms(runs[i - 1]!.fire_at);
      expect(gap % 1000).toBe(0);
      expect(gap).toBeGreaterThanOrEqual(1000);
    }
    expect(ms(runs[2]!.fire_at) - ms(res.body.nextFireAt)).toBeLessThanOrEqual(3000);
    for (const run of runs.slice(0, 3)) {
      const task = await t.waitState(run.task_id, 'succeeded');
      expect(task.payload).toEqual({ from: 'cron' });
      // Created on time: the scheduler sleeps at most SCHEDULER_POLL_INTERVAL_MS (200) past a run; the
      // margin is for a 2-core machine also booting RabbitMQ clusters in the other test worker.
      expect(ms(task.submittedAt) - ms(run.fire_at)).toBeLessThan(2000);
      expect(ms(task.submittedAt)).toBeGreaterThanOrEqual(ms(run.fire_at));
    }
    const view = await t.get(`/v1/schedules/${scheduleId}`);
    expect(view.firedCount).toBeGreaterThanOrEqual(3);
    expect(view.lastTaskId).toBeTruthy();
    const list = await t.get('/v1/schedules');
    expect(list.items.map((s: { id: string }) => s.id)).toContain(scheduleId);
    const created = await t.q<{ actor: string }>(`SELECT metadata->>'actor' AS actor, metadata->>'onBehalfOf' AS who FROM events WHERE stream_id = $1 AND type = 'ScheduleCreated'`, [scheduleId]);
    expect(created).toEqual([{ actor: 'anonymous', who: 'erin' }]);
  });

  it('two scheduler replicas and a SIGKILLed, restarted one: each run creates exactly one task', async () => {
    const s2 = t.start('scheduler');
    const start = (await fired(scheduleId)).length;
    await eventually(async () => (await fired(scheduleId)).length >= start + 3, { timeoutMs: 15_000 });
    await s1.kill('SIGKILL');
    const mid = (await fired(scheduleId)).length;
    // s2 alone keeps it going.
    await eventually(async () => (await fired(scheduleId)).length >= mid + 2, { timeoutMs: 15_000 });
    s1 = t.start('scheduler');
    const after = (await fired(scheduleId)).length;
    await eventually(async () => (await fired(scheduleId)).length >= after + 3, { timeoutMs: 15_000 });
    await s2.kill('SIGTERM');
    const paused = await t.post(`/v1/schedules/${scheduleId}/pause`);
    expect(paused.status).toBe(200);

    const runs = await fired(scheduleId);
    const tasks = await tasksOf(scheduleId);
    expect(tasks.length).toBe(runs.length);
    expect(new Set(runs.map((r) => r.fire_at)).size).toBe(runs.length);
    expect(new Set(tasks.map((r) => r.task_id))).toEqual(new Set(runs.map((r) => r.task_id)));
    expect(await t.q(`SELECT stream_id, data->>'fireAt' AS fire_at FROM events WHERE type = 'ScheduleFired' GROUP BY 1, 2 HAVING count(*) > 1`)).toEqual([]);
    expect((await t.get(`/v1/schedules/${scheduleId}`)).firedCount).toBe(runs.length);
    await eventually(async () => (await t.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1) AND state = 'succeeded'`, [runs.map((r) => r.task_id)])) === runs.length, {
      timeoutMs: 15_000,
    });
  });

  it('pause stops firings, resume starts them again, delete gives 204 and then 404', async () => {
    // Paused at the end of the previous test (or pause it now: pausing twice is fine).
    const paused = await t.post(`/v1/schedules/${scheduleId}/pause`);
    expect(paused.status).toBe(200);
    expect(paused.body.state).toBe('paused');
    const count = (await fired(scheduleId)).length;
    // Wall-clock time must pass for runs that would have been due (2 at least) to show that none fires.
    await sleep(2200);
    expect((await fired(scheduleId)).length).toBe(count);

    const resumed = await t.post(`/v1/schedules/${scheduleId}/resume`);
    expect(resumed.status).toBe(200);
    expect(resumed.body.state).toBe('active');
    expect(ms(resumed.body.nextFireAt)).toBeGreaterThan(Date.now() - 1000);
    await eventually(async () => (await fired(scheduleId)).length >= count + 2, { timeoutMs: 10_000 });
    // Runs missed while paused are not fired later: each fireAt after resume is after the pause.
    const runs = await fired(scheduleId);
    expect(runs.slice(count).every((r) => ms(r.fire_at) >= ms(resumed.body.nextFireAt))).toBe(true);

    expect(await t.status(`/v1/schedules/${scheduleId}`, 'DELETE')).toBe(204);
    expect(await t.status(`/v1/schedules/${scheduleId}`)).toBe(404);
    const gone = await t.get(`/v1/schedules/${scheduleId}`);
    expect(gone.code).toBe('SCHEDULE_NOT_FOUND');
    expect((await t.get('/v1/schedules')).items.map((s: { id: string }) => s.id)).not.toContain(scheduleId);
    expect(await t.status(`/v1/schedules/${scheduleId}/pause`, 'POST')).toBe(404);
    const log = (await t.q<{ type: string }>(`SELECT type FROM events WHERE stream_id = $1 ORDER BY position`, [scheduleId])).map((r) => r.type);
    expect(log[0]).toBe('ScheduleCreated');
    expect(log).toContain('SchedulePaused');
    expect(log).toContain('ScheduleResumed');
    expect(log.at(-1)).toBe('ScheduleDeleted');
  });

  it("catch-up after the scheduler was down past the misfire grace: 'skip' fires none of the missed runs, 'once' exactly one", async () => {
    await s1.kill('SIGTERM');
    const skip = await t.post('/v1/schedules', { cron: '* * * * * *', catchUp: 'skip', template: { type: 'noop' } });
    const once = await t.post('/v1/schedules', { cron: '* * * * * *', catchUp: 'once', template: { type: 'noop' } });
    expect(skip.status).toBe(201);
    expect(once.status).toBe(201);
    // Wall-clock time must pass several due times, and the 300 ms grace, with no scheduler running.
    await sleep(3200);
    const restartedAt = Date.now();
    t.start('scheduler', { SCHEDULER_MISFIRE_GRACE_MS: '300' });
    await eventually(async () => (await t.count(`SELECT count(*) AS n FROM events WHERE stream_id = $1 AND type = 'ScheduleSkipped'`, [skip.body.id])) >= 1, { timeoutMs: 15_000 });
    await eventually(async () => (await fired(once.body.id)).length >= 1, { timeoutMs: 15_000 });
    // And both go on firing on time afterwards.
    await eventually(async () => (await fired(skip.body.id)).length >= 1 && (await fired(once.body.id)).length >= 2, { timeoutMs: 15_000 });
    for (const s of [skip, once]) expect((await t.post(`/v1/schedules/${s.body.id}/pause`)).status).toBe(200);

    const missed = <R extends { fire_at: string }>(runs: R[]) => runs.filter((r) => ms(r.fire_at) < restartedAt);
    const skipped = await t.q<{ from: string }>(`SELECT data->>'from' AS from FROM events WHERE stream_id = $1 AND type = 'ScheduleSkipped'`, [skip.body.id]);
    expect(skipped).toEqual([{ from: skip.body.nextFireAt }]);
    expect(missed(await fired(skip.body.id))).toEqual([]);
    const onceRuns = missed(await fired(once.body.id));
    expect(onceRuns).toHaveLength(1);
    expect(onceRuns[0]!.fire_at).toBe(once.body.nextFireAt);
    await t.waitState(onceRuns[0]!.task_id, 'succeeded');
    expect(await t.count(`SELECT count(*) AS n FROM events WHERE stream_id = $1 AND type = 'ScheduleSkipped'`, [once.body.id])).toBe(0);
    // Exactly one task per firing for both.
    for (const s of [skip, once]) expect((await tasksOf(s.body.id)).length).toBe((await fired(s.body.id)).length);
  });
});

describe('restart', () => {
  let t: T | undefined;
  afterAll(() => finish(t));

  it('a scheduled (+2 s) and a retrying task survive SIGTERM of every role and complete on time', async () => {
    t = await setup('restart');
    const roles = 'api,relay,ingest,fog-node,scheduler';
    const first = t.start(roles, { FOG_NODE_ID: 'before' });
    await waitReady(t.port, first);
    const notBefore = new Date(Date.now() + 2000).toISOString();
    const scheduled = await t.submit({ type: 'noop', notBefore });
    const retrying = await t.submit({ type: 'flaky', payload: { failTimes: 1 }, retry: { baseMs: 2000, factor: 1, maxMs: 2000 } });
    expect(scheduled.state).toBe('scheduled');
    await t.waitState(retrying.id, 'retrying');
    expect(await first.kill('SIGTERM')).toBe(0);
    expect((await t.q<{ state: string }>(`SELECT state FROM task_current WHERE task_id = $1`, [scheduled.id]))[0]?.state).toBe('scheduled');
    expect((await t.q<{ state: string }>(`SELECT state FROM task_current WHERE task_id = $1`, [retrying.id]))[0]?.state).toBe('retrying');

    const second = t.start(roles, { FOG_NODE_ID: 'after' });
    await waitReady(t.port, second);
    const readyAt = Date.now();
    const a = await t.waitState(scheduled.id, 'succeeded', 15_000);
    const b = await t.waitState(retrying.id, 'succeeded', 15_000);
    expect(a.nodeId).toBe('after');
    expect(b.nodeId).toBe('after');
    // Not before its due time, and within about a second of it (or of the restart, if that came later).
    expect(ms(a.startedAt)).toBeGreaterThanOrEqual(ms(notBefore));
    expect(ms(a.startedAt) - Math.max(ms(notBefore), readyAt)).toBeLessThan(1000);
    const h = await t.history(retrying.id);
    const retry = ofType(h, 'TaskRetryScheduled')[0]!;
    const restart = ofType(h, 'TaskStarted')[1]!;
    expect(restart.attempt).toBe(2);
    expect(ms(restart.at)).toBeGreaterThanOrEqual(ms(retry.data.availableAt));
    expect(ms(restart.at) - Math.max(ms(retry.data.availableAt), readyAt)).toBeLessThan(1000);
    expect(await second.kill('SIGTERM')).toBe(0);
  });
});

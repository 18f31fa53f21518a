import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import { appendNodeEvent, readNodeStreamState } from '../../src/coordinator/index.js';
import { DEFAULT_TIERS, type TaskCommand } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { getTaskHistory } from '../../src/projections/index.js';
import { createScheduler, expireRunningLeases, type RunningLease } from '../../src/schedules/index.js';
import { createTaskService, executeTaskCommands, type SubmitInput } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

// Issue 15.4: a running task whose result will never come (its node died after acking the task
// message, or the result was lost) is given up by the scheduler role with a recorded reason.
// Tasks reach `running` through the real command path; FogNodeLost is written the way the
// coordinator writes it.

const names = topologyNames('t_');
const logger = createLogger('silent');
const caller = { tenant: 'default', actor: 'test' };
const backoff = { baseMs: 10, factor: 1, maxMs: 10 };
/** A lease no task here outlives, and no grace after a node's loss (no task here has a timeout it could cut short). */
const NODE_LOST: RunningLease = { leaseMs: 3_600_000, graceMs: 0 };
let tdb: TestDatabase;

beforeAll(async () => {
  tdb = await createTestDatabase('lease');
});
afterAll(async () => {
  await tdb.drop();
});

const service = () => createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });

async function submit(input: SubmitInput = { type: 'noop' }): Promise<string> {
  return (await service().submit(input, caller)).task.taskId;
}

/** What ingest does with a fog node's records. */
async function command(taskId: string, c: TaskCommand): Promise<number> {
  const outcome = await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId, command: c, metadata: { actor: 'node:test' } }], names));
  return outcome.eventCount;
}
const start = (taskId: string, nodeId: string, attempt = 1, at = new Date()) =>
  command(taskId, { type: 'StartTask', data: { attempt, nodeId, now: at.toISOString() } });

/** The coordinator's record of a node joining, then being lost (its heartbeat expired). */
async function joined(nodeId: string) {
  const state = await readNodeStreamState(tdb.db, nodeId);
  const next = await appendNodeEvent(tdb.db, state, { type: 'FogNodeJoined', data: { nodeId, tier: 'light', slots: 4, version: 'test', at: new Date().toISOString() } }, 'coordinator:test');
  expect(next).not.toBeNull();
}
async function lost(nodeId: string) {
  const state = await readNodeStreamState(tdb.db, nodeId);
  const event = {
    type: 'FogNodeLost' as const,
    data: { nodeId, tier: 'light', lastSeen: new Date().toISOString(), reason: 'heartbeat-expired' as const, inFlightTaskIds: [], at: new Date().toISOString() },
  };
  expect(await appendNodeEvent(tdb.db, state, event, 'coordinator:test')).not.toBeNull();
}

async function current(taskId: string) {
  return tdb.db
    .selectFrom('task_current')
    .select(['state', 'attempt', 'node_id', 'failure_reason', 'last_error', 'progress', 'reported_at'])
    .where('task_id', '=', taskId)
    .executeTakeFirstOrThrow();
}
const types = async (taskId: string) => (await getTaskHistory(tdb.db, taskId)).map((e) => e.type);
const attemptFailures = async (taskIds: readonly string[]) =>
  Number(
    (await sql<{ n: number }>`SELECT count(*)::int AS n FROM events WHERE stream_id = ANY(${taskIds}::text[]) AND type = 'TaskAttemptFailed'`.execute(tdb.db)).rows[0]?.n,
  );

const sweep = (lease: RunningLease = NODE_LOST) => expireRunningLeases({ db: tdb.db, names, lease, backoff, logger });

describe('node-lost', () => {
  it('the scheduler role retries a task whose node was lost after it started, with error node-lost; the late result is a no-op', async () => {
    const task = await submit();
    await joined('edge-a');
    await start(task, 'edge-a');
    await lost('edge-a');
    // On main nothing ever noticed: the task stayed `running` for good.
    const scheduler = createScheduler({
      db: tdb.db,
      names,
      tiers: DEFAULT_TIERS,
      defaultMaxAttempts: 3,
      logger,
      pollIntervalMs: 50,
      misfireGraceMs: 1000,
      lease: NODE_LOST,
      backoff,
      retention: { outboxDays: 7, inboxDays: 7, idempotencyKeyHours: 24 },
    });
    await scheduler.start();
    try {
      await eventually(async () => (await current(task)).state !== 'running', { timeoutMs: 5000 });
    } finally {
      await scheduler.stop();
    }
    const row = await current(task);
    expect(row).toMatchObject({ state: 'retrying', attempt: 2, node_id: null });
    expect(row.last_error).toMatchObject({ code: 'node-lost', retryable: true });
    expect((row.last_error as { message: string }).message).toContain('edge-a');
    const history = await getTaskHistory(tdb.db, task);
    expect(history.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskAttemptFailed', 'TaskRetryScheduled']);
    expect(history[2]).toMatchObject({ attempt: 1, nodeId: 'edge-a', actor: 'scheduler' });
    // The retry is dispatched like any other: a new outbox row for attempt 2.
    const dispatches = await tdb.db.selectFrom('outbox').select(['body']).where('stream_id', '=', task).where('exchange', '=', names.tasks).execute();
    expect(dispatches.map((d) => (d.body as { attempt: number }).attempt)).toEqual([1, 2]);

    // The node's result for attempt 1 arrives after all: nothing changes.
    const late = await command(task, { type: 'SucceedTask', data: { attempt: 1, nodeId: 'edge-a', output: 1, durationMs: 5, startedAt: new Date().toISOString(), now: new Date().toISOString() } });
    expect(late).toBe(0);
    expect((await current(task)).state).toBe('retrying');
  });

  it('leaves alone a task started after its node was lost (a node back under the same id), and tasks of live nodes', async () => {
    const before = await submit();
    const after = await submit();
    const elsewhere = await submit();
    await joined('edge-b');
    await joined('edge-c');
    await start(before, 'edge-b');
    await lost('edge-b');
    await joined('edge-b');
    await start(after, 'edge-b');
    await start(elsewhere, 'edge-c');
    expect(await sweep()).toBe(1);
    expect((await current(before)).state).toBe('retrying');
    expect((await current(after)).state).toBe('running');
    expect((await current(elsewhere)).state).toBe('running');
    expect(await sweep()).toBe(0);
  });

  it('a task on its last attempt ends failed with reason max-attempts and the node-lost error', async () => {
    const task = await submit({ type: 'noop', maxAttempts: 1 });
    await joined('edge-d');
    await start(task, 'edge-d');
    await lost('edge-d');
    expect(await sweep()).toBe(1);
    const row = await current(task);
    expect(row).toMatchObject({ state: 'failed', failure_reason: 'max-attempts' });
    expect(row.last_error).toMatchObject({ code: 'node-lost' });
    expect(await types(task)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskAttemptFailed', 'TaskFailed']);
  });

  it('waits RUNNING_LEASE_GRACE_MS after the loss: a result the node sent before it went is applied, not thrown away', async () => {
    const done = await submit();
    const silent = await submit();
    await joined('edge-j');
    await start(done, 'edge-j');
    await start(silent, 'edge-j');
    await lost('edge-j');
    const lostAt = Date.now();
    const lease = { leaseMs: 3_600_000, graceMs: 500 };
    await sweep(lease);
    expect((await current(silent)).state).toBe('running');
    // The result of one of them was still in the results queue when the coordinator saw the node go.
    await command(done, { type: 'SucceedTask', data: { attempt: 1, nodeId: 'edge-j', output: 1, durationMs: 5, startedAt: new Date().toISOString(), now: new Date().toISOString() } });
    await eventually(async () => (await sweep(lease)) >= 0 && (await current(silent)).state !== 'running', { timeoutMs: 5000, intervalMs: 20 });
    expect(Date.now() - lostAt).toBeGreaterThanOrEqual(500);
    expect((await current(silent)).last_error).toMatchObject({ code: 'node-lost' });
    expect(await types(done)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskSucceeded']);
  });

  it('two scheduler replicas sweeping at once give each attempt up exactly once', async () => {
    const tasks = await Promise.all(Array.from({ length: 40 }, () => submit()));
    await joined('edge-e');
    for (const t of tasks) await start(t, 'edge-e');
    await lost('edge-e');
    const [a, b] = await Promise.all([sweep(), sweep()]);
    expect(a + b).toBe(40);
    expect(await attemptFailures(tasks)).toBe(40);
    for (const t of tasks) expect(await current(t)).toMatchObject({ state: 'retrying', attempt: 2 });
    expect(await Promise.all([sweep(), sweep()])).toEqual([0, 0]);
    expect(await attemptFailures(tasks)).toBe(40);
  });
});

describe('lease-expired', () => {
  // Other tests' tasks may still be running: each test looks at its own tasks, not at counts.
  /** Sweeps until the task is no longer running (wall-clock time must pass for a lease to run out). */
  const sweepUntilGivenUp = (taskId: string, lease: RunningLease) =>
    eventually(async () => (await sweep(lease)) >= 0 && (await current(taskId)).state !== 'running', { timeoutMs: 5000, intervalMs: 20 });
  const sweepUntilGivenUpWithin = (taskId: string, lease: RunningLease, timeoutMs: number) =>
    eventually(async () => (await sweep(lease)) >= 0 && (await current(taskId)).state !== 'running', { timeoutMs, intervalMs: 50 });

  it('a task with timeoutMs is given up once timeoutMs + RUNNING_LEASE_GRACE_MS passed since its start, not before', async () => {
    const task = await submit({ type: 'sleep', timeoutMs: 100 });
    const other = await submit({ type: 'sleep', timeoutMs: 3_600_000 });
    const startedAt = Date.now();
    await start(task, 'edge-f');
    await start(other, 'edge-f');
    await sweepUntilGivenUp(task, { leaseMs: 3_600_000, graceMs: 200 });
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(300);
    const row = await current(task);
    expect(row).toMatchObject({ state: 'retrying', attempt: 2 });
    expect(row.last_error).toMatchObject({ code: 'lease-expired', retryable: true });
    expect((row.last_error as { message: string }).message).toContain('edge-f');
    expect(await types(task)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskAttemptFailed', 'TaskRetryScheduled']);
    expect((await current(other)).state).toBe('running');
  });

  it('a task without timeoutMs is given up after RUNNING_LEASE_MS', async () => {
    const task = await submit({ type: 'sleep' });
    const startedAt = Date.now();
    await start(task, 'edge-g');
    await sweepUntilGivenUp(task, { leaseMs: 300, graceMs: 3_600_000 });
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(300);
    expect((await current(task)).last_error).toMatchObject({ code: 'lease-expired' });
  });

  it('a start recorded late (a backlog in ingest, or a node clock behind) gets its whole lease from when it was recorded', async () => {
    const task = await submit({ type: 'sleep', timeoutMs: 100 });
    // The node says it started ten minutes ago: by its time the lease ran out long ago.
    const recordedAt = Date.now();
    await start(task, 'edge-h', 1, new Date(recordedAt - 600_000));
    const lease = { leaseMs: 3_600_000, graceMs: 500 };
    await sweep(lease);
    expect((await current(task)).state).toBe('running');
    await sweepUntilGivenUp(task, lease);
    expect(Date.now() - recordedAt).toBeGreaterThanOrEqual(600);
    expect((await current(task)).last_error).toMatchObject({ code: 'lease-expired' });
  });

  it('a progress report (TaskProgressed) extends the lease: a task that reports is kept, one that went quiet is given up', async () => {
    const reporting = await submit({ type: 'sleep' });
    const quiet = await submit({ type: 'sleep' });
    await start(reporting, 'edge-p');
    await start(quiet, 'edge-p');
    const lease = { leaseMs: 3000, graceMs: 3_600_000 };
    const report = (fraction: number) =>
      command(reporting, { type: 'ReportProgress', data: { attempt: 1, nodeId: 'edge-p', fraction, message: `at ${fraction}`, reportedAt: new Date().toISOString(), now: new Date().toISOString() } });
    // Report every 200 ms (far inside the lease) until the quiet one's lease ran out.
    let fraction = 0;
    await eventually(
      async () => {
        fraction = Math.min(1, fraction + 0.01);
        expect(await report(fraction)).toBe(1);
        await sweep(lease);
        return (await current(quiet)).state !== 'running';
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    );
    expect((await current(quiet)).last_error).toMatchObject({ code: 'lease-expired' });
    const kept = await current(reporting);
    expect(kept.state).toBe('running');
    expect(kept.progress).toMatchObject({ fraction, message: `at ${fraction}` });
    // Once it stops reporting, its lease runs out from its last report.
    await sweepUntilGivenUpWithin(reporting, lease, 20_000);
    expect((await current(reporting)).last_error).toMatchObject({ code: 'lease-expired', message: expect.stringContaining('last report') });
  });

  it('a result that arrives in time ends the lease: nothing is given up', async () => {
    const task = await submit({ type: 'sleep', timeoutMs: 50 });
    await start(task, 'edge-i');
    await command(task, { type: 'SucceedTask', data: { attempt: 1, nodeId: 'edge-i', output: null, durationMs: 1, startedAt: new Date().toISOString(), now: new Date().toISOString() } });
    await sweep({ leaseMs: 1, graceMs: 0 });
    expect((await current(task)).state).toBe('succeeded');
    expect(await types(task)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskSucceeded']);
  });
});

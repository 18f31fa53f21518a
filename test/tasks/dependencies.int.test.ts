import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TIERS, FogschedError, MAX_DEPENDENCIES, type TaskCommand, type TaskMessage } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { rebuildProjections } from '../../src/projections/index.js';
import { createScheduler, pruneRetention } from '../../src/schedules/index.js';
import { createTaskService, executeTaskCommands, type Caller, type SubmitInput } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

const names = topologyNames('t_');
let tdb: TestDatabase;
const caller: Caller = { tenant: 'acme', actor: 'test' };

beforeAll(async () => {
  tdb = await createTestDatabase('deps');
});
afterAll(async () => {
  await tdb?.drop();
});

const service = () => createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 1, maxBatch: 500 });

async function submit(input: Partial<SubmitInput> = {}, who: Caller = caller) {
  return (await service().submit({ type: 'step', ...input }, who)).task;
}

function resultCommand(outcome: 'succeeded' | 'failed', output: unknown = null): TaskCommand {
  const now = new Date().toISOString();
  return outcome === 'succeeded'
    ? { type: 'SucceedTask', data: { attempt: 1, nodeId: 'n1', output, durationMs: 1, startedAt: now, now } }
    : {
        type: 'FailTask',
        data: { attempt: 1, nodeId: 'n1', error: { message: 'no', code: 'bad', retryable: false }, startedAt: now, backoff: { baseMs: 1, factor: 1, maxMs: 1 }, random: 0, now },
      };
}

/** Ends a queued task (attempt 1) in its own transaction. */
async function finish(taskId: string, outcome: 'succeeded' | 'failed', output: unknown = null) {
  await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId, command: resultCommand(outcome, output), metadata: { actor: 'node' } }], names));
}

async function cancel(taskId: string) {
  await service().cancel(taskId, caller, 'test');
}

async function stateOf(taskId: string): Promise<string | undefined> {
  const row = await tdb.db.selectFrom('task_current').select('state').where('task_id', '=', taskId).executeTakeFirst();
  return row?.state;
}

async function eventsOf(taskId: string) {
  return tdb.db.selectFrom('events').select(['type', 'data', 'metadata']).where('stream_id', '=', taskId).orderBy('stream_version').execute();
}

async function typesOf(taskId: string): Promise<string[]> {
  return (await eventsOf(taskId)).map((e) => e.type);
}

async function dispatchBodies(taskId: string): Promise<TaskMessage[]> {
  const rows = await tdb.db.selectFrom('outbox').select('body').where('stream_id', '=', taskId).where('exchange', '=', names.tasks).orderBy('id').execute();
  return rows.map((r) => r.body as TaskMessage);
}

async function rowsMentioning(taskId: string) {
  const r = await sql<{ events: number; current: number; edges: number; waits: number }>`
    SELECT (SELECT count(*)::int FROM events WHERE stream_id = ${taskId}) AS events,
      (SELECT count(*)::int FROM task_current WHERE task_id = ${taskId}::uuid) AS current,
      (SELECT count(*)::int FROM task_dependencies WHERE task_id = ${taskId}::uuid) AS edges,
      (SELECT count(*)::int FROM task_waits WHERE task_id = ${taskId}::uuid) AS waits`.execute(tdb.db);
  return r.rows[0];
}
const NOTHING = { events: 0, current: 0, edges: 0, waits: 0 };

describe('release', () => {
  it('a diamond: the join waits for both branches and is released once, after the last, with their outputs', async () => {
    const a = await submit({ name: 'a' });
    const b = await submit({ dependsOn: [a.taskId] });
    const c = await submit({ dependsOn: [a.taskId] });
    const d = await submit({ dependsOn: [b.taskId, c.taskId] });
    expect([b.status, c.status, d.status]).toEqual(['waiting', 'waiting', 'waiting']);
    expect(await typesOf(d.taskId)).toEqual(['TaskSubmitted', 'TaskWaiting']);

    await finish(a.taskId, 'succeeded', { rows: 3 });
    expect(await stateOf(b.taskId)).toBe('queued');
    expect(await stateOf(c.taskId)).toBe('queued');
    expect(await stateOf(d.taskId)).toBe('waiting');
    const [bBody] = await dispatchBodies(b.taskId);
    expect(bBody?.dependencies).toEqual({ [a.taskId]: { state: 'succeeded', output: { rows: 3 } } });

    await finish(b.taskId, 'succeeded', 'b-out');
    expect(await stateOf(d.taskId)).toBe('waiting');
    await finish(c.taskId, 'succeeded', 'c-out');
    expect(await stateOf(d.taskId)).toBe('queued');
    const events = await eventsOf(d.taskId);
    expect(events.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskReleased', 'TaskQueued']);
    expect(events[2]?.data).toMatchObject({ dependency: c.taskId, outcomes: { succeeded: 2, failed: 0, cancelled: 0 } });
    expect(events[2]?.metadata).toMatchObject({ causationId: c.taskId, actor: 'scheduler' });
    const bodies = await dispatchBodies(d.taskId);
    expect(bodies).toHaveLength(1);
    expect(bodies[0]?.dependencies).toEqual({ [b.taskId]: { state: 'succeeded', output: 'b-out' }, [c.taskId]: { state: 'succeeded', output: 'c-out' } });
    expect(await tdb.db.selectFrom('task_dependencies').select('resolved_state').where('task_id', '=', d.taskId).execute()).toEqual([
      { resolved_state: 'succeeded' },
      { resolved_state: 'succeeded' },
    ]);
  });

  it('a task whose dependencies all ended before its submit is released at once (dependency null)', async () => {
    const a = await submit();
    await finish(a.taskId, 'succeeded', 1);
    const b = await submit({ dependsOn: [a.taskId], notBefore: new Date(Date.now() + 3_600_000).toISOString() });
    expect(b.status).toBe('scheduled');
    const events = await eventsOf(b.taskId);
    expect(events.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskReleased', 'TaskQueued']);
    expect(events[1]?.data).toMatchObject({ dependency: null });
    expect(await tdb.db.selectFrom('task_waits').selectAll().where('task_id', '=', b.taskId).execute()).toEqual([]);
  });

  it('two dependencies succeeding in two concurrent transactions release the dependant once', async () => {
    const a = await submit();
    const b = await submit();
    const c = await submit({ dependsOn: [a.taskId, b.taskId] });
    let commitFirst!: () => void;
    const gate = new Promise<void>((resolve) => (commitFirst = resolve));
    let firstWrote!: () => void;
    const wrote = new Promise<void>((resolve) => (firstWrote = resolve));
    const first = tdb.db.transaction().execute(async (trx) => {
      await executeTaskCommands(trx, [{ taskId: a.taskId, command: resultCommand('succeeded'), metadata: { actor: 'node' } }], names);
      firstWrote();
      await gate; // holds c's task_waits row lock
    });
    await wrote;
    const second = tdb.db.transaction().execute((trx) =>
      executeTaskCommands(trx, [{ taskId: b.taskId, command: resultCommand('succeeded'), metadata: { actor: 'node' } }], names),
    );
    // The second finisher waits on c's task_waits row until the first commits.
    await eventually(async () => {
      const r = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`.execute(tdb.db);
      return (r.rows[0]?.n ?? 0) > 0;
    });
    commitFirst();
    await Promise.all([first, second]);
    expect(await typesOf(c.taskId)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskReleased', 'TaskQueued']);
    expect(await dispatchBodies(c.taskId)).toHaveLength(1);
    expect(await tdb.db.selectFrom('task_waits').select('pending').where('task_id', '=', c.taskId).executeTakeFirst()).toEqual({ pending: 0 });
  });

  it('a fan-in of MAX_DEPENDENCIES dependencies is released once, by the last', async () => {
    const batch = Array.from({ length: MAX_DEPENDENCIES }, () => ({ type: 'leaf', id: randomUUID() }));
    const tasks = service();
    await tasks.submitBatch(batch, caller);
    const join = (await tasks.submit({ type: 'join', dependsOn: batch.map((b) => b.id) }, caller)).task;
    expect(join.status).toBe('waiting');
    const ids = batch.map((b) => b.id);
    // The leaves end in chunks of 1,000 per transaction.
    for (let i = 0; i < ids.length; i += 1000) {
      const chunk = ids.slice(i, i + 1000);
      await tdb.db.transaction().execute((trx) =>
        executeTaskCommands(trx, chunk.map((taskId) => ({ taskId, command: resultCommand('succeeded', i), metadata: { actor: 'node' } })), names),
      );
      if (i + 1000 < ids.length) expect(await stateOf(join.taskId)).toBe('waiting');
    }
    expect(await typesOf(join.taskId)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskReleased', 'TaskQueued']);
    const [released] = (await eventsOf(join.taskId)).filter((e) => e.type === 'TaskReleased');
    expect(released?.data).toMatchObject({ outcomes: { succeeded: MAX_DEPENDENCIES, failed: 0, cancelled: 0 } });
    const bodies = await dispatchBodies(join.taskId);
    expect(bodies).toHaveLength(1);
    expect(Object.keys(bodies[0]?.dependencies ?? {})).toHaveLength(MAX_DEPENDENCIES);
  });
});

describe('submit racing a dependency that ends', () => {
  it('a submit waiting on a dependency being finished sees it ended once that commits (released at once, no lost release)', async () => {
    const a = await submit();
    let commitFinish!: () => void;
    const gate = new Promise<void>((resolve) => (commitFinish = resolve));
    let wrote!: () => void;
    const written = new Promise<void>((resolve) => (wrote = resolve));
    const finishing = tdb.db.transaction().execute(async (trx) => {
      await executeTaskCommands(trx, [{ taskId: a.taskId, command: resultCommand('succeeded', 'early'), metadata: { actor: 'node' } }], names);
      wrote();
      await gate; // holds a's task_current row
    });
    await written;
    const submitting = submit({ dependsOn: [a.taskId] });
    // The submit's FOR SHARE waits for the finisher's row lock.
    await eventually(async () => {
      const r = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`.execute(tdb.db);
      return (r.rows[0]?.n ?? 0) > 0;
    });
    commitFinish();
    await finishing;
    const b = await submitting;
    expect(b.status).toBe('queued');
    expect(await typesOf(b.taskId)).toEqual(['TaskSubmitted', 'TaskReleased', 'TaskQueued']);
    expect((await dispatchBodies(b.taskId))[0]?.dependencies).toEqual({ [a.taskId]: { state: 'succeeded', output: 'early' } });
  });

  it('a dependency ending after a submit committed resolves the new edge (the finisher sees it)', async () => {
    const a = await submit();
    const b = await submit({ dependsOn: [a.taskId] });
    expect(b.status).toBe('waiting');
    await finish(a.taskId, 'succeeded');
    expect(await stateOf(b.taskId)).toBe('queued');
  });
});

describe('dispatch body', () => {
  it('outputs whose JSON passes 4 MiB are left out (states kept, dependenciesTruncated)', async () => {
    const big = 'x'.repeat(2.5 * 1024 * 1024);
    const a = await submit();
    const b = await submit();
    const c = await submit({ dependsOn: [a.taskId, b.taskId] });
    await finish(a.taskId, 'succeeded', big);
    await finish(b.taskId, 'succeeded', big);
    const [body] = await dispatchBodies(c.taskId);
    expect(body?.dependenciesTruncated).toBe(true);
    expect(body?.dependencies).toEqual({ [a.taskId]: { state: 'succeeded' }, [b.taskId]: { state: 'succeeded' } });
  });
});

describe('fan-out', () => {
  it('10,000 children of one task are released together when it succeeds, each dispatch carrying its output', async () => {
    const root = await submit({ type: 'root' });
    const tasks = service();
    const children = Array.from({ length: 10_000 }, () => ({ type: 'child', dependsOn: [root.taskId] }));
    const created = await tasks.submitBatch(children, caller);
    expect(created.every((c) => c.task.status === 'waiting')).toBe(true);
    await finish(root.taskId, 'succeeded', { shard: 'all' });
    const states = await sql<{ state: string; n: number }>`
      SELECT c.state, count(*)::int AS n FROM task_dependencies d JOIN task_current c ON c.task_id = d.task_id
       WHERE d.depends_on = ${root.taskId}::uuid GROUP BY c.state`.execute(tdb.db);
    expect(states.rows).toEqual([{ state: 'queued', n: 10_000 }]);
    const sample = created[1234]?.task.taskId as string;
    expect(await typesOf(sample)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskReleased', 'TaskQueued']);
    expect((await dispatchBodies(sample))[0]?.dependencies).toEqual({ [root.taskId]: { state: 'succeeded', output: { shard: 'all' } } });
  });
});

describe('failure propagation', () => {
  it("policy cancel: a failed dependency cancels the dependant, naming it; policy run: released when all ended, seeing each outcome", async () => {
    const a = await submit();
    const b = await submit();
    const cancelled = await submit({ dependsOn: [a.taskId, b.taskId] });
    const runs = await submit({ dependsOn: [a.taskId, b.taskId], onDependencyFailure: 'run' });
    await finish(a.taskId, 'failed');
    expect(await stateOf(cancelled.taskId)).toBe('cancelled');
    const [cancel] = (await eventsOf(cancelled.taskId)).filter((e) => e.type === 'TaskCancelled');
    expect(cancel?.data).toMatchObject({ actor: 'scheduler', reason: 'dependency-failed', dependency: a.taskId, dependencyState: 'failed' });
    expect(cancel?.metadata).toMatchObject({ causationId: a.taskId });
    expect(await stateOf(runs.taskId)).toBe('waiting');
    await finish(b.taskId, 'succeeded', 'fine');
    expect(await stateOf(runs.taskId)).toBe('queued');
    const [released] = (await eventsOf(runs.taskId)).filter((e) => e.type === 'TaskReleased');
    expect(released?.data).toMatchObject({ dependency: b.taskId, outcomes: { succeeded: 1, failed: 1, cancelled: 0 } });
    const [body] = await dispatchBodies(runs.taskId);
    expect(body?.dependencies).toEqual({ [a.taskId]: { state: 'failed', output: null }, [b.taskId]: { state: 'succeeded', output: 'fine' } });
    // The cancelled one was never dispatched, and it stays cancelled when b succeeds.
    expect(await dispatchBodies(cancelled.taskId)).toEqual([]);
    expect(await stateOf(cancelled.taskId)).toBe('cancelled');
  });

  it('a submit after a dependency failed is cancelled at once (policy cancel) or released (policy run)', async () => {
    const a = await submit();
    await finish(a.taskId, 'failed');
    const c = await submit({ dependsOn: [a.taskId] });
    expect(c.status).toBe('cancelled');
    expect(await typesOf(c.taskId)).toEqual(['TaskSubmitted', 'TaskCancelled']);
    expect((await eventsOf(c.taskId))[1]?.metadata).toMatchObject({ causationId: a.taskId, actor: 'test' });
    const r = await submit({ dependsOn: [a.taskId], onDependencyFailure: 'run' });
    expect(r.status).toBe('queued');
  });

  it('in a batch, an item cancelled at submit (its dependency had failed) cancels the items depending on it', async () => {
    const f = await submit();
    await finish(f.taskId, 'failed');
    const [x, y] = [randomUUID(), randomUUID()];
    const results = await service().submitBatch(
      [
        { type: 'y', id: y, dependsOn: [x] },
        { type: 'x', id: x, dependsOn: [f.taskId] },
      ],
      caller,
    );
    expect(results.map((r) => r.task.status)).toEqual(['cancelled', 'cancelled']);
    const [yCancel] = (await eventsOf(y)).filter((e) => e.type === 'TaskCancelled');
    expect(yCancel?.data).toMatchObject({ dependency: x, dependencyState: 'cancelled' });
    expect(await tdb.db.selectFrom('task_dependencies').select(['depends_on', 'resolved_state']).where('task_id', '=', y).execute()).toEqual([
      { depends_on: x, resolved_state: 'cancelled' },
    ]);
  });

  it('cancelling the root of a workflow cancels every waiting descendant, recursively', async () => {
    const root = randomUUID();
    const mid1 = randomUUID();
    const mid2 = randomUUID();
    const leaf = randomUUID();
    const runner = randomUUID();
    const results = await service().submitBatch(
      [
        { type: 'leaf', id: leaf, dependsOn: [mid1, mid2] },
        { type: 'root', id: root },
        { type: 'mid', id: mid1, dependsOn: [root] },
        { type: 'mid', id: mid2, dependsOn: [mid1] },
        { type: 'runs-anyway', id: runner, dependsOn: [mid2], onDependencyFailure: 'run' },
      ],
      caller,
    );
    expect(results.map((r) => r.task.status)).toEqual(['waiting', 'queued', 'waiting', 'waiting', 'waiting']);
    await cancel(root);
    for (const id of [root, mid1, mid2, leaf]) expect(await stateOf(id)).toBe('cancelled');
    expect(await stateOf(runner)).toBe('queued');
    // Only the root was ever dispatched: only its cancel is broadcast to the fog nodes.
    const broadcasts = await tdb.db.selectFrom('outbox').select('stream_id').where('exchange', '=', names.system).where('stream_id', 'in', [root, mid1, mid2, leaf]).execute();
    expect(broadcasts.map((b) => b.stream_id)).toEqual([root]);
    const [leafCancel] = (await eventsOf(leaf)).filter((e) => e.type === 'TaskCancelled');
    expect(leafCancel?.data).toMatchObject({ reason: 'dependency-failed', dependencyState: 'cancelled' });
  });

  it('a waiting task expires at its deadline (failed, expired) and its dependants see it failed', async () => {
    const a = await submit();
    const w = await submit({ dependsOn: [a.taskId], deadline: new Date(Date.now() + 200).toISOString() });
    const d = await submit({ dependsOn: [w.taskId] });
    const scheduler = createScheduler({
      db: tdb.db,
      names,
      tiers: DEFAULT_TIERS,
      defaultMaxAttempts: 1,
      logger: createLogger('silent'),
      pollIntervalMs: 50,
      misfireGraceMs: 1000,
      lease: { leaseMs: 3_600_000, graceMs: 3_600_000 },
      backoff: { baseMs: 10, factor: 1, maxMs: 10 },
      retention: { outboxDays: 7, inboxDays: 7, idempotencyKeyHours: 24 },
    });
    await eventually(async () => (await scheduler.expireOverdue()) > 0, { timeoutMs: 5000 });
    const failed = await tdb.db.selectFrom('task_current').select(['state', 'failure_reason']).where('task_id', '=', w.taskId).executeTakeFirst();
    expect(failed).toEqual({ state: 'failed', failure_reason: 'expired' });
    expect(await typesOf(w.taskId)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskAttemptFailed', 'TaskFailed']);
    expect(await stateOf(w.taskId)).toBe('failed');
    expect(await stateOf(d.taskId)).toBe('cancelled');
  });
});

describe('submit validation writes nothing', () => {
  it('an unknown, a foreign, a self or a cyclic dependsOn is 400 invalid-dependencies', async () => {
    const foreign = await submit({}, { tenant: 'other', actor: 'x' });
    const unknownId = randomUUID();
    const tasks = service();
    for (const dependsOn of [[unknownId], [foreign.taskId]]) {
      const id = randomUUID();
      const error = await tasks.submit({ type: 'x', id, dependsOn }, caller).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FogschedError);
      expect(error).toMatchObject({ status: 400, code: 'INVALID_DEPENDENCIES', details: { errors: [expect.objectContaining({ path: 'body/dependsOn' })] } });
      expect(await rowsMentioning(id)).toEqual(NOTHING);
    }
    const self = randomUUID();
    await expect(tasks.submit({ type: 'x', id: self, dependsOn: [self] }, caller)).rejects.toMatchObject({ code: 'INVALID_DEPENDENCIES' });

    const [x, y, z] = [randomUUID(), randomUUID(), randomUUID()];
    const error = await tasks
      .submitBatch(
        [
          { type: 'x', id: x, dependsOn: [z] },
          { type: 'y', id: y, dependsOn: [x] },
          { type: 'z', id: z, dependsOn: [y] },
        ],
        caller,
      )
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ status: 400, code: 'INVALID_DEPENDENCIES' });
    expect((error as FogschedError).details?.errors).toEqual(expect.arrayContaining([expect.objectContaining({ path: 'body/tasks/0/dependsOn' })]));
    for (const id of [x, y, z]) expect(await rowsMentioning(id)).toEqual(NOTHING);

    // One bad item in a batch: nothing of the batch is written.
    const good = randomUUID();
    await expect(tasks.submitBatch([{ type: 'ok', id: good }, { type: 'bad', dependsOn: [unknownId] }], caller)).rejects.toMatchObject({ code: 'INVALID_DEPENDENCIES' });
    expect(await rowsMentioning(good)).toEqual(NOTHING);
  });

  it('one invalid single submit does not fail the others committed with it', async () => {
    const tasks = service();
    const a = await submit();
    const [ok, bad] = await Promise.allSettled([tasks.submit({ type: 'ok', dependsOn: [a.taskId] }, caller), tasks.submit({ type: 'bad', dependsOn: [randomUUID()] }, caller)]);
    expect(ok.status).toBe('fulfilled');
    expect(bad).toMatchObject({ status: 'rejected', reason: { code: 'INVALID_DEPENDENCIES' } });
    if (ok.status === 'fulfilled') expect(ok.value.task.status).toBe('waiting');
  });

  it('a malformed placement or fallbackAfterMs is 400 invalid-placement; labels are stored sorted, an empty placement as none', async () => {
    const tasks = service();
    await expect(tasks.submit({ type: 'x', placement: { zone: 'Bad Zone' } }, caller)).rejects.toMatchObject({ status: 400, code: 'INVALID_PLACEMENT' });
    await expect(tasks.submit({ type: 'x', fallbackAfterMs: 1000 }, caller)).rejects.toMatchObject({ code: 'INVALID_PLACEMENT' });
    await expect(tasks.submit({ type: 'x', placement: { zone: 'site-a' }, fallbackAfterMs: 0 }, caller)).rejects.toMatchObject({ code: 'INVALID_PLACEMENT' });
    const { task } = await tasks.submit({ type: 'x', placement: { zone: 'site-a', labels: { gpu: 'yes', arch: 'arm64' } }, fallbackAfterMs: 5000 }, caller);
    expect(Object.keys(task.spec?.placement?.labels ?? {})).toEqual(['arch', 'gpu']);
    expect(task.spec).toMatchObject({ placement: { zone: 'site-a' }, fallbackAfterMs: 5000 });
    const { task: none } = await tasks.submit({ type: 'x', placement: {} }, caller);
    expect(none.spec?.placement ?? null).toBeNull();
  });
});

describe('client-chosen ids', () => {
  it('the same id and body is idempotent; another body or another tenant is 409 task-id-conflict', async () => {
    const tasks = service();
    const id = randomUUID();
    const body = { type: 'x', id, payload: { b: 1, a: [1, { y: 2, x: 1 }] }, placement: { labels: { z: '1', a: '2' } } };
    const first = await tasks.submit(body, caller);
    expect(first.created).toBe(true);
    expect(first.task.taskId).toBe(id);
    const again = await tasks.submit({ ...body, payload: { a: [1, { x: 1, y: 2 }], b: 1 } }, caller);
    expect(again).toMatchObject({ created: false, task: { taskId: id } });
    await expect(tasks.submit({ ...body, payload: { b: 2 } }, caller)).rejects.toMatchObject({ status: 409, code: 'TASK_ID_CONFLICT' });
    await expect(tasks.submit(body, { tenant: 'other', actor: 'x' })).rejects.toMatchObject({ status: 409, code: 'TASK_ID_CONFLICT' });
    // A retried batch with ids is idempotent too.
    const [p, q] = [randomUUID(), randomUUID()];
    const batch = [
      { type: 'p', id: p },
      { type: 'q', id: q, dependsOn: [p] },
    ];
    expect((await tasks.submitBatch(batch, caller)).map((r) => r.created)).toEqual([true, true]);
    expect((await tasks.submitBatch(batch, caller)).map((r) => r.created)).toEqual([false, false]);
    expect(await rowsMentioning(q)).toEqual({ events: 2, current: 1, edges: 1, waits: 1 });
  });
});

describe('rebuild', () => {
  it('a rebuild from the log reproduces the waiting, released and dependency-cancelled tasks row for row', async () => {
    // Runs after the tests above, over what they left: waiting, released, cancelled and expired tasks.
    const states = await sql<{ state: string }>`SELECT DISTINCT state FROM task_current ORDER BY state`.execute(tdb.db);
    expect(states.rows.map((r) => r.state)).toEqual(expect.arrayContaining(['waiting', 'queued', 'cancelled', 'failed', 'succeeded']));
    const report = await rebuildProjections(tdb, { dryRun: true });
    for (const c of report.comparisons ?? []) expect(c.samples).toEqual([]);
    for (const c of report.comparisons ?? []) expect({ projection: c.projection, liveOnly: c.liveOnly, rebuiltOnly: c.rebuiltOnly }).toEqual({ projection: c.projection, liveOnly: 0, rebuiltOnly: 0 });
    expect(report.comparisons).toHaveLength(2);
  });
});

describe('retention', () => {
  it('forgets the pending counts of tasks no longer waiting, and keeps the edges', async () => {
    const a = await submit();
    const w = await submit({ dependsOn: [a.taskId] });
    const edgesBefore = await sql<{ n: number }>`SELECT count(*)::int AS n FROM task_dependencies`.execute(tdb.db);
    const result = await pruneRetention(tdb.db, { outboxDays: 7, inboxDays: 7, idempotencyKeyHours: 24, batchRows: 3 });
    expect(result.taskWaits).toBeGreaterThan(0);
    const left = await sql<{ task_id: string; state: string }>`SELECT w.task_id, c.state FROM task_waits w JOIN task_current c USING (task_id)`.execute(tdb.db);
    expect(left.rows.every((r) => r.state === 'waiting')).toBe(true);
    expect(left.rows.map((r) => r.task_id)).toContain(w.taskId);
    expect((await sql<{ n: number }>`SELECT count(*)::int AS n FROM task_dependencies`.execute(tdb.db)).rows).toEqual(edgesBefore.rows);
  });
});

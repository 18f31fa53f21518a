import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConcurrencyError, DEFAULT_TIERS, FogschedError, IdempotencyConflictError, type TaskSpec } from '../../src/domain/index.js';
import { topologyNames } from '../../src/outbox/index.js';
import { appendToStream } from '../../src/store/index.js';
import { countedStatement, createTaskService, executeTaskCommands, type CommandItem } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { taskSpec } from '../helpers/seed-tasks.js';

const names = topologyNames('t_');
let tdb: TestDatabase;

beforeAll(async () => {
  tdb = await createTestDatabase('trx');
});
afterAll(async () => {
  await tdb?.drop();
});

function spec(overrides: Partial<TaskSpec> = {}): TaskSpec {
  return taskSpec({ payload: { hello: 'world' }, ...overrides });
}

function submitItem(task: TaskSpec): CommandItem {
  return { taskId: task.taskId, command: { type: 'SubmitTask', data: { task, now: new Date().toISOString() } }, metadata: { tenant: task.tenant, actor: 'test' } };
}

/** Every row anywhere that mentions the task. */
async function traces(taskId: string) {
  const r = await sql<{ events: number; current: number; history: number; outbox: number; keys: number }>`
    SELECT (SELECT count(*)::int FROM events WHERE stream_id = ${taskId}) AS events,
      (SELECT count(*)::int FROM task_current WHERE task_id = ${taskId}::uuid) AS current,
      (SELECT count(*)::int FROM task_history WHERE task_id = ${taskId}::uuid) AS history,
      (SELECT count(*)::int FROM outbox WHERE stream_id = ${taskId}) AS outbox,
      (SELECT count(*)::int FROM idempotency_keys WHERE task_id = ${taskId}::uuid) AS keys`.execute(tdb.db);
  return r.rows[0];
}
const NONE = { events: 0, current: 0, history: 0, outbox: 0, keys: 0 };

/** Every submit that was answered wrote all its rows; the refused one (of type `refusedType`) wrote no event. */
async function expectNeighboursWritten(results: readonly PromiseSettledResult<{ task: { taskId: string } }>[], refusedType: string) {
  for (const r of results) {
    if (r.status !== 'fulfilled') continue;
    expect(await traces(r.value.task.taskId)).toEqual({ events: 1, current: 1, history: 1, outbox: 1, keys: 0 });
  }
  const refused = await sql<{ n: number }>`SELECT count(*)::int AS n FROM events WHERE data->'task'->>'type' = ${refusedType}`.execute(tdb.db);
  expect(refused.rows[0]?.n).toBe(0);
}

describe('a task command is all or nothing', () => {
  it('commits events, task_current, task_history and the outbox row together', async () => {
    const task = spec();
    const outcome = await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [submitItem(task)], names, new Set([task.taskId])));
    expect(outcome.eventCount).toBe(1);
    expect(outcome.refused.size).toBe(0);
    expect(outcome.states.get(task.taskId)?.status).toBe('queued');
    expect(await traces(task.taskId)).toEqual({ events: 1, current: 1, history: 1, outbox: 1, keys: 0 });
  });

  it('an error thrown after the append rolls everything back', async () => {
    const task = spec();
    let seenInside: unknown;
    await expect(
      tdb.db.transaction().execute(async (trx) => {
        const outcome = await executeTaskCommands(trx, [submitItem(task)], names, new Set([task.taskId]));
        expect(outcome.eventCount).toBe(1);
        // Inside the transaction the writes are there...
        const inside = await sql<{ n: number }>`SELECT count(*)::int AS n FROM outbox WHERE stream_id = ${task.taskId}`.execute(trx);
        seenInside = inside.rows[0]?.n;
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(seenInside).toBe(1);
    // ...and after the rollback none of them is.
    expect(await traces(task.taskId)).toEqual(NONE);
  });

  it('a later statement failing for real (unique violation on outbox.message_id) rolls the append back', async () => {
    const task = spec();
    const error = await tdb.db
      .transaction()
      .execute(async (trx) => {
        await executeTaskCommands(trx, [submitItem(task)], names, new Set([task.taskId]));
        const queued = await trx.selectFrom('events').select('event_id').where('stream_id', '=', task.taskId).where('type', '=', 'TaskSubmitted').executeTakeFirstOrThrow();
        // The dispatch row already uses this message id: this insert violates outbox_message_id_key.
        await trx
          .insertInto('outbox')
          .values({ message_id: queued.event_id, stream_id: task.taskId, exchange: names.tasks, routing_key: 'light.normal', headers: '{}', body: '{}' })
          .execute();
        return null;
      })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: '23505', constraint: 'outbox_message_id_key' });
    expect(await traces(task.taskId)).toEqual(NONE);
  });

  it('a statement failing after the append poisons the transaction: nothing else commits either', async () => {
    const task = spec();
    const other = spec();
    const error = await tdb.db
      .transaction()
      .execute(async (trx) => {
        await executeTaskCommands(trx, [submitItem(task)], names, new Set([task.taskId]));
        await sql`SELECT 1 / 0`.execute(trx).catch(() => undefined); // swallowed, but the transaction is aborted
        await executeTaskCommands(trx, [submitItem(other)], names, new Set([other.taskId]));
        return null;
      })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: '25P02' }); // in_failed_sql_transaction
    expect(await traces(task.taskId)).toEqual(NONE);
    expect(await traces(other.taskId)).toEqual(NONE);
  });

  it('a conflict on the second task of a batch leaves no trace of the first', async () => {
    const first = spec();
    const second = spec();
    // Someone else already wrote version 1 of the second stream.
    await appendToStream(tdb.db, { id: second.taskId, type: 'task', expectedVersion: 0 }, [{ eventId: randomUUID(), type: 'Foreign', data: {}, metadata: {} }]);
    const error = await tdb.db
      .transaction()
      .execute((trx) => executeTaskCommands(trx, [submitItem(first), submitItem(second)], names, new Set([first.taskId, second.taskId])))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConcurrencyError);
    expect((error as ConcurrencyError).streamId).toBe(second.taskId);
    expect(await traces(first.taskId)).toEqual(NONE);
    // The foreign event alone (task_history is a view of the stream's events, so it shows there too).
    expect(await traces(second.taskId)).toEqual({ ...NONE, events: 1, history: 1 });
  });

  it('a refused command changes nothing while the other commands of the batch commit', async () => {
    const done = spec();
    await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [submitItem(done)], names, new Set([done.taskId])));
    const now = new Date().toISOString();
    await tdb.db.transaction().execute((trx) =>
      executeTaskCommands(
        trx,
        [{ taskId: done.taskId, command: { type: 'SucceedTask', data: { attempt: 1, nodeId: 'n1', output: null, durationMs: 1, startedAt: now, now } }, metadata: {} }],
        names,
      ),
    );
    const before = await traces(done.taskId);
    const fresh = spec();
    const outcome = await tdb.db.transaction().execute((trx) =>
      executeTaskCommands(
        trx,
        [{ taskId: done.taskId, command: { type: 'CancelTask', data: { actor: 'test', reason: null, now } }, metadata: {} }, submitItem(fresh)],
        names,
        new Set([fresh.taskId]),
      ),
    );
    expect(outcome.refused.get(0)?.code).toBe('TASK_NOT_CANCELLABLE');
    expect(await traces(done.taskId)).toEqual(before);
    expect(await traces(fresh.taskId)).toEqual({ events: 1, current: 1, history: 1, outbox: 1, keys: 0 });
  });
});

describe('the task service is all or nothing', () => {
  const service = () => createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });

  it('submitBatch with one item reusing an idempotency key stores none of the batch (not even the other keys)', async () => {
    const tasks = service();
    const caller = { tenant: 'default', actor: 'test' };
    const key = `k-${randomUUID()}`;
    const { task: earlier } = await tasks.submit({ type: 'noop', idempotencyKey: key }, caller);
    const before = await sql<{ events: number; outbox: number; keys: number }>`
      SELECT (SELECT count(*)::int FROM events) AS events, (SELECT count(*)::int FROM outbox) AS outbox,
        (SELECT count(*)::int FROM idempotency_keys) AS keys`.execute(tdb.db);
    const freshKey = `k-${randomUUID()}`;
    const error = await tasks
      .submitBatch([{ type: 'a', idempotencyKey: freshKey }, { type: 'b' }, { type: 'different', idempotencyKey: key }], caller)
      .catch((e: unknown) => e);
    // The batch is refused with the code of its bad item, which is named by index.
    expect(error).toBeInstanceOf(FogschedError);
    expect((error as FogschedError).code).toBe('IDEMPOTENCY_KEY_REUSED');
    expect((error as FogschedError).message).toContain(earlier.taskId);
    expect((error as FogschedError).details?.errors).toEqual([expect.objectContaining({ path: 'body/tasks/2', code: 'IDEMPOTENCY_KEY_REUSED' })]);
    const after = await sql<{ events: number; outbox: number; keys: number }>`
      SELECT (SELECT count(*)::int FROM events) AS events, (SELECT count(*)::int FROM outbox) AS outbox,
        (SELECT count(*)::int FROM idempotency_keys) AS keys`.execute(tdb.db);
    expect(after.rows[0]).toEqual(before.rows[0]);
    expect(await tdb.db.selectFrom('idempotency_keys').select('key').where('key', '=', freshKey).execute()).toEqual([]);
  });

  it('a single submit that fails in the group commit leaves no trace while its neighbours commit', async () => {
    const tasks = service();
    const caller = { tenant: 'default', actor: 'test' };
    const key = `g-${randomUUID()}`;
    await tasks.submit({ type: 'noop', idempotencyKey: key }, caller);
    // Same tick: these three go into one group-commit transaction; the conflicting one is answered alone.
    const results = await Promise.allSettled([
      tasks.submit({ type: 'left' }, caller),
      tasks.submit({ type: 'other', idempotencyKey: key }, caller),
      tasks.submit({ type: 'right' }, caller),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((results[1] as PromiseRejectedResult).reason).toBeInstanceOf(IdempotencyConflictError);
    await expectNeighboursWritten(results, 'other');
  });

  it('plain submits (no id, key or dependencies) are one statement without BEGIN/COMMIT: every table written, a bad one alone refused', async () => {
    const tasks = service();
    const caller = { tenant: 'default', actor: 'test' };
    // Same tick: one group; the task that fits no tier is refused and leaves nothing behind.
    const results = await Promise.allSettled([
      tasks.submit({ type: 'plain-a' }, caller),
      tasks.submit({ type: 'plain-b', resources: { cpu: 0.1, memoryMb: 1_000_000 } }, caller),
      tasks.submit({ type: 'plain-c', priority: 'high' }, caller),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    await expectNeighboursWritten(results, 'plain-b');
  });

  it('countedStatement refuses a second statement before it runs (work of two statements needs a transaction)', async () => {
    const marker = `cs-${randomUUID()}`;
    const error = await countedStatement(tdb.db, async (exec) => {
      await sql`SELECT 1`.execute(exec);
      await sql`INSERT INTO idempotency_keys (tenant, key, task_id, request_hash) VALUES ('default', ${marker}, ${randomUUID()}::uuid, 'x')`.execute(exec);
    }).catch((e: unknown) => e);
    expect(String(error)).toMatch(/second statement/);
    expect(await tdb.db.selectFrom('idempotency_keys').select('key').where('key', '=', marker).execute()).toEqual([]);
  });
});

describe('idempotency keys expire (IDEMPOTENCY_KEY_TTL_HOURS)', () => {
  const caller = { tenant: 'default', actor: 'test' };
  const service = () => createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500, idempotencyKeyTtlHours: 24 });
  const makeOld = (key: string, hours: number) => sql`UPDATE idempotency_keys SET created_at = now() - ${hours}::float8 * interval '1 hour' WHERE key = ${key}`.execute(tdb.db);

  it('a key older than the TTL names a new task, even before retention deleted it; the new task then owns the key', async () => {
    const key = `ttl-${randomUUID()}`;
    const { task: first } = await service().submit({ type: 'noop', idempotencyKey: key }, caller);
    await makeOld(key, 23);
    const replay = await service().submit({ type: 'noop', idempotencyKey: key }, caller);
    expect(replay).toMatchObject({ created: false, task: { taskId: first.taskId } });

    await makeOld(key, 25);
    const again = await service().submit({ type: 'noop', idempotencyKey: key }, caller);
    expect(again.created).toBe(true);
    expect(again.task.taskId).not.toBe(first.taskId);
    expect(await tdb.db.selectFrom('idempotency_keys').select('task_id').where('key', '=', key).executeTakeFirst()).toEqual({ task_id: again.task.taskId });
    const retried = await service().submit({ type: 'noop', idempotencyKey: key }, caller);
    expect(retried).toMatchObject({ created: false, task: { taskId: again.task.taskId } });
  });

  it('an expired key with a different request is a new task, not a conflict (batch too)', async () => {
    const key = `ttl-${randomUUID()}`;
    await service().submit({ type: 'noop', idempotencyKey: key }, caller);
    await expect(service().submit({ type: 'other', idempotencyKey: key }, caller)).rejects.toBeInstanceOf(IdempotencyConflictError);
    await makeOld(key, 48);
    const [fresh] = await service().submitBatch([{ type: 'other', idempotencyKey: key }], caller);
    expect(fresh).toMatchObject({ created: true, task: { spec: { type: 'other' } } });
  });
});

describe('cancel withdraws the unpublished dispatches', () => {
  const caller = { tenant: 'default', actor: 'test' };
  const service = () => createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });
  const rows = (taskId: string) =>
    tdb.db.selectFrom('outbox').select(['exchange', 'published_at', 'body']).where('stream_id', '=', taskId).orderBy('id').execute();

  it('a delayed task cancelled before it is due keeps no dispatch row, only the cancel broadcast', async () => {
    const { task } = await service().submit({ type: 'noop', notBefore: new Date(Date.now() + 3_600_000).toISOString() }, caller);
    expect((await rows(task.taskId)).map((r) => [r.exchange, r.published_at])).toEqual([[names.tasks, null]]);
    await service().cancel(task.taskId, caller, 'not needed');
    // On main the dispatch row stayed and went out when due, to any node that missed the cancel.
    expect((await rows(task.taskId)).map((r) => r.exchange)).toEqual([names.system]);
  });

  it('a retrying task loses its pending retry; a dispatch already published is left as it was', async () => {
    const { task } = await service().submit({ type: 'noop' }, caller);
    await sql`UPDATE outbox SET published_at = now() WHERE stream_id = ${task.taskId}`.execute(tdb.db);
    await tdb.db.transaction().execute((trx) =>
      executeTaskCommands(
        trx,
        [
          { taskId: task.taskId, command: { type: 'StartTask', data: { attempt: 1, nodeId: 'n1', now: new Date().toISOString() } }, metadata: {} },
          {
            taskId: task.taskId,
            command: {
              type: 'FailTask',
              data: { attempt: 1, nodeId: 'n1', error: { message: 'x', code: 'x', retryable: true }, startedAt: null, backoff: { baseMs: 3_600_000, factor: 1, maxMs: 3_600_000 }, random: 0, now: new Date().toISOString() },
            },
            metadata: {},
          },
        ],
        names,
      ),
    );
    expect((await rows(task.taskId)).map((r) => [(r.body as { attempt?: number }).attempt, r.published_at === null])).toEqual([
      [1, false],
      [2, true],
    ]);
    await service().cancel(task.taskId, caller, null);
    const after = await rows(task.taskId);
    expect(after.map((r) => [r.exchange, (r.body as { attempt?: number }).attempt ?? null])).toEqual([
      [names.tasks, 1],
      [names.system, null],
    ]);
  });
});

// The upgrade to task_history as a view of the log (migration 16): a database written under
// migration 15, where task_history was a table the write path filled, keeps every old task's
// history as it was, through the view and through the API's history query; and a table that
// no longer matches its log stops the migration with nothing changed.
// The upgrade to one event for submitted + queued (migration 18, TaskSubmitted schema v3): a log
// written under migration 17 (TaskSubmitted v2, then TaskQueued) reads the same in task_history,
// the API's history and the audit views, and new tasks beside it read right too.
import { randomBytes, randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { runner } from 'node-pg-migrate';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { decide, evolve, initialTaskState, type TaskCommand, type TaskEvent, type TaskState } from '../../src/domain/index.js';
import { createPostgres, migrate, MIGRATIONS_DIR, MIGRATIONS_TABLE, type Postgres } from '../../src/infra/postgres.js';
import { getTaskHistory, HISTORY_COLUMNS, rebuildProjections, type HistoryRow } from '../../src/projections/index.js';
import { appendEvents, LOG_START, readAll, type EventMetadata, type NewEvent } from '../../src/store/index.js';
import { seedAuditHistory } from '../audit/seed.js';
import { adminQuery, withDatabase } from '../helpers/services.js';

const PREVIOUS_SCHEMA = 15;
const opened: { pg: Postgres; name: string }[] = [];

afterAll(async () => {
  for (const { pg, name } of opened) {
    await pg.close();
    await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
});

/** A new database migrated up to the previous schema only (`count` migrations). */
async function databaseAtPreviousSchema(count = PREVIOUS_SCHEMA): Promise<{ pg: Postgres; url: string }> {
  const name = `fogsched_upgrade_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name}`);
  const url = withDatabase(inject('postgresUrl'), name);
  await runner({ databaseUrl: url, dir: MIGRATIONS_DIR, migrationsTable: MIGRATIONS_TABLE, direction: 'up', count, checkOrder: true, log: () => {} });
  const pg = createPostgres({ url, poolMax: 4, connectTimeoutMs: 3000, statementTimeoutMs: 60_000 });
  opened.push({ pg, name });
  return { pg, url };
}

const meta = (actor: string): EventMetadata => ({ tenant: 'acme', actor });

/** Lifecycles the audit seed lacks: waiting and released, returned, placement fallback, progress, a scheduled start, a dependency cancel. */
function moreLifecycles(): NewEvent[] {
  const at = (s: number) => new Date(Date.UTC(2026, 10, 1, 12, 0, s)).toISOString();
  const spec = (taskId: string, extra: Record<string, unknown> = {}) => ({
    taskId, tenant: 'acme', type: 'noop', payload: {}, priority: 'normal', resources: { cpu: 1, memoryMb: 64 }, tier: 'light',
    maxAttempts: 3, timeoutMs: null, notBefore: null, deadline: null, idempotencyKey: null, retry: null, ...extra,
  });
  const streams: [string, [string, Record<string, unknown>, string][]][] = [];
  const dep = randomUUID();
  const waiter = randomUUID();
  const cancelledWaiter = randomUUID();
  const returned = randomUUID();
  const scheduled = randomUUID();
  streams.push([dep, [
    ['TaskSubmitted', { task: spec(dep), at: at(0) }, 'api'],
    ['TaskQueued', { attempt: 1, tier: 'light', priority: 'normal', availableAt: at(0), at: at(0) }, 'api'],
    ['TaskStarted', { attempt: 1, nodeId: 'edge-1', at: at(1) }, 'edge-1'],
    ['TaskProgressed', { attempt: 1, nodeId: 'edge-1', fraction: 0.5, message: 'half', reportedAt: at(2), at: at(2) }, 'edge-1'],
    ['TaskAttemptFailed', { attempt: 1, nodeId: 'edge-1', error: { message: 'boom', code: 'handler_error', retryable: true }, at: at(3) }, 'edge-1'],
    ['TaskFailed', { attempt: 1, reason: 'max-attempts', error: { message: 'boom', code: 'handler_error', retryable: true }, at: at(3) }, 'edge-1'],
  ]]);
  streams.push([waiter, [
    ['TaskSubmitted', { task: spec(waiter, { dependsOn: [dep], onDependencyFailure: 'run' }), at: at(0) }, 'api'],
    ['TaskWaiting', { pending: 1, at: at(0) }, 'api'],
    ['TaskReleased', { dependency: dep, outcomes: { succeeded: 0, failed: 1, cancelled: 0 }, at: at(3) }, 'edge-1'],
    ['TaskQueued', { attempt: 1, tier: 'light', priority: 'normal', availableAt: at(3), at: at(3) }, 'edge-1'],
    ['TaskPlacementFallback', { attempt: 1, afterMs: 1000, at: at(5) }, 'ingest'],
    ['TaskStarted', { attempt: 1, nodeId: 'edge-2', at: at(6) }, 'edge-2'],
    ['TaskSucceeded', { attempt: 1, nodeId: 'edge-2', output: { ok: true }, durationMs: 10, at: at(7) }, 'edge-2'],
  ]]);
  streams.push([cancelledWaiter, [
    ['TaskSubmitted', { task: spec(cancelledWaiter, { dependsOn: [dep] }), at: at(0) }, 'api'],
    ['TaskWaiting', { pending: 1, at: at(0) }, 'api'],
    ['TaskCancelled', { actor: 'system', reason: 'dependency-failed', dependency: dep, dependencyState: 'failed', at: at(3) }, 'edge-1'],
  ]]);
  streams.push([returned, [
    ['TaskSubmitted', { task: spec(returned), at: at(0) }, 'api'],
    ['TaskQueued', { attempt: 1, tier: 'light', priority: 'normal', availableAt: at(0), at: at(0) }, 'api'],
    ['TaskStarted', { attempt: 1, nodeId: 'edge-1', at: at(1) }, 'edge-1'],
    ['TaskReturned', { attempt: 1, nodeId: 'edge-1', reason: 'node-shutdown', returns: 1, at: at(2) }, 'edge-1'],
    ['TaskCancelled', { actor: 'alice', reason: 'not needed', at: at(4) }, 'alice'],
  ]]);
  streams.push([scheduled, [
    ['TaskSubmitted', { task: spec(scheduled, { notBefore: at(60) }), at: at(0) }, 'api'],
    ['TaskQueued', { attempt: 1, tier: 'light', priority: 'normal', availableAt: at(60), at: at(0) }, 'api'],
  ]]);
  return streams.flatMap(([id, events]) =>
    events.map(([type, data, actor], i) => ({ streamId: id, streamType: 'task', streamVersion: i + 1, eventId: randomUUID(), type, data, metadata: meta(actor) })),
  );
}

/** What the write path under migration 15 put in task_history: the fold of each stream, one row per event (HISTORY_COLUMNS). */
async function writeOldHistory(pg: Postgres): Promise<void> {
  const events = await readAll(pg.db, LOG_START, 100_000, { settled: false });
  const states = new Map<string, TaskState>();
  const rows: HistoryRow[] = [];
  for (const e of [...events].sort((a, b) => a.position - b.position)) {
    if (e.streamType !== 'task') continue;
    const event = { type: e.type, data: e.data } as TaskEvent;
    const state = evolve(states.get(e.streamId) ?? initialTaskState(e.streamId), event);
    states.set(e.streamId, state);
    rows.push({ position: e.position, state, event, metadata: e.metadata });
  }
  for (const r of rows) {
    const names = HISTORY_COLUMNS.map((c) => sql.ref(c.name));
    const values = HISTORY_COLUMNS.map((c) => sql`${c.value(r)}::${sql.raw(c.type === 'int' ? 'integer' : c.type)}`);
    await sql`INSERT INTO task_history (${sql.join(names)}) VALUES (${sql.join(values)})`.execute(pg.db);
  }
}

type Row = Record<string, unknown>;

async function historyRows(pg: Postgres): Promise<Row[]> {
  const { rows } = await sql<Row>`SELECT * FROM task_history ORDER BY position`.execute(pg.db);
  return rows;
}

/** The API's history of a task as migration 15 read it (the table, by task_id). */
async function oldApiHistory(pg: Postgres, taskId: string): Promise<Row[]> {
  const { rows } = await sql<Row>`
    SELECT h.*, e.metadata->>'traceId' AS trace_id FROM task_history h LEFT JOIN events e ON e.position = h.position
     WHERE h.task_id = ${taskId}::uuid ORDER BY h.version`.execute(pg.db);
  return rows.map((r) => ({
    position: r.position, version: r.version, type: r.type, state: r.state, attempt: r.attempt, nodeId: r.node_id, actor: r.actor,
    reason: r.reason, error: r.error ?? null, at: (r.at as Date).toISOString(), data: r.data, traceId: r.trace_id,
  }));
}

describe('upgrading to task_history as a view of the log (migration 16)', () => {
  it('reads every old task\'s history unchanged, through the view and through the API query', async () => {
    const { pg, url } = await databaseAtPreviousSchema();
    await seedAuditHistory(pg.db);
    await appendEvents(pg.db, moreLifecycles());
    await writeOldHistory(pg);
    const before = await historyRows(pg);
    const taskIds = [...new Set(before.map((r) => String(r.task_id)))];
    const types = new Set(before.map((r) => r.type));
    // Every lifecycle event type is in the old history, and a schema-1 task (the seed's legacy one).
    for (const t of ['TaskSubmitted', 'TaskQueued', 'TaskStarted', 'TaskProgressed', 'TaskSucceeded', 'TaskAttemptFailed', 'TaskRetryScheduled', 'TaskFailed',
      'TaskDeadLettered', 'TaskCancelled', 'TaskRequeued', 'TaskReturned', 'TaskWaiting', 'TaskReleased', 'TaskPlacementFallback']) {
      expect(types, t).toContain(t);
    }
    expect(new Set(before.map((r) => r.state))).toEqual(new Set(['submitted', 'queued', 'scheduled', 'running', 'retrying', 'succeeded', 'failed', 'cancelled', 'waiting']));
    const oldApi = new Map<string, Row[]>();
    for (const id of taskIds) oldApi.set(id, await oldApiHistory(pg, id));

    await migrate(url);

    const { rows: kind } = await sql<{ relkind: string }>`SELECT relkind FROM pg_class WHERE relname = 'task_history'`.execute(pg.db);
    expect(kind).toEqual([{ relkind: 'v' }]);
    expect(await historyRows(pg)).toEqual(before);
    for (const id of taskIds) expect({ id, history: await getTaskHistory(pg.db, id) }).toEqual({ id, history: oldApi.get(id) });
  });

  it('stops, changing nothing, when the old table does not match its log', async () => {
    const { pg, url } = await databaseAtPreviousSchema();
    await appendEvents(pg.db, moreLifecycles());
    await writeOldHistory(pg);
    await sql`UPDATE task_history SET state = 'running' WHERE type = 'TaskSucceeded'`.execute(pg.db);
    await expect(migrate(url)).rejects.toThrow(/task_history: 1 rows differ|rows differ from what the log gives/);
    const { rows } = await sql<{ relkind: string; applied: number }>`
      SELECT (SELECT relkind::text FROM pg_class WHERE relname = 'task_history') AS relkind,
             (SELECT count(*)::int FROM pgmigrations) AS applied`.execute(pg.db);
    expect(rows).toEqual([{ relkind: 'r', applied: PREVIOUS_SCHEMA }]);
  });
});

/** Events as a version before migration 18 stored them: TaskSubmitted at schema version 2. */
async function appendAsSchema17(pg: Postgres, events: readonly NewEvent[]): Promise<void> {
  for (const e of events) {
    await sql`
      INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, schema_version, data, metadata)
      VALUES (${e.streamId}, ${e.streamType}, ${e.streamVersion}, ${e.eventId}::uuid, ${e.type}, ${e.type === 'TaskSubmitted' ? 2 : 1},
              ${JSON.stringify(e.data)}::jsonb, ${JSON.stringify(e.metadata)}::jsonb)`.execute(pg.db);
  }
}

/** A task's events as this version's decide makes them, from its commands. */
function lifecycleOf(taskId: string, commands: TaskCommand[]): NewEvent[] {
  let state = initialTaskState(taskId);
  const out: NewEvent[] = [];
  for (const command of commands) {
    for (const event of decide(state, command)) {
      state = evolve(state, event);
      out.push({ streamId: taskId, streamType: 'task', streamVersion: state.version, eventId: randomUUID(), type: event.type, data: event.data, metadata: meta('api') });
    }
  }
  return out;
}

describe('upgrading to one event for submitted + queued (migration 18)', () => {
  const views = async (pg: Postgres) => ({
    history: await historyRows(pg),
    timeline: (await sql<Row>`SELECT * FROM audit.task_timeline ORDER BY position`.execute(pg.db)).rows,
    attempts: (await sql<Row>`SELECT * FROM audit.task_attempts ORDER BY task_id, attempt`.execute(pg.db)).rows,
  });

  it("reads every old task's history and audit rows unchanged, and a new task's single TaskSubmitted as queued attempt 1", async () => {
    const { pg, url } = await databaseAtPreviousSchema(17);
    await appendAsSchema17(pg, moreLifecycles());
    const before = await views(pg);
    expect(before.history.filter((r) => r.type === 'TaskQueued').length).toBeGreaterThan(0);
    const taskIds = [...new Set(before.history.map((r) => String(r.task_id)))];
    const api = new Map<string, unknown>();
    for (const id of taskIds) api.set(id, await getTaskHistory(pg.db, id));

    await migrate(url);

    expect(await views(pg)).toEqual(before);
    for (const id of taskIds) expect({ id, history: await getTaskHistory(pg.db, id) }).toEqual({ id, history: api.get(id) });

    // New tasks beside them: one runs, one is cancelled while queued, one is scheduled.
    const spec = (taskId: string, notBefore: string | null = null) => ({
      taskId, tenant: 'acme', type: 'noop', payload: {}, priority: 'normal' as const, resources: { cpu: 1, memoryMb: 64 }, tier: 'light',
      maxAttempts: 3, timeoutMs: null, notBefore, deadline: null, idempotencyKey: null, retry: null,
    });
    const at = (s: number) => new Date(Date.UTC(2026, 10, 2, 12, 0, s)).toISOString();
    const [ran, cancelled, later] = [randomUUID(), randomUUID(), randomUUID()];
    await appendEvents(pg.db, [
      ...lifecycleOf(ran, [
        { type: 'SubmitTask', data: { task: spec(ran), now: at(0) } },
        { type: 'StartTask', data: { attempt: 1, nodeId: 'edge-1', now: at(1) } },
        { type: 'SucceedTask', data: { attempt: 1, nodeId: 'edge-1', output: null, durationMs: 5, startedAt: at(1), now: at(2) } },
      ]),
      ...lifecycleOf(cancelled, [
        { type: 'SubmitTask', data: { task: spec(cancelled), now: at(0) } },
        { type: 'CancelTask', data: { actor: 'alice', reason: null, now: at(3) } },
      ]),
      ...lifecycleOf(later, [{ type: 'SubmitTask', data: { task: spec(later, at(60)), now: at(0) } }]),
    ]);
    const stateOf = async (id: string) =>
      (await sql<{ type: string; state: string; attempt: number; schema_version: number }>`
        SELECT h.type, h.state, h.attempt, e.schema_version FROM task_history h JOIN events e USING (position) WHERE h.task_id = ${id}::uuid ORDER BY h.version`.execute(pg.db)).rows;
    expect(await stateOf(ran)).toEqual([
      { type: 'TaskSubmitted', state: 'queued', attempt: 1, schema_version: 3 },
      { type: 'TaskStarted', state: 'running', attempt: 1, schema_version: 1 },
      { type: 'TaskSucceeded', state: 'succeeded', attempt: 1, schema_version: 1 },
    ]);
    // The cancel carries no attempt: the view takes the TaskSubmitted's, as the code's fold does.
    expect((await stateOf(cancelled)).map((r) => [r.type, r.state, r.attempt])).toEqual([['TaskSubmitted', 'queued', 1], ['TaskCancelled', 'cancelled', 1]]);
    expect((await stateOf(later)).map((r) => [r.type, r.state, r.attempt])).toEqual([['TaskSubmitted', 'scheduled', 1]]);
    const timeline = (await sql<Row>`SELECT event_type, state, attempt FROM audit.task_timeline WHERE task_id = ${ran} ORDER BY version`.execute(pg.db)).rows;
    expect(timeline).toEqual([
      { event_type: 'TaskSubmitted', state: 'queued', attempt: 1 },
      { event_type: 'TaskStarted', state: 'running', attempt: 1 },
      { event_type: 'TaskSucceeded', state: 'succeeded', attempt: 1 },
    ]);
    const attempts = (await sql<Row>`SELECT attempt, queued_by_event, queued_at, available_at, outcome FROM audit.task_attempts WHERE task_id = ${ran}`.execute(pg.db)).rows;
    expect(attempts).toEqual([{ attempt: 1, queued_by_event: 'TaskSubmitted', queued_at: new Date(at(0)), available_at: new Date(at(0)), outcome: 'succeeded' }]);
    // The view agrees with the code's fold of the whole log, old tasks and new.
    const report = await rebuildProjections(pg, { dryRun: true, projections: ['task_history'] });
    expect(report.comparisons?.map((c) => [c.projection, c.liveOnly, c.rebuiltOnly, c.samples])).toEqual([['task_history', 0, 0, []]]);
  });
});

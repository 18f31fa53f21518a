import { v7 as uuidv7 } from 'uuid';
import { decide, evolve, initialTaskState, FogschedError, type TaskCommand, type TaskEvent, type TaskState } from '../domain/index.js';
import { sql, type Kysely, type Transaction } from 'kysely';
import { recordTaskEvents } from '../infra/metrics.js';
import { asConcurrencyError, insertEvents, type Database, type EventMetadata, type Executor, type NewEvent } from '../store/index.js';
import { loadTaskStates, taskProjectionCtes } from '../projections/index.js';
import { PREPARE_MARK } from '../infra/postgres.js';
import { ATTR, childContext, newTrace, parseTraceparent, traceMetadata } from '../infra/tracing.js';
import { insertOutbox, outboxRowFor, withdrawDispatches, type OutboxRow, type TopologyNames } from '../outbox/index.js';

export interface CommandItem {
  readonly taskId: string;
  readonly command: TaskCommand;
  readonly metadata: EventMetadata;
}

export interface CommandOutcome {
  /** Final state per task touched (also the tasks whose command was a no-op). */
  readonly states: Map<string, TaskState>;
  /** Items whose command was refused by the domain, by input index. */
  readonly refused: Map<number, FogschedError>;
  readonly eventCount: number;
  /** Each appended event with the task's state after it, in order (for metrics once the transaction committed: recordTaskEvents). */
  readonly applied: readonly { readonly state: TaskState; readonly event: TaskEvent }[];
}

/**
 * Runs task commands in the caller's transaction: locks and loads each task's
 * state (from its task_current snapshot), decides in input order, then appends
 * every event, updates task_current and task_history, and writes dispatch rows
 * to the outbox (a cancel deletes the task's unpublished ones) — one statement
 * for the whole batch. A refused command
 * (typed domain error) is reported and changes nothing; anything else throws.
 *
 * `newTasks`: ids known to have no stream yet (a submit), so no load is needed.
 */
export async function executeTaskCommands(
  trx: Executor,
  commands: readonly CommandItem[],
  names: TopologyNames,
  newTasks?: ReadonlySet<string>,
): Promise<CommandOutcome> {
  const items = await withTraces(trx, commands, newTasks);
  const toLoad = [...new Set(items.map((i) => i.taskId))].filter((id) => !newTasks?.has(id));
  toLoad.sort(); // a fixed lock order: two batches touching the same tasks cannot deadlock
  const states = await loadTaskStates(trx, toLoad, { forUpdate: true });
  const refused = new Map<number, FogschedError>();
  const newEvents: NewEvent[] = [];
  const pending: { state: TaskState; event: TaskEvent; metadata: EventMetadata; eventId: string }[] = [];

  items.forEach((item, index) => {
    const before = states.get(item.taskId) ?? initialTaskState(item.taskId);
    let events: TaskEvent[];
    try {
      events = decide(before, item.command);
    } catch (error) {
      if (error instanceof FogschedError) {
        refused.set(index, error);
        return;
      }
      throw error;
    }
    let state = before;
    for (const event of events) {
      state = evolve(state, event);
      const eventId = uuidv7(); // time-ordered, like task ids: events_event_id_key grows at its right edge
      newEvents.push({
        streamId: item.taskId,
        streamType: 'task',
        streamVersion: state.version,
        eventId,
        type: event.type,
        data: event.data,
        metadata: item.metadata,
      });
      pending.push({ state, event, metadata: item.metadata, eventId });
    }
    states.set(item.taskId, state);
  });

  if (newEvents.length > 0) {
    const history = pending.map((p) => ({ position: 0, eventId: p.eventId, state: p.state, event: p.event, metadata: p.metadata }));
    const outbox: OutboxRow[] = pending.flatMap((p) => withTraceHeader(outboxRowFor(p.state, p.event, p.eventId, names), p.metadata) ?? []);
    const submittedEvent = new Map(pending.flatMap((p) => (p.event.type === 'TaskSubmitted' ? [[p.state.taskId, p.eventId] as const] : [])));
    const cancelled = pending.filter((p) => p.event.type === 'TaskCancelled').map((p) => p.state.taskId);
    const touched = [...new Set(pending.map((p) => p.state.taskId))];
    const current = touched.map((id) => ({ state: states.get(id) as TaskState, seqEventId: submittedEvent.get(id) ?? null }));
    // One statement for the four tables: the events, then task_current, task_history and the
    // outbox as CTEs that take their positions from the events' RETURNING.
    try {
      await sql`${sql.raw(PREPARE_MARK)}
        WITH appended AS (${insertEvents(newEvents)}),
        ${taskProjectionCtes('appended', current, history)}
        ${outbox.length > 0 ? sql`, outbox_written AS (${insertOutbox(outbox)})` : sql``}
        ${cancelled.length > 0 ? sql`, withdrawn AS (${withdrawDispatches(cancelled, names)})` : sql``}
        SELECT count(*) FROM appended`.execute(trx);
    } catch (error) {
      throw asConcurrencyError(error, newEvents) ?? error;
    }
  }
  const collector = collectors.get(trx);
  if (collector) for (const p of pending) collector.push(p);
  return { states, refused, eventCount: newEvents.length, applied: pending };
}

/** Task events appended in a transaction of countedTransaction, per transaction. */
const collectors = new WeakMap<Executor, { state: TaskState; event: TaskEvent }[]>();

/**
 * `db.transaction().execute(work)`, counting the task events executeTaskCommands appended in it
 * in the metrics once it committed (a rolled-back transaction counts nothing).
 */
export async function countedTransaction<T>(db: Kysely<Database>, work: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
  const applied: { state: TaskState; event: TaskEvent }[] = [];
  const result = await db.transaction().execute((trx) => {
    collectors.set(trx, applied);
    return work(trx);
  });
  recordTaskEvents(applied);
  return result;
}

/**
 * Every event of a task carries a trace (docs/tracing.md). A command without one (the
 * scheduler's, a fog node's record without `traceparent`) continues the trace of the task's
 * submit, read from its TaskSubmitted event; a new task without one starts a new trace.
 */
async function withTraces(trx: Executor, items: readonly CommandItem[], newTasks?: ReadonlySet<string>): Promise<readonly CommandItem[]> {
  const untraced = items.filter((i) => parseTraceparent(i.metadata.traceparent) === undefined);
  if (untraced.length === 0) return items;
  const known = [...new Set(untraced.map((i) => i.taskId).filter((id) => !newTasks?.has(id)))];
  const rows =
    known.length === 0
      ? []
      : await trx
          .selectFrom('events')
          .select(['stream_id', sql<string | null>`metadata->>'traceparent'`.as('traceparent')])
          .where('stream_id', 'in', known)
          .where('stream_version', '=', 1)
          .execute();
  const submitted = new Map(rows.map((r) => [r.stream_id, parseTraceparent(r.traceparent)]));
  const fresh = new Map<string, ReturnType<typeof traceMetadata>>();
  return items.map((i) => {
    if (parseTraceparent(i.metadata.traceparent) !== undefined) return i;
    let trace = fresh.get(i.taskId);
    if (!trace) {
      const parent = submitted.get(i.taskId);
      trace = traceMetadata(parent ? childContext(parent) : newTrace('task trace started', { [ATTR.taskId]: i.taskId, 'fogsched.actor': String(i.metadata.actor ?? '') }));
      fresh.set(i.taskId, trace);
    }
    return { ...i, metadata: { ...i.metadata, ...trace } };
  });
}

/** A message carries the trace of the event that caused it, as a W3C `traceparent` header. */
function withTraceHeader(row: OutboxRow | null, metadata: EventMetadata): OutboxRow | null {
  if (!row || typeof metadata.traceparent !== 'string') return row;
  return { ...row, headers: { ...row.headers, traceparent: metadata.traceparent } };
}

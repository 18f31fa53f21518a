import { uuidv7 } from '../infra/ids.js';
import {
  decide,
  dependenciesOf,
  evolve,
  initialTaskState,
  isTerminal,
  FogschedError,
  type DependencyState,
  type TaskCommand,
  type TaskEvent,
  type TaskMessage,
  type TaskState,
} from '../domain/index.js';
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
 * every event, updates task_current, and writes dispatch rows
 * to the outbox (a cancel deletes the task's unpublished ones) — one statement
 * for the whole batch. A refused command
 * (typed domain error) is reported and changes nothing; anything else throws.
 *
 * Dependencies (docs/workflows.md): the same statement marks the edges of the tasks that ended
 * here resolved (task_dependencies, each edge once); their waiting dependants' task_waits counts
 * go down under the rows' locks, and the dependants whose last dependency ended, or one failed,
 * get ResolveDependencies in a nested call (a dependant cancelled there propagates further). A
 * dispatch of a task with dependencies carries their states and outputs (TaskMessage.dependencies).
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
  const undispatched = new Set<string>(); // cancels of tasks never dispatched: no broadcast

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
      // A task cancelled while waiting was never dispatched: no node has it, nothing to withdraw.
      const neverDispatched = event.type === 'TaskCancelled' && (state.status === 'waiting' || state.status === 'new');
      state = evolve(state, event);
      const eventId = uuidv7(); // time-ordered, like task ids: events_event_id_key grows at its right edge
      const metadata = withDependencyCause(event, item.metadata);
      newEvents.push({
        streamId: item.taskId,
        streamType: 'task',
        streamVersion: state.version,
        eventId,
        type: event.type,
        data: event.data,
        metadata,
      });
      pending.push({ state, event, metadata, eventId });
      if (neverDispatched) undispatched.add(eventId);
    }
    states.set(item.taskId, state);
  });

  if (newEvents.length > 0) {
    const outbox: OutboxRow[] = await withDependencies(
      trx,
      pending.flatMap((p) => (undispatched.has(p.eventId) ? [] : (withTraceHeader(outboxRowFor(p.state, p.event, p.eventId, names), p.metadata) ?? []))),
      states,
      names,
    );
    const submittedEvent = new Map(pending.flatMap((p) => (p.event.type === 'TaskSubmitted' ? [[p.state.taskId, p.eventId] as const] : [])));
    const cancelled = pending.filter((p) => p.event.type === 'TaskCancelled' && !undispatched.has(p.eventId)).map((p) => p.state.taskId);
    const touched = [...new Set(pending.map((p) => p.state.taskId))];
    const current = touched.map((id) => ({ state: states.get(id) as TaskState, seqEventId: submittedEvent.get(id) ?? null }));
    // The tasks that ended here: their dependants' edges are resolved in the same statement.
    const ended = [...new Set(pending.filter((p) => isTerminal(p.state.status)).map((p) => p.state.taskId))]
      .map((id) => states.get(id) as TaskState)
      .filter((st) => isTerminal(st.status));
    // One statement for the three tables: the events, then task_current and the outbox as CTEs
    // that take their positions from the events' RETURNING (task_history is a view of events).
    let resolved: ResolvedEdge[] = [];
    try {
      const result = await sql<ResolvedEdge>`${sql.raw(PREPARE_MARK)}
        WITH appended AS (${insertEvents(newEvents)}),
        ${taskProjectionCtes('appended', current)}
        ${outbox.length > 0 ? sql`, outbox_written AS (${insertOutbox(outbox)})` : sql``}
        ${cancelled.length > 0 ? sql`, withdrawn AS (${withdrawDispatches(cancelled, names)})` : sql``}
        ${
          ended.length > 0
            ? sql`, resolved AS (${resolveEdges(ended)})
                SELECT task_id, depends_on, tenant, resolved_state FROM resolved`
            : sql`SELECT count(*) FROM appended`
        }`.execute(trx);
      if (ended.length > 0) resolved = result.rows;
    } catch (error) {
      throw asConcurrencyError(error, newEvents) ?? error;
    }
    if (resolved.length > 0) await releaseDependants(trx, resolved, names);
  }
  const collector = collectors.get(trx);
  if (collector) for (const p of pending) collector.push(p);
  return { states, refused, eventCount: newEvents.length, applied: pending };
}

/** An edge whose dependency ended in this transaction. */
interface ResolvedEdge {
  readonly task_id: string;
  readonly depends_on: string;
  readonly tenant: string;
  readonly resolved_state: DependencyState;
}

/** A release or a cancel caused by a dependency names it as the event's causation (also at submit). */
function withDependencyCause(event: TaskEvent, metadata: EventMetadata): EventMetadata {
  const dependency = event.type === 'TaskReleased' || event.type === 'TaskCancelled' ? event.data.dependency : undefined;
  return dependency ? { ...metadata, causationId: dependency } : metadata;
}

/**
 * The UPDATE of the edges of the tasks that ended, as a CTE of the task write: an edge is
 * resolved once (resolved_state IS NULL), by the transaction holding its dependency's row lock.
 */
function resolveEdges(ended: readonly TaskState[]) {
  // unnest: the builder cannot join an UPDATE to an array of (id, state) pairs.
  return sql`
    UPDATE task_dependencies d SET resolved_state = v.state
      FROM unnest(${ended.map((s) => s.taskId)}::uuid[], ${ended.map((s) => s.status)}::text[]) AS v(id, state)
     WHERE d.depends_on = v.id AND d.resolved_state IS NULL
    RETURNING d.task_id, d.depends_on, d.tenant, d.resolved_state`;
}

/**
 * Counts the resolved edges off their dependants' task_waits rows, locked in task id order (two
 * transactions ending dependencies of the same tasks wait for each other, never deadlock; the one
 * reaching 0 releases), then has the dependants decide: released once none remains, cancelled by
 * a failed or cancelled one under policy `cancel`.
 */
async function releaseDependants(trx: Executor, edges: readonly ResolvedEdge[], names: TopologyNames): Promise<void> {
  const byTask = new Map<string, ResolvedEdge[]>();
  for (const e of edges) {
    const list = byTask.get(e.task_id);
    if (list) list.push(e);
    else byTask.set(e.task_id, [e]);
  }
  const ids = [...byTask.keys()].sort();
  // Two statements: a FOR UPDATE in a CTE joined to the UPDATE would lock in the join's order.
  await sql`SELECT task_id FROM task_waits WHERE task_id = ANY(${ids}::uuid[]) ORDER BY task_id FOR UPDATE`.execute(trx);
  const counted = await sql<{ task_id: string; pending: number }>`
    UPDATE task_waits w SET pending = w.pending - v.n
      FROM unnest(${ids}::uuid[], ${ids.map((id) => byTask.get(id)?.length ?? 0)}::int[]) AS v(id, n)
     WHERE w.task_id = v.id
    RETURNING w.task_id, w.pending`.execute(trx);
  const remaining = new Map(counted.rows.map((r) => [r.task_id, r.pending]));
  const deciding = ids.filter((id) => {
    const left = remaining.get(id);
    // No row: the dependant was not waiting at its submit (it was cancelled or released there).
    return left !== undefined && (left <= 0 || (byTask.get(id) ?? []).some((e) => e.resolved_state !== 'succeeded'));
  });
  if (deciding.length === 0) return;
  const releasing = deciding.filter((id) => (remaining.get(id) ?? 1) <= 0);
  const totals = new Map<string, { succeeded: number; failed: number; cancelled: number }>();
  if (releasing.length > 0) {
    const rows = await sql<{ task_id: string; succeeded: number; failed: number; cancelled: number }>`
      SELECT task_id,
             count(*) FILTER (WHERE resolved_state = 'succeeded')::int AS succeeded,
             count(*) FILTER (WHERE resolved_state = 'failed')::int AS failed,
             count(*) FILTER (WHERE resolved_state = 'cancelled')::int AS cancelled
        FROM task_dependencies WHERE task_id = ANY(${releasing}::uuid[]) GROUP BY task_id`.execute(trx);
    for (const r of rows.rows) totals.set(r.task_id, { succeeded: r.succeeded, failed: r.failed, cancelled: r.cancelled });
  }
  const now = new Date().toISOString();
  const items: CommandItem[] = deciding.map((id) => {
    const resolved = (byTask.get(id) ?? []).map((e) => ({ id: e.depends_on, state: e.resolved_state }));
    const cause = resolved.find((r) => r.state !== 'succeeded') ?? resolved[resolved.length - 1];
    return {
      taskId: id,
      command: {
        type: 'ResolveDependencies',
        data: { resolved, remaining: Math.max(0, remaining.get(id) ?? 0), outcomes: totals.get(id) ?? { succeeded: 0, failed: 0, cancelled: 0 }, now },
      },
      metadata: { tenant: byTask.get(id)?.[0]?.tenant, actor: 'scheduler', ...(cause ? { causationId: cause.id } : {}) },
    };
  });
  await executeTaskCommands(trx, items, names);
}

/** Largest JSON of dependency outputs a dispatch carries; past it they are left out (states kept). */
export const MAX_DEPENDENCY_OUTPUT_BYTES = 4 * 1024 * 1024;

/**
 * Dispatches of tasks with dependencies carry each dependency's state and output, read from
 * task_current in this transaction (a released task's handler sees them in ctx.dependencies).
 * No statement when no dispatch is of a task with dependencies.
 */
async function withDependencies(trx: Executor, rows: OutboxRow[], states: ReadonlyMap<string, TaskState>, names: TopologyNames): Promise<OutboxRow[]> {
  const needing = new Set(rows.filter((r) => r.exchange === names.tasks && dependenciesOf(states.get(r.streamId)?.spec ?? null).length > 0));
  if (needing.size === 0) return rows;
  const ids = [...new Set([...needing].flatMap((r) => dependenciesOf(states.get(r.streamId)?.spec ?? null)))];
  const found = await trx
    .selectFrom('task_current')
    .select(['task_id', 'state', 'output'])
    .where('task_id', '=', sql<string>`ANY(${ids}::uuid[])`) // one parameter for up to MAX_DEPENDENCIES ids each
    .execute();
  const byId = new Map(found.map((f) => [f.task_id, f]));
  return rows.map((row) => {
    if (!needing.has(row)) return row;
    const deps = dependenciesOf(states.get(row.streamId)?.spec ?? null);
    let bytes = 0;
    const full: Record<string, { state: string; output: unknown }> = {};
    for (const id of deps) {
      const dep = byId.get(id);
      const output = dep?.output ?? null;
      bytes += Buffer.byteLength(JSON.stringify(output) ?? 'null');
      full[id] = { state: dep?.state ?? 'unknown', output };
    }
    const truncated = bytes > MAX_DEPENDENCY_OUTPUT_BYTES;
    const dependencies: TaskMessage['dependencies'] = truncated
      ? Object.fromEntries(Object.entries(full).map(([id, d]) => [id, { state: d.state } as { state: string; output: unknown }]))
      : full;
    return { ...row, body: { ...(row.body as TaskMessage), dependencies, ...(truncated ? { dependenciesTruncated: true } : {}) } };
  });
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
 * Like countedTransaction, for work that is a single statement, which PostgreSQL runs atomically
 * on its own: no BEGIN and no COMMIT, two round trips fewer (a submit of tasks without a client
 * id, idempotency key or dependencies is one statement). A second statement is a programming
 * error: it throws before running, and the tests that submit such tasks fail.
 */
export async function countedStatement<T>(db: Kysely<Database>, work: (exec: Kysely<Database>) => Promise<T>): Promise<T> {
  let statements = 0;
  const exec = db.withPlugin({
    transformQuery(args) {
      statements += 1;
      if (statements > 1) throw new Error('countedStatement: the work ran a second statement outside a transaction; use countedTransaction');
      return args.node;
    },
    transformResult: async (args) => args.result,
  });
  const applied: { state: TaskState; event: TaskEvent }[] = [];
  collectors.set(exec, applied);
  const result = await work(exec);
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

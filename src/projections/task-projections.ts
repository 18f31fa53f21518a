import { sql } from 'kysely';
import { initialTaskState, type TaskEvent, type TaskSpec, type TaskState, type TaskStatus, type FailureReason, type TaskError } from '../domain/index.js';
import type { EventMetadata, Executor } from '../store/index.js';

/** One task_history row: the event, and the state it left the task in. */
export interface HistoryRow {
  readonly position: number;
  readonly state: TaskState;
  readonly event: TaskEvent;
  readonly metadata: EventMetadata;
}

/** The live read models; a rebuild writes the same rows into shadow tables of the same shape. */
export interface TaskTables {
  readonly current: string;
  readonly history: string;
}
export const LIVE_TASK_TABLES: TaskTables = { current: 'task_current', history: 'task_history' };

/**
 * Writes task_current for each state (insert or move forward; a row never goes
 * back to an older version, so a replayed batch is harmless). `seqs` gives a new
 * task's row its list order: the position of its TaskSubmitted event.
 */
export async function upsertTaskCurrent(
  db: Executor,
  states: readonly TaskState[],
  seqs: ReadonlyMap<string, number>,
  table: string = LIVE_TASK_TABLES.current,
): Promise<void> {
  if (states.length === 0) return;
  const col = <T>(f: (s: TaskState) => T) => states.map(f);
  const spec = (s: TaskState): TaskSpec => {
    if (!s.spec) throw new Error(`task ${s.taskId} has no TaskSubmitted event`);
    return s.spec;
  };
  // unnest keeps this one statement with a fixed number of parameters.
  await sql`
    INSERT INTO ${sql.table(table)} AS cur (task_id, seq, tenant, type, state, tier, priority, attempt, first_attempt, max_attempts, version,
      spec, node_id, output, last_error, failure_reason, available_at, submitted_at, started_at, finished_at, updated_at, deadline)
    SELECT * FROM unnest(
      ${col((s) => s.taskId)}::uuid[], ${col((s) => seqs.get(s.taskId) ?? 0)}::bigint[], ${col((s) => spec(s).tenant)}::text[], ${col((s) => spec(s).type)}::text[],
      ${col((s) => s.status)}::text[], ${col((s) => spec(s).tier)}::text[], ${col((s) => spec(s).priority)}::text[],
      ${col((s) => s.attempt)}::int[], ${col((s) => s.firstAttempt)}::int[], ${col((s) => spec(s).maxAttempts)}::int[],
      ${col((s) => s.version)}::int[], ${col((s) => JSON.stringify(spec(s)))}::jsonb[], ${col((s) => s.nodeId)}::text[],
      ${col((s) => (s.output === null || s.output === undefined ? null : JSON.stringify(s.output)))}::jsonb[],
      ${col((s) => (s.lastError ? JSON.stringify(s.lastError) : null))}::jsonb[], ${col((s) => s.failureReason)}::text[],
      ${col((s) => s.availableAt)}::timestamptz[], ${col((s) => s.submittedAt)}::timestamptz[], ${col((s) => s.startedAt)}::timestamptz[],
      ${col((s) => s.finishedAt)}::timestamptz[], ${col((s) => s.updatedAt)}::timestamptz[], ${col((s) => spec(s).deadline)}::timestamptz[]
    )
    ON CONFLICT (task_id) DO UPDATE SET
      state = EXCLUDED.state, attempt = EXCLUDED.attempt, first_attempt = EXCLUDED.first_attempt, version = EXCLUDED.version,
      node_id = EXCLUDED.node_id, output = EXCLUDED.output, last_error = EXCLUDED.last_error,
      failure_reason = EXCLUDED.failure_reason, available_at = EXCLUDED.available_at, started_at = EXCLUDED.started_at,
      finished_at = EXCLUDED.finished_at, updated_at = EXCLUDED.updated_at
    WHERE cur.version < EXCLUDED.version`.execute(db);
}

/** Appends task_history rows; a row already there (same position) is left alone. */
export async function insertTaskHistory(db: Executor, rows: readonly HistoryRow[], table: string = LIVE_TASK_TABLES.history): Promise<void> {
  if (rows.length === 0) return;
  const col = <T>(f: (r: HistoryRow) => T) => rows.map(f);
  await sql`
    INSERT INTO ${sql.table(table)} (position, task_id, version, type, state, attempt, node_id, actor, reason, error, at, data)
    SELECT * FROM unnest(
      ${col((r) => r.position)}::bigint[], ${col((r) => r.state.taskId)}::uuid[], ${col((r) => r.state.version)}::int[],
      ${col((r) => r.event.type)}::text[], ${col((r) => (r.state.status === 'new' ? 'submitted' : r.state.status))}::text[], ${col((r) => attemptOf(r))}::int[],
      ${col((r) => nodeOf(r.event))}::text[], ${col((r) => actorOf(r))}::text[], ${col((r) => reasonOf(r.event))}::text[],
      ${col((r) => errorOf(r.event))}::jsonb[], ${col((r) => r.event.data.at)}::timestamptz[],
      ${col((r) => JSON.stringify(r.event.data))}::jsonb[]
    )
    ON CONFLICT (position) DO NOTHING`.execute(db);
}

/** Loads the states of tasks from task_current, locking the rows when asked (absent ids are left out). */
export async function loadTaskStates(
  db: Executor,
  taskIds: readonly string[],
  opts: { forUpdate: boolean; table?: string },
): Promise<Map<string, TaskState>> {
  const states = new Map<string, TaskState>();
  if (taskIds.length === 0) return states;
  const { rows } = await sql<TaskCurrentRow>`
    SELECT * FROM ${sql.table(opts.table ?? LIVE_TASK_TABLES.current)}
    WHERE task_id = ANY(${[...taskIds]}::uuid[]) ${opts.forUpdate ? sql`FOR UPDATE` : sql``}`.execute(db);
  for (const row of rows) states.set(row.task_id, rowToState(row));
  return states;
}

export type TaskCurrentRow = {
  task_id: string;
  seq: number;
  state: string;
  attempt: number;
  first_attempt: number;
  version: number;
  spec: unknown;
  node_id: string | null;
  output: unknown;
  last_error: unknown;
  failure_reason: string | null;
  available_at: Date | null;
  submitted_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  updated_at: Date;
};

export function rowToState(row: TaskCurrentRow): TaskState {
  return {
    ...initialTaskState(row.task_id),
    status: row.state as TaskStatus,
    version: row.version,
    spec: row.spec as TaskSpec,
    attempt: row.attempt,
    firstAttempt: row.first_attempt,
    availableAt: iso(row.available_at),
    nodeId: row.node_id,
    submittedAt: iso(row.submitted_at),
    startedAt: iso(row.started_at),
    finishedAt: iso(row.finished_at),
    updatedAt: iso(row.updated_at),
    output: row.output ?? null,
    lastError: (row.last_error as TaskError | null) ?? null,
    failureReason: row.failure_reason as FailureReason | null,
  };
}

function iso(d: Date | null): string | null {
  return d ? d.toISOString() : null;
}

function attemptOf(r: HistoryRow): number {
  return 'attempt' in r.event.data ? r.event.data.attempt : r.state.attempt;
}

function nodeOf(event: TaskEvent): string | null {
  return 'nodeId' in event.data ? event.data.nodeId : null;
}

function actorOf(r: HistoryRow): string | null {
  return 'actor' in r.event.data ? r.event.data.actor : (r.metadata.actor ?? null);
}

function reasonOf(event: TaskEvent): string | null {
  return 'reason' in event.data ? event.data.reason : null;
}

function errorOf(event: TaskEvent): string | null {
  return 'error' in event.data && event.data.error ? JSON.stringify(event.data.error) : null;
}

import { sql } from 'kysely';
import { initialTaskState, type TaskEvent, type TaskSpec, type TaskState, type TaskStatus, type FailureReason, type TaskError, type TaskProgress } from '../domain/index.js';
import { jsonRecordset, type Column, type EventMetadata, type Executor } from '../store/index.js';

export type { Column } from '../store/index.js';

/** One task_history row (a view of the log; the rebuild's verify folds the same rows to compare): the event, and the state it left the task in. */
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


/** A task's row source: its state and its list order (the position of its TaskSubmitted event). */
export interface CurrentRow {
  readonly state: TaskState;
  readonly seq: number;
}

const spec = (s: TaskState): TaskSpec => {
  if (!s.spec) throw new Error(`task ${s.taskId} has no TaskSubmitted event`);
  return s.spec;
};
const json = (v: unknown) => (v === null || v === undefined ? null : JSON.stringify(v));

/** task_current's columns: what each holds of a task's state (one definition for every writer). */
export const CURRENT_COLUMNS: readonly Column<CurrentRow>[] = [
  { name: 'task_id', type: 'uuid', value: (r) => r.state.taskId },
  { name: 'seq', type: 'bigint', value: (r) => r.seq },
  { name: 'tenant', type: 'text', value: (r) => spec(r.state).tenant },
  { name: 'type', type: 'text', value: (r) => spec(r.state).type },
  { name: 'state', type: 'text', value: (r) => r.state.status },
  { name: 'tier', type: 'text', value: (r) => spec(r.state).tier },
  { name: 'priority', type: 'text', value: (r) => spec(r.state).priority },
  { name: 'attempt', type: 'int', value: (r) => r.state.attempt },
  { name: 'first_attempt', type: 'int', value: (r) => r.state.firstAttempt },
  { name: 'max_attempts', type: 'int', value: (r) => spec(r.state).maxAttempts },
  { name: 'version', type: 'int', value: (r) => r.state.version },
  { name: 'spec', type: 'jsonb', value: (r) => JSON.stringify(spec(r.state)) },
  { name: 'node_id', type: 'text', value: (r) => r.state.nodeId },
  { name: 'output', type: 'jsonb', value: (r) => json(r.state.output) },
  { name: 'last_error', type: 'jsonb', value: (r) => json(r.state.lastError) },
  { name: 'failure_reason', type: 'text', value: (r) => r.state.failureReason },
  { name: 'available_at', type: 'timestamptz', value: (r) => r.state.availableAt },
  { name: 'submitted_at', type: 'timestamptz', value: (r) => r.state.submittedAt },
  { name: 'started_at', type: 'timestamptz', value: (r) => r.state.startedAt },
  { name: 'finished_at', type: 'timestamptz', value: (r) => r.state.finishedAt },
  { name: 'updated_at', type: 'timestamptz', value: (r) => r.state.updatedAt },
  { name: 'deadline', type: 'timestamptz', value: (r) => spec(r.state).deadline },
  { name: 'progress', type: 'jsonb', value: (r) => json(r.state.progress) },
  // The running lease runs from the node's last report on the run: its start or its last progress.
  { name: 'reported_at', type: 'timestamptz', value: (r) => (r.state.status === 'running' ? (r.state.progress?.at ?? r.state.startedAt) : null) },
];

/** task_history's columns: one row per event, with the state the event left the task in (what the view in migration 16 gives for each event). */
export const HISTORY_COLUMNS: readonly Column<HistoryRow>[] = [
  { name: 'position', type: 'bigint', value: (r) => r.position },
  { name: 'task_id', type: 'uuid', value: (r) => r.state.taskId },
  { name: 'version', type: 'int', value: (r) => r.state.version },
  { name: 'type', type: 'text', value: (r) => r.event.type },
  { name: 'state', type: 'text', value: (r) => (r.state.status === 'new' ? 'submitted' : r.state.status) },
  { name: 'attempt', type: 'int', value: (r) => attemptOf(r) },
  { name: 'node_id', type: 'text', value: (r) => nodeOf(r.event) },
  { name: 'actor', type: 'text', value: (r) => actorOf(r) },
  { name: 'reason', type: 'text', value: (r) => reasonOf(r.event) },
  { name: 'error', type: 'jsonb', value: (r) => errorOf(r.event) },
  { name: 'at', type: 'timestamptz', value: (r) => r.event.data.at },
  { name: 'data', type: 'jsonb', value: (r) => JSON.stringify(r.event.data) },
];

/** Moves a task_current row forward, never back to an older version (a replayed batch is harmless). */
export const CURRENT_ON_CONFLICT = sql`
    ON CONFLICT (task_id) DO UPDATE SET
      state = EXCLUDED.state, attempt = EXCLUDED.attempt, first_attempt = EXCLUDED.first_attempt, version = EXCLUDED.version,
      node_id = EXCLUDED.node_id, output = EXCLUDED.output, last_error = EXCLUDED.last_error,
      failure_reason = EXCLUDED.failure_reason, available_at = EXCLUDED.available_at, started_at = EXCLUDED.started_at,
      finished_at = EXCLUDED.finished_at, updated_at = EXCLUDED.updated_at, progress = EXCLUDED.progress,
      reported_at = EXCLUDED.reported_at
    WHERE cur.version < EXCLUDED.version`;

export function columnList<T>(columns: readonly Column<T>[]) {
  return sql.join(columns.map((c) => sql.ref(c.name)));
}

/**
 * The task_current write of a command batch as a data-modifying CTE that takes its positions from
 * the `events` insert in the CTE named `eventsCte` (which must return event_id and position): a
 * new task's seq is the position of its TaskSubmitted event (`seqEventId`). A task_current row
 * only moves forward (CURRENT_ON_CONFLICT). task_history is a view of the log (migration 16):
 * appending the events is all it needs.
 */
export function taskProjectionCtes(eventsCte: string, current: readonly { state: TaskState; seqEventId: string | null }[]) {
  const ev = sql.raw(eventsCte);
  // A task submitted in this batch is a new row; any other was loaded (and locked) from
  // task_current by the writer, so its row exists and only CURRENT_ON_CONFLICT's columns change.
  // Its columns that never change after the submit (the spec with its payload among them) are
  // not sent again: a placeholder that passes NOT NULL (checked before the conflict), which the update never reads.
  const currentColumns: Column<{ state: TaskState; seqEventId: string | null }>[] = CURRENT_COLUMNS.map((c) => {
    if (c.name === 'seq') return { name: 'seq_event', type: 'uuid', value: (r) => r.seqEventId };
    const placeholder = FIXED_AFTER_SUBMIT.get(c.name);
    return { ...c, value: (r) => (placeholder !== undefined && r.seqEventId === null ? placeholder : c.value({ state: r.state, seq: 0 })) };
  });
  const currentSelect = sql.join(CURRENT_COLUMNS.map((c) => (c.name === 'seq' ? sql`coalesce(s.position, 0)` : sql`r.${sql.ref(c.name)}`)));
  return sql`
    task_current_written AS (
      INSERT INTO task_current AS cur (${columnList(CURRENT_COLUMNS)})
      SELECT ${currentSelect} FROM ${jsonRecordset(currentColumns, current)} LEFT JOIN ${ev} s ON s.event_id = r.seq_event
      -- Never a row of placeholders: a task without its submit here must have its row already.
      WHERE r.seq_event IS NOT NULL OR EXISTS (SELECT 1 FROM task_current t WHERE t.task_id = r.task_id)
      ${CURRENT_ON_CONFLICT}
    )`;
}

/**
 * task_current's columns set at the submit and never updated (CURRENT_ON_CONFLICT leaves them),
 * with the placeholder an update sends instead (json_to_recordset makes a JSON null SQL NULL, so the spec's is `{}`).
 */
const FIXED_AFTER_SUBMIT: ReadonlyMap<string, string | number | null> = new Map<string, string | number | null>([
  ['tenant', ''],
  ['type', ''],
  ['tier', ''],
  ['priority', ''],
  ['max_attempts', 0],
  ['spec', '{}'],
  ['deadline', null],
]);

/**
 * Loads the states of tasks from task_current, locking the rows when asked (absent ids are left
 * out). Locked in task id order whatever plan PostgreSQL picks (a bitmap scan would lock in heap
 * order), so two writers touching the same tasks cannot deadlock on them.
 */
export async function loadTaskStates(
  db: Executor,
  taskIds: readonly string[],
  opts: { forUpdate: boolean; table?: string },
): Promise<Map<string, TaskState>> {
  const states = new Map<string, TaskState>();
  if (taskIds.length === 0) return states;
  const { rows } = await sql<TaskCurrentRow>`
    SELECT * FROM ${sql.table(opts.table ?? LIVE_TASK_TABLES.current)}
    WHERE task_id = ANY(${[...taskIds]}::uuid[]) ${opts.forUpdate ? sql`ORDER BY task_id FOR UPDATE` : sql``}`.execute(db);
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
  progress?: unknown;
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
    progress: (row.progress as TaskProgress | null | undefined) ?? null,
  };
}

function iso(d: Date | null): string | null {
  return d ? d.toISOString() : null;
}

function attemptOf(r: HistoryRow): number {
  return 'attempt' in r.event.data ? (r.event.data.attempt ?? r.state.attempt) : r.state.attempt;
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

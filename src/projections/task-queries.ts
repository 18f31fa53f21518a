import { sql, type Selectable, type SelectQueryBuilder } from 'kysely';
import type { Database, Executor, TaskCurrentTable } from '../store/index.js';
import { rowToState } from './task-projections.js';
import type { TaskState } from '../domain/index.js';

export interface TaskListFilter {
  readonly tenant: string;
  readonly state?: string;
  readonly priority?: string;
  readonly type?: string;
  readonly tier?: string;
  /** Only tasks with seq below this (the cursor). */
  readonly beforeSeq?: number;
  readonly limit: number;
  /** A page also ends once the tasks before the next one hold this many bytes (pageBytes); absent: no byte bound. */
  readonly maxBytes?: number;
}

export interface ListedTask {
  readonly seq: number;
  readonly state: TaskState;
  /** With `maxBytes`: the bytes of this page up to and including this task (its spec, output and error as JSON text). */
  readonly pageBytes?: number;
}

/** What a task weighs in an answer: the JSON text of its spec (with the payload), output and last error. */
const TASK_BYTES = sql<number>`(octet_length(spec::text) + coalesce(octet_length(output::text), 0) + coalesce(octet_length(last_error::text), 0))`;

/**
 * The first `limit` rows of `q` (newest first), cut after the row that brings the page to
 * `maxBytes`: a row comes while the rows before it hold less, so a page always has one row and
 * passes the bound by at most one. The sums are PostgreSQL's (a window over the limited scan),
 * so the rows past the bound never reach this process.
 */
async function pageOf(db: Executor, q: SelectQueryBuilder<Database, 'task_current', Selectable<TaskCurrentTable>>, limit: number, maxBytes: number | undefined): Promise<ListedTask[]> {
  if (maxBytes === undefined) {
    const rows = await q.orderBy('seq', 'desc').limit(limit).execute();
    return rows.map((row) => ({ seq: row.seq, state: rowToState(row) }));
  }
  const limited = q
    .select([sql<string>`sum(${TASK_BYTES}) OVER (ORDER BY seq DESC)`.as('page_bytes'), TASK_BYTES.as('row_bytes')])
    .orderBy('seq', 'desc')
    .limit(limit);
  const rows = await db
    .selectFrom(limited.as('page'))
    .selectAll()
    .where(sql<boolean>`page_bytes - row_bytes < ${maxBytes}`)
    .orderBy('seq', 'desc')
    .execute();
  return rows.map(({ page_bytes, row_bytes: _, ...row }) => ({ seq: row.seq, state: rowToState(row), pageBytes: Number(page_bytes) }));
}

export async function getTask(db: Executor, tenant: string, taskId: string): Promise<TaskState | null> {
  const row = await db.selectFrom('task_current').selectAll().where('task_id', '=', taskId).where('tenant', '=', tenant).executeTakeFirst();
  return row ? rowToState(row) : null;
}

/** Newest first, in `seq` order: stable under concurrent inserts, so cursors never skip or repeat. */
export async function listTasks(db: Executor, filter: TaskListFilter): Promise<ListedTask[]> {
  let q = db.selectFrom('task_current').selectAll().where('tenant', '=', filter.tenant);
  if (filter.state) q = q.where('state', '=', filter.state);
  if (filter.priority) q = q.where('priority', '=', filter.priority);
  if (filter.type) q = q.where('type', '=', filter.type);
  if (filter.tier) q = q.where('tier', '=', filter.tier);
  if (filter.beforeSeq !== undefined) q = q.where('seq', '<', filter.beforeSeq);
  return pageOf(db, q, filter.limit, filter.maxBytes);
}

export interface HistoryEntry {
  readonly position: number;
  readonly version: number;
  readonly type: string;
  readonly state: string;
  readonly attempt: number;
  readonly nodeId: string | null;
  readonly actor: string | null;
  readonly reason: string | null;
  readonly error: unknown;
  readonly at: string;
  readonly data: unknown;
  /** The trace id in the event's metadata (docs/tracing.md); null for an event written without one. */
  readonly traceId: string | null;
}

export async function getTaskHistory(db: Executor, taskId: string): Promise<HistoryEntry[]> {
  const rows = await db
    .selectFrom('task_history as h')
    .innerJoin('events as e', 'e.position', 'h.position')
    .selectAll('h')
    .select(sql<string | null>`e.metadata->>'traceId'`.as('trace_id'))
    // task_history is a view of events: the stream's key finds the task's rows (its task_id is a cast).
    .where('e.stream_id', '=', taskId)
    .orderBy('h.version')
    .execute();
  return rows.map((r) => ({
    position: r.position,
    version: r.version,
    type: r.type,
    state: r.state,
    attempt: r.attempt,
    nodeId: r.node_id,
    actor: r.actor,
    reason: r.reason,
    error: r.error ?? null,
    at: r.at.toISOString(),
    data: r.data,
    traceId: r.trace_id,
  }));
}

/** Counts of tasks per state for a tenant. */
export async function countTasksByState(db: Executor, tenant: string): Promise<Record<string, number>> {
  const rows = await db
    .selectFrom('task_current')
    .select(['state', sql<number>`count(*)::int`.as('n')])
    .where('tenant', '=', tenant)
    .groupBy('state')
    .execute();
  return Object.fromEntries(rows.map((r) => [r.state, r.n]));
}

/** A tenant's tasks that are not finished: waiting (for dependencies), scheduled, queued, running or retrying (index-only on task_current_state_idx). */
export async function countActiveTasks(db: Executor, tenant: string): Promise<number> {
  const row = await db
    .selectFrom('task_current')
    .select(sql<number>`count(*)::int`.as('n'))
    .where('tenant', '=', tenant)
    .where('state', 'in', ['waiting', 'scheduled', 'queued', 'running', 'retrying'])
    .executeTakeFirst();
  return row?.n ?? 0;
}

export interface FailedTaskFilter {
  readonly type?: string;
  readonly reason?: string;
  /** Failed at or after this time (ISO). */
  readonly since?: string;
  /** Failed before this time (ISO). */
  readonly until?: string;
}

/** Failed tasks (the dead-letter view), newest first by seq. */
export async function listFailedTasks(db: Executor, filter: FailedTaskFilter & { tenant: string; limit: number; beforeSeq?: number; maxBytes?: number }): Promise<ListedTask[]> {
  let q = db.selectFrom('task_current').selectAll().where('tenant', '=', filter.tenant).where('state', '=', 'failed');
  if (filter.type) q = q.where('type', '=', filter.type);
  if (filter.reason) q = q.where('failure_reason', '=', filter.reason);
  if (filter.since) q = q.where('finished_at', '>=', new Date(filter.since));
  if (filter.until) q = q.where('finished_at', '<', new Date(filter.until));
  if (filter.beforeSeq !== undefined) q = q.where('seq', '<', filter.beforeSeq);
  return pageOf(db, q, filter.limit, filter.maxBytes);
}

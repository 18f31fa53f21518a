import { sql, type Kysely } from 'kysely';
import type { BackoffOptions, TaskCommand } from '../domain/index.js';
import type { Logger } from '../infra/logger.js';
import type { TopologyNames } from '../outbox/index.js';
import type { Database, Executor } from '../store/index.js';
import { countedTransaction, executeTaskCommands } from '../tasks/index.js';

/**
 * How long a `running` task may go without its result before the scheduler gives the attempt up.
 * A fog node acks a task message once its start is durable, so from then on nothing but this
 * lease notices a node that died (or a result that was lost).
 */
export interface RunningLease {
  /** RUNNING_LEASE_MS: the lease of a task without `timeoutMs`, from its start (default 30 min). */
  readonly leaseMs: number;
  /**
   * RUNNING_LEASE_GRACE_MS: a task with `timeoutMs` gets `timeoutMs` plus this; a task of a lost
   * node is given up this long after the loss was recorded, so a result the node sent before it
   * went (still in the results queue) is applied rather than thrown away (default 30 s).
   */
  readonly graceMs: number;
}

export interface LeaseSweepOptions {
  readonly db: Kysely<Database>;
  readonly names: TopologyNames;
  readonly lease: RunningLease;
  /** Backoff of the retry the give-up schedules (the task's own `retry` wins). */
  readonly backoff: BackoffOptions;
  readonly logger: Logger;
  /** Most tasks given up per transaction (default 500). */
  readonly limit?: number;
  /** The retry jitter in [0, 1) (default Math.random). */
  readonly random?: () => number;
}

/** Why an attempt is given up: its node left, or its lease ran out. */
export type LeaseFailureCode = 'node-lost' | 'lease-expired';

/** A running attempt as the sweep reads it: task_current joined with its start and its node's last loss in the log. */
export interface RunningAttemptRow {
  task_id: string;
  attempt: number;
  node_id: string;
  started_at: Date;
  /** The node's last report on the run (its start, or its last progress; the node's clock): the lease runs from it. */
  reported_at: Date;
  timeout_ms: number | null;
  /** Position of the run's last report in the log (its TaskStarted or its last TaskProgressed). */
  started_position: number;
  /** When that report was written (the database's clock). */
  started_recorded_at: Date;
  lost_position: number | null;
  lost_recorded_at: Date | null;
  lost_reason: string | null;
  now: Date;
}

// The kinds of lease, as the index task_current_running_idx holds them (migration 8). `IS TRUE`
// and `IS FALSE`, not `NOT`: the planner turns NOT (x IS NULL) into x IS NOT NULL, which no
// longer matches the index's boolean column.
const WITHOUT_TIMEOUT = sql<boolean>`(spec->>'timeoutMs' IS NULL) IS TRUE`;
const WITH_TIMEOUT = sql<boolean>`(spec->>'timeoutMs' IS NULL) IS FALSE`;
// From the node's last report on the run (migration 10): its start, or its last progress.
const LEASE_BASE_MS = sql<number>`task_lease_base_ms(coalesce(reported_at, started_at), spec)`;
const NOW_MS = sql<number>`(extract(epoch FROM now())::float8 * 1000)`;

/**
 * Locks (FOR UPDATE SKIP LOCKED: several scheduler replicas share the work, none waits) the
 * running tasks that may have to be given up: those whose node has a `FogNodeLost` later in the
 * log than their `TaskStarted` (and at least the grace ago), and those whose lease ran out by
 * their start time. Each is a
 * range scan of task_current_running_idx, or a lookup in events_node_lost_idx per node that
 * runs tasks now (then one in the task's stream per task of a lost node).
 */
async function lockCandidates(trx: Executor, lease: RunningLease, limit: number): Promise<string[]> {
  const lost = await sql<{ task_id: string }>`
    SELECT t.task_id FROM task_current t
      JOIN (SELECT n.node_id, l.position, l.recorded_at
              FROM (SELECT DISTINCT node_id FROM task_current WHERE state = 'running') n
              CROSS JOIN LATERAL (
                SELECT e.position, e.recorded_at FROM events e
                 WHERE e.stream_id = 'node:' || n.node_id AND e.type = 'FogNodeLost'
                 ORDER BY e.position DESC LIMIT 1) l) lost
        ON lost.node_id = t.node_id
     WHERE t.state = 'running'
       AND lost.recorded_at <= now() - ${lease.graceMs}::float8 * interval '1 millisecond'
       AND lost.position > (SELECT s.position FROM events s
                             WHERE s.stream_id = t.task_id::text AND s.type IN ('TaskStarted', 'TaskProgressed')
                             ORDER BY s.stream_version DESC LIMIT 1)
     LIMIT ${limit}
       FOR UPDATE OF t SKIP LOCKED`.execute(trx);
  const expired = async (kind: typeof WITH_TIMEOUT, allowanceMs: number) =>
    (
      await sql<{ task_id: string }>`
        SELECT task_id FROM task_current
         WHERE state = 'running' AND ${kind} AND ${LEASE_BASE_MS} <= ${NOW_MS} - ${allowanceMs}::float8
         ORDER BY ${LEASE_BASE_MS}
         LIMIT ${limit}
           FOR UPDATE SKIP LOCKED`.execute(trx)
    ).rows;
  const ids = [...lost.rows, ...(await expired(WITHOUT_TIMEOUT, lease.leaseMs)), ...(await expired(WITH_TIMEOUT, lease.graceMs))].map((r) => r.task_id);
  return [...new Set(ids)];
}

/**
 * The locked candidates as they are now (a fresh statement sees every commit before our locks),
 * with their start and their node's last loss from the log.
 */
async function readCandidates(trx: Executor, ids: readonly string[]): Promise<RunningAttemptRow[]> {
  const result = await sql<RunningAttemptRow>`
    SELECT t.task_id, t.attempt, t.node_id, t.started_at, coalesce(t.reported_at, t.started_at) AS reported_at, (t.spec->>'timeoutMs')::float8 AS timeout_ms,
           st.position AS started_position, st.recorded_at AS started_recorded_at,
           lost.position AS lost_position, lost.recorded_at AS lost_recorded_at, lost.data->>'reason' AS lost_reason,
           now() AS now
      FROM task_current t
      CROSS JOIN LATERAL (
        SELECT s.position, s.recorded_at FROM events s
         WHERE s.stream_id = t.task_id::text AND s.type IN ('TaskStarted', 'TaskProgressed')
         ORDER BY s.stream_version DESC LIMIT 1) st
      LEFT JOIN LATERAL (
        SELECT e.position, e.recorded_at, e.data FROM events e
         WHERE e.stream_id = 'node:' || t.node_id AND e.type = 'FogNodeLost'
         ORDER BY e.position DESC LIMIT 1) lost ON true
     WHERE t.task_id = ANY(${ids}::uuid[]) AND t.state = 'running' AND t.node_id IS NOT NULL`.execute(trx);
  return result.rows;
}

/** Why this running attempt must be given up, or null while it still holds its lease. */
export function leaseVerdict(c: RunningAttemptRow, lease: RunningLease): { code: LeaseFailureCode; message: string } | null {
  // Log order, not clocks: the loss was recorded after the start was (positions only grow).
  const now = c.now.getTime();
  if (c.lost_position !== null && c.lost_position > c.started_position && c.lost_recorded_at && now - c.lost_recorded_at.getTime() >= lease.graceMs) {
    return {
      code: 'node-lost',
      message: `fog node ${c.node_id} was lost (${c.lost_reason ?? 'unknown reason'}, recorded ${c.lost_recorded_at?.toISOString()}) while it ran attempt ${c.attempt}`,
    };
  }
  const allowanceMs = c.timeout_ms === null ? lease.leaseMs : c.timeout_ms + lease.graceMs;
  // Both clocks must agree the lease ran out: the node's time of its last report (a node's clock
  // running behind would end it early) and when the database recorded it (a report written late,
  // after an ingest backlog, would end it before its result could arrive). A report is the start
  // or a progress report (TaskProgressed): a run that reports is alive.
  const reportedAt = c.reported_at ?? c.started_at;
  if (now - reportedAt.getTime() < allowanceMs || now - c.started_recorded_at.getTime() < allowanceMs) return null;
  const why = c.timeout_ms === null ? 'RUNNING_LEASE_MS' : `timeoutMs ${c.timeout_ms} + RUNNING_LEASE_GRACE_MS`;
  return {
    code: 'lease-expired',
    message: `no result from fog node ${c.node_id} for attempt ${c.attempt} within ${allowanceMs} ms (${why}) of its last report at ${reportedAt.toISOString()} (started ${c.started_at.toISOString()})`,
  };
}

/**
 * Gives up the running attempts whose node was lost or whose lease ran out, through `FailTask`
 * with a retryable error (`node-lost`, `lease-expired`): the attempt is retried with backoff, or
 * the task fails `max-attempts` when its budget is used up. Once per attempt even with several
 * replicas: rows are locked with SKIP LOCKED and decide ignores a second failure of an attempt
 * (as it ignores a result that arrives later). Returns how many attempts it gave up.
 */
export async function expireRunningLeases(options: LeaseSweepOptions): Promise<number> {
  const limit = options.limit ?? 500;
  const random = options.random ?? Math.random;
  return countedTransaction(options.db, async (trx) => {
    const ids = await lockCandidates(trx, options.lease, limit);
    if (ids.length === 0) return 0;
    const items = (await readCandidates(trx, ids)).flatMap((c) => {
      const verdict = leaseVerdict(c, options.lease);
      if (!verdict) return [];
      options.logger.warn({ taskId: c.task_id, task_id: c.task_id, attempt: c.attempt, nodeId: c.node_id, code: verdict.code }, 'running task given up');
      const command: TaskCommand = {
        type: 'FailTask',
        data: {
          attempt: c.attempt,
          nodeId: c.node_id,
          error: { code: verdict.code, retryable: true, message: verdict.message },
          startedAt: c.started_at.toISOString(),
          backoff: options.backoff,
          random: random(),
          now: c.now.toISOString(),
        },
      };
      return [{ taskId: c.task_id, command, metadata: { actor: 'scheduler' } }];
    });
    if (items.length === 0) return 0;
    await executeTaskCommands(trx, items, options.names);
    return items.length;
  });
}

/** Milliseconds until the next running lease runs out by its start time (null: none running). */
export async function nextLeaseExpiryMs(db: Executor, lease: RunningLease): Promise<number | null> {
  // Only leases still ahead: one past by the start time but not yet by the recorded start (see
  // leaseVerdict) is looked at again each poll instead of waking the loop at once, over and over.
  const next = (kind: typeof WITH_TIMEOUT, allowanceMs: number) => sql`
    (SELECT min(${LEASE_BASE_MS}) + ${allowanceMs}::float8 FROM task_current
      WHERE state = 'running' AND ${kind} AND ${LEASE_BASE_MS} > ${NOW_MS} - ${allowanceMs}::float8)`;
  const r = await sql<{ ms: number | null }>`
    SELECT least(${next(WITHOUT_TIMEOUT, lease.leaseMs)}, ${next(WITH_TIMEOUT, lease.graceMs)}) - ${NOW_MS} AS ms`.execute(db);
  return r.rows[0]?.ms ?? null;
}

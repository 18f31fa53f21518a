import { sql } from 'kysely';
import type { Executor } from '../store/index.js';

/**
 * What the dashboard's overview shows for one tenant, over a window of at most 24 h. Each part
 * is one statement with a bounded cost:
 * - buckets: events recorded in the window (`events_recorded_at_idx`, BRIN on recorded_at), each
 *   joined to its task's task_current row by primary key for the tenant;
 * - tiers: TaskSucceeded (run time: its durationMs) and TaskStarted (queue wait: from the
 *   attempt's latest dispatch, found through `events_stream_version_key`) in the window;
 * - depth: queued tasks of the tenant (`task_current_state_idx` on tenant, state);
 * - outbox: the due, unpublished rows (`outbox_due_idx`, partial on published_at IS NULL) of the
 *   tenant's tasks.
 */
export interface DashboardStats {
  readonly windowSeconds: number;
  readonly bucketSeconds: number;
  readonly buckets: { at: string; submitted: number; succeeded: number; failed: number; cancelled: number; deadLettered: number }[];
  readonly tiers: { tier: string; queueWaitP50Ms: number | null; queueWaitP95Ms: number | null; runP50Ms: number | null; runP95Ms: number | null }[];
  readonly depth: { tier: string; priority: string; queued: number }[];
  readonly outbox: { pending: number; lagSeconds: number };
}

export const STATS_LIMITS = Object.freeze({ maxWindowSeconds: 86_400, minBucketSeconds: 10, maxBuckets: 1440 });

/** The task a task event belongs to, by task_current's primary key; NULL (no join) for other streams. */
const TASK_KEY = sql`CASE WHEN e.stream_type = 'task' THEN e.stream_id::uuid END`;

export async function readDashboardStats(db: Executor, tenant: string, windowSeconds: number, bucketSeconds: number): Promise<DashboardStats> {
  const [buckets, tiers, depth, outbox] = await Promise.all([
    sql<{ at: Date; submitted: number; succeeded: number; failed: number; cancelled: number; dead_lettered: number }>`
      WITH bounds AS (
        SELECT to_timestamp(floor(extract(epoch FROM now()) / ${bucketSeconds}) * ${bucketSeconds}) AS last_bucket
      ), series AS (
        SELECT generate_series(last_bucket - make_interval(secs => ${windowSeconds - bucketSeconds}), last_bucket, make_interval(secs => ${bucketSeconds})) AS at FROM bounds
      ), counted AS (
        SELECT to_timestamp(floor(extract(epoch FROM e.recorded_at) / ${bucketSeconds}) * ${bucketSeconds}) AS at, e.type, count(*)::int AS n
          FROM events e
          JOIN task_current c ON c.task_id = ${TASK_KEY}
         WHERE e.recorded_at >= (SELECT min(at) FROM series)
           AND e.type IN ('TaskSubmitted', 'TaskSucceeded', 'TaskFailed', 'TaskCancelled', 'TaskDeadLettered')
           AND c.tenant = ${tenant}
         GROUP BY 1, 2
      )
      SELECT s.at,
             coalesce(sum(n) FILTER (WHERE type = 'TaskSubmitted'), 0)::int AS submitted,
             coalesce(sum(n) FILTER (WHERE type = 'TaskSucceeded'), 0)::int AS succeeded,
             coalesce(sum(n) FILTER (WHERE type = 'TaskFailed'), 0)::int AS failed,
             coalesce(sum(n) FILTER (WHERE type = 'TaskCancelled'), 0)::int AS cancelled,
             coalesce(sum(n) FILTER (WHERE type = 'TaskDeadLettered'), 0)::int AS dead_lettered
        FROM series s LEFT JOIN counted c ON c.at = s.at
       GROUP BY s.at ORDER BY s.at`.execute(db),
    sql<{ tier: string; wait_p50: number | null; wait_p95: number | null; run_p50: number | null; run_p95: number | null }>`
      WITH recent AS (
        SELECT e.*, c.tier FROM events e
          JOIN task_current c ON c.task_id = ${TASK_KEY}
         WHERE e.recorded_at >= now() - make_interval(secs => ${windowSeconds})
           AND e.type IN ('TaskStarted', 'TaskSucceeded')
           AND c.tenant = ${tenant}
      ), waits AS (
        SELECT r.tier, extract(epoch FROM r.recorded_at - greatest(d.recorded_at, coalesce((d.data->>'availableAt')::timestamptz, d.recorded_at))) * 1000 AS ms
          FROM recent r
          CROSS JOIN LATERAL (
            SELECT q.recorded_at, q.data FROM events q
             WHERE q.stream_id = r.stream_id AND q.stream_version < r.stream_version
               AND (q.type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskReturned') OR (q.type = 'TaskSubmitted' AND q.data ? 'availableAt'))
             ORDER BY q.stream_version DESC LIMIT 1) d
         WHERE r.type = 'TaskStarted'
      ), runs AS (
        SELECT tier, (data->>'durationMs')::float8 AS ms FROM recent WHERE type = 'TaskSucceeded'
      ), tiers AS (SELECT tier FROM waits UNION SELECT tier FROM runs)
      SELECT t.tier,
             (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM waits w WHERE w.tier = t.tier) AS wait_p50,
             (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) FROM waits w WHERE w.tier = t.tier) AS wait_p95,
             (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM runs r WHERE r.tier = t.tier) AS run_p50,
             (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) FROM runs r WHERE r.tier = t.tier) AS run_p95
        FROM tiers t ORDER BY t.tier`.execute(db),
    db
      .selectFrom('task_current')
      .select(['tier', 'priority', sql<number>`count(*)::int`.as('queued')])
      .where('tenant', '=', tenant)
      .where('state', '=', 'queued')
      .groupBy(['tier', 'priority'])
      .orderBy('tier')
      .orderBy('priority')
      .execute(),
    sql<{ pending: number; lag_seconds: number | null }>`
      SELECT count(*)::int AS pending, extract(epoch FROM now() - min(o.available_at))::float8 AS lag_seconds
        FROM outbox o
        JOIN task_current c ON c.task_id = CASE WHEN o.stream_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN o.stream_id::uuid END
       WHERE o.published_at IS NULL AND o.available_at <= now() AND c.tenant = ${tenant}`.execute(db),
  ]);
  const round = (v: number | null) => (v === null ? null : Math.round(Number(v) * 10) / 10);
  const o = outbox.rows[0];
  return {
    windowSeconds,
    bucketSeconds,
    buckets: buckets.rows.map((r) => ({ at: new Date(r.at).toISOString(), submitted: r.submitted, succeeded: r.succeeded, failed: r.failed, cancelled: r.cancelled, deadLettered: r.dead_lettered })),
    tiers: tiers.rows.map((r) => ({ tier: r.tier, queueWaitP50Ms: round(r.wait_p50), queueWaitP95Ms: round(r.wait_p95), runP50Ms: round(r.run_p50), runP95Ms: round(r.run_p95) })),
    depth: depth.map((r) => ({ tier: r.tier, priority: r.priority, queued: r.queued })),
    outbox: { pending: o?.pending ?? 0, lagSeconds: Math.max(0, Math.round((o?.lag_seconds ?? 0) * 10) / 10) },
  };
}

import { sql, type RawBuilder } from 'kysely';

/**
 * The questions of docs/audit.md, runnable over HTTP (GET /v1/audit/queries/:name) with their
 * parameters. Each is the SQL of the document with one change: it is filtered to the caller's
 * tenant (the `tenant` column of the task views). The two questions about fog nodes only
 * (node_membership has no tenant) are for operators; question 8 also filters its task side.
 */
export type AuditParamType = 'string' | 'uuid' | 'timestamp' | 'integer';

export interface AuditParam {
  readonly name: string;
  readonly type: AuditParamType;
  readonly required: boolean;
}

export interface AuditQuery {
  readonly name: string;
  readonly title: string;
  readonly description: string;
  readonly params: readonly AuditParam[];
  /** Reads data of every tenant (fog nodes): operators only. */
  readonly operatorOnly: boolean;
  readonly sql: (p: Readonly<Record<string, string>>, tenant: string) => RawBuilder<Record<string, unknown>>;
}

const taskId: AuditParam = { name: 'task_id', type: 'uuid', required: true };
const nodeId: AuditParam = { name: 'node_id', type: 'string', required: true };

export const AUDIT_QUERIES: readonly AuditQuery[] = [
  {
    name: 'task-timeline',
    title: 'What happened to task X, in order?',
    description: 'Every event of the task with its state, node, actor, reason and error.',
    params: [taskId],
    operatorOnly: false,
    sql: (p, tenant) => sql`
      SELECT version, at, event_type, attempt, state, node_id, actor, reason, error_message, trace_id
        FROM audit.task_timeline
       WHERE task_id = ${p.task_id} AND tenant = ${tenant}
       ORDER BY version`,
  },
  {
    name: 'task-attempts',
    title: 'How did each attempt of task X go: where it ran, how long it waited and ran, why it failed?',
    description: 'One row per attempt.',
    params: [taskId],
    operatorOnly: false,
    sql: (p, tenant) => sql`
      SELECT attempt, queued_by_event, node_id, outcome, queue_wait, run_time, error_code, error_message
        FROM audit.task_attempts
       WHERE task_id = ${p.task_id} AND tenant = ${tenant}
       ORDER BY attempt`,
  },
  {
    name: 'failed-last-24h',
    title: 'Which tasks failed in the last 24 hours, and why?',
    description: '`state_now` tells whether someone has requeued the task since.',
    params: [],
    operatorOnly: false,
    sql: (_p, tenant) => sql`
      SELECT f.task_id, f.task_type, f.at AS failed_at, f.kind, f.reason, f.last_error_message, t.state AS state_now
        FROM audit.task_failures f
        JOIN audit.tasks t ON t.task_id = f.task_id
       WHERE f.is_final
         AND f.at >= now() - interval '24 hours'
         AND f.tenant = ${tenant}
       ORDER BY f.at`,
  },
  {
    name: 'retried-more-than-once',
    title: 'Which tasks were retried more than once?',
    description: 'Retries per task, newest retry, and the state now.',
    params: [],
    operatorOnly: false,
    sql: (_p, tenant) => sql`
      SELECT f.task_id, f.task_type, count(*) AS retries, max(f.at) AS last_retry_at, t.state AS state_now
        FROM audit.task_failures f
        JOIN audit.tasks t ON t.task_id = f.task_id
       WHERE f.kind = 'retry_scheduled' AND f.tenant = ${tenant}
       GROUP BY f.task_id, f.task_type, t.state
      HAVING count(*) > 1
       ORDER BY retries DESC, f.task_id`,
  },
  {
    name: 'cancellations',
    title: 'Who cancelled what, and when?',
    description: 'Every cancel with its actor, reason and the state it ended.',
    params: [],
    operatorOnly: false,
    sql: (_p, tenant) => sql`
      SELECT task_id, task_type, cancelled_by, cancelled_at, reason, state_before, running_on, cancelled_after
        FROM audit.task_cancellations
       WHERE tenant = ${tenant}
       ORDER BY cancelled_at`,
  },
  {
    name: 'requeues',
    title: 'Which tasks were requeued after failing, and by whom?',
    description: 'Every TaskRequeued with its actor and the attempt it started.',
    params: [],
    operatorOnly: false,
    sql: (_p, tenant) => sql`
      SELECT task_id, task_type, at AS requeued_at, actor AS requeued_by, attempt AS new_attempt, state_before
        FROM audit.task_timeline
       WHERE event_type = 'TaskRequeued' AND tenant = ${tenant}
       ORDER BY at`,
  },
  {
    name: 'node-tasks-between',
    title: 'Which tasks ran on node N between two times?',
    description: 'A run counts when it overlapped the window (a run still going counts up to now).',
    params: [nodeId, { name: 'since', type: 'timestamp', required: true }, { name: 'until', type: 'timestamp', required: true }],
    operatorOnly: false,
    sql: (p, tenant) => sql`
      SELECT task_id, task_type, attempt, started_at, finished_at, outcome
        FROM audit.node_activity
       WHERE node_id = ${p.node_id}
         AND started_at < ${p.until}::timestamptz
         AND coalesce(finished_at, now()) > ${p.since}::timestamptz
         AND tenant = ${tenant}
       ORDER BY started_at`,
  },
  {
    name: 'node-lost-in-flight',
    title: 'Which attempts were running on node N when it was lost, and what became of them?',
    description: "Runs the log shows under way at the loss, next to what the coordinator saw in the node's last heartbeat. Operators only (node membership is not a tenant's).",
    params: [nodeId],
    operatorOnly: true,
    sql: (p, tenant) => sql`
      SELECT m.at AS lost_at, m.reason, a.task_id, a.attempt, a.started_at, a.outcome, a.finished_at,
             a.task_id = ANY (m.in_flight_task_ids) AS reported_in_flight
        FROM audit.node_membership m
        JOIN audit.node_activity a
          ON a.node_id = m.node_id
         AND a.started_at <= m.at
         AND (a.finished_at IS NULL OR a.finished_at > m.at)
       WHERE m.kind = 'lost'
         AND m.node_id = ${p.node_id}
         AND a.tenant = ${tenant}
       ORDER BY m.at, a.started_at`,
  },
  {
    name: 'nodes-lost',
    title: 'Which fog nodes were lost, how long had they been up, and with how much work in flight?',
    description: 'Operators only (node membership is not a tenant\'s).',
    params: [],
    operatorOnly: true,
    sql: () => sql`
      SELECT node_id, tier, joined_at, at AS lost_at, at - joined_at AS up_for, reason, last_seen,
             cardinality(in_flight_task_ids) AS in_flight
        FROM audit.node_membership
       WHERE kind = 'lost'
       ORDER BY at`,
  },
  {
    name: 'p95-by-type-7d',
    title: 'What were the 95th percentile queue wait and run time per task type over the last 7 days?',
    description: 'In seconds, over the attempts that started in that time.',
    params: [],
    operatorOnly: false,
    sql: (_p, tenant) => sql`
      SELECT task_type,
             count(*) AS attempts,
             round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM queue_wait))::numeric, 2) AS p95_queue_wait_s,
             round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM run_time))::numeric, 2) AS p95_run_time_s
        FROM audit.task_attempts
       WHERE started_at >= now() - interval '7 days' AND tenant = ${tenant}
       GROUP BY task_type
       ORDER BY task_type`,
  },
  {
    name: 'slowest-finished-7d',
    title: 'Which tasks that finished in the last 7 days took longest from submit to end, and where did the time go?',
    description: 'The `limit` slowest (default 3).',
    params: [{ name: 'limit', type: 'integer', required: false }],
    operatorOnly: false,
    sql: (p, tenant) => sql`
      SELECT task_id, task_type, state, total_time, first_queue_wait, total_run_time, attempts
        FROM audit.task_durations
       WHERE finished_at >= now() - interval '7 days' AND tenant = ${tenant}
       ORDER BY total_time DESC
       LIMIT ${Number(p.limit ?? 3)}`,
  },
  {
    name: 'open-over-an-hour',
    title: 'Which tasks are still open more than an hour after they were submitted?',
    description: 'Tasks with no terminal event since their last (re)queue.',
    params: [],
    operatorOnly: false,
    sql: (_p, tenant) => sql`
      SELECT task_id, task_type, state, attempt, submitted_at, age, last_event_type, idle_for, requeues
        FROM audit.open_tasks
       WHERE submitted_at < now() - interval '1 hour' AND tenant = ${tenant}
       ORDER BY submitted_at`,
  },
  {
    name: 'trace-writes',
    title: 'What did the API request with trace id R write to the log?',
    description: "The trace id is the request's W3C trace id: `traceId` in a task's history, `trace_id` on the API's log lines.",
    params: [{ name: 'trace_id', type: 'string', required: true }],
    operatorOnly: false,
    sql: (p, tenant) => sql`
      SELECT position, task_id, event_type, at, actor
        FROM audit.task_timeline
       WHERE trace_id = ${p.trace_id} AND tenant = ${tenant}
       ORDER BY position`,
  },
  {
    name: 'capacity-changes',
    title: 'Why did the fog-node capacity of a tier change between two times?',
    description: "Each autoscaler decision (FogTierScaled): replicas before and after, its trigger and what it measured. Operators only (capacity is not a tenant's).",
    params: [{ name: 'since', type: 'timestamp', required: true }, { name: 'until', type: 'timestamp', required: true }],
    operatorOnly: true,
    sql: (p) => sql`
      SELECT tier, at, replicas_from, replicas_to, trigger, queue_depth, queued, running, oldest_wait, recorded_by
        FROM audit.capacity_changes
       WHERE at >= ${p.since}::timestamptz
         AND at < ${p.until}::timestamptz
       ORDER BY position`,
  },
];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Checks the query string against the question's parameters; returns each problem as {path, message}. */
export function checkAuditParams(query: AuditQuery, given: Readonly<Record<string, unknown>>): { path: string; message: string }[] {
  const errors: { path: string; message: string }[] = [];
  const known = new Set(query.params.map((p) => p.name));
  for (const name of Object.keys(given)) if (!known.has(name)) errors.push({ path: `querystring/${name}`, message: 'is not a parameter of this query' });
  for (const p of query.params) {
    const value = given[p.name];
    if (value === undefined) {
      if (p.required) errors.push({ path: `querystring/${p.name}`, message: 'is required' });
      continue;
    }
    if (typeof value !== 'string' || value.length === 0 || value.length > 200) {
      errors.push({ path: `querystring/${p.name}`, message: 'must be one value of 1 to 200 characters' });
      continue;
    }
    const bad =
      p.type === 'uuid' ? !UUID.test(value)
      : p.type === 'timestamp' ? !isTimestamp(value)
      : p.type === 'integer' ? !/^[0-9]{1,4}$/.test(value) || Number(value) < 1 || Number(value) > 1000
      : false;
    if (bad) errors.push({ path: `querystring/${p.name}`, message: `must be ${p.type === 'uuid' ? 'a UUID' : p.type === 'timestamp' ? 'an ISO 8601 time' : p.type === 'integer' ? 'a whole number from 1 to 1000' : 'text'}` });
  }
  return errors;
}

/**
 * An ISO 8601 time PostgreSQL will take as it is: the shape, a real calendar date (Date.parse
 * rolls 2020-02-30 over into March, PostgreSQL refuses it), hours to 23 and minutes and
 * seconds to 59, between 1970 and 9999.
 */
function isTimestamp(value: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$/.exec(value);
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map((x) => Number(x ?? 0)) as [number, number, number, number, number, number];
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59) return false;
  if (day > new Date(Date.UTC(year, month, 0)).getUTCDate()) return false;
  const at = Date.parse(value.replace(' ', 'T'));
  return !Number.isNaN(at) && at >= 0 && at <= Date.parse('9999-12-31T23:59:59Z');
}

-- Up Migration

-- The auditor's window on the log: views in schema `audit`, documented in docs/audit.md.
--
-- Every view reads `events` and nothing else. The read models (task_current, task_history)
-- are the application's own conclusions, and a projection rebuild swaps them by renaming
-- shadow tables: a view bound to them would block the swap or follow the old table. So the
-- views fold the log themselves, with jsonb operators and window functions, and an auditor
-- checks the application instead of trusting it.
--
-- Old event shapes are read the way the upcasters in src/domain/event-versions.ts read them,
-- going by the shape of the data (not schema_version, which older writers left at 1):
-- TaskSubmitted v1 had `resources.memory` (MB); TaskAttemptFailed v1 had `error` as the
-- message string with `retryable` beside it (code 'handler_error', or 'non_retryable' when
-- retryable was false).
--
-- Views run with their owner's rights (no security_invoker): the role fogsched_auditor needs
-- SELECT on them and on events, nothing on the tables underneath.

CREATE SCHEMA audit;
COMMENT ON SCHEMA audit IS
  'Read-only audit views over the event log (public.events only); see docs/audit.md. Role fogsched_auditor may read these views and events, nothing else.';

-- One row per event of every task stream, with the state the task was left in.
CREATE VIEW audit.task_timeline AS
WITH task_events AS (
  SELECT e.position, e.stream_id, e.stream_version, e.type, e.schema_version, e.data, e.metadata, e.recorded_at,
         (e.data->>'at')::timestamptz AS at,
         (e.data->>'attempt')::integer AS event_attempt,
         -- The state each event moves the task to (evolve in src/domain/task.ts); NULL: unchanged.
         CASE e.type
           WHEN 'TaskSubmitted' THEN 'submitted'
           WHEN 'TaskQueued' THEN
             CASE WHEN (e.data->>'availableAt')::timestamptz > (e.data->>'at')::timestamptz THEN 'scheduled' ELSE 'queued' END
           WHEN 'TaskStarted' THEN 'running'
           WHEN 'TaskSucceeded' THEN 'succeeded'
           WHEN 'TaskRetryScheduled' THEN 'retrying'
           WHEN 'TaskFailed' THEN 'failed'
           WHEN 'TaskDeadLettered' THEN 'failed'
           WHEN 'TaskCancelled' THEN 'cancelled'
           WHEN 'TaskRequeued' THEN 'queued'
         END AS state_set
    FROM public.events e
   WHERE e.stream_type = 'task'
), carried AS (
  -- Every window partitions by stream_id, so `WHERE task_id = ...` on the view is pushed
  -- down to the (stream_id, stream_version) index instead of folding the whole log.
  SELECT te.*,
         count(te.state_set) OVER w AS state_run,
         max(te.event_attempt) OVER w AS attempt_so_far,
         first_value(te.data #>> '{task,tenant}') OVER w AS task_tenant,
         first_value(te.data #>> '{task,type}') OVER w AS task_type
    FROM task_events te
  WINDOW w AS (PARTITION BY te.stream_id ORDER BY te.stream_version)
), stated AS (
  -- Carries the last state forward over events that leave it as it is (TaskAttemptFailed).
  SELECT c.*, first_value(c.state_set) OVER (PARTITION BY c.stream_id, c.state_run ORDER BY c.stream_version) AS state
    FROM carried c
)
SELECT s.position,
       s.stream_id AS task_id,
       s.stream_version AS version,
       s.type AS event_type,
       s.schema_version,
       s.at,
       s.recorded_at,
       COALESCE(s.event_attempt, s.attempt_so_far, 0) AS attempt,
       s.state,
       lag(s.state) OVER (PARTITION BY s.stream_id ORDER BY s.stream_version) AS state_before,
       s.data->>'nodeId' AS node_id,
       COALESCE(s.data->>'actor', s.metadata->>'actor') AS actor,
       s.data->>'reason' AS reason,
       CASE jsonb_typeof(s.data->'error')
         WHEN 'string' THEN s.data->>'error'
         WHEN 'object' THEN s.data->'error'->>'message'
       END AS error_message,
       CASE jsonb_typeof(s.data->'error')
         WHEN 'string' THEN CASE WHEN s.data->'retryable' = 'false'::jsonb THEN 'non_retryable' ELSE 'handler_error' END
         WHEN 'object' THEN s.data->'error'->>'code'
       END AS error_code,
       CASE jsonb_typeof(s.data->'error')
         WHEN 'string' THEN s.data->'retryable' IS DISTINCT FROM 'false'::jsonb
         WHEN 'object' THEN CASE jsonb_typeof(s.data->'error'->'retryable') WHEN 'boolean' THEN (s.data->'error'->>'retryable')::boolean END
       END AS error_retryable,
       COALESCE(s.task_tenant, s.metadata->>'tenant') AS tenant,
       s.task_type,
       s.metadata->>'traceId' AS trace_id,
       s.metadata->>'correlationId' AS correlation_id,
       s.metadata->>'causationId' AS causation_id,
       s.data,
       s.metadata
  FROM stated s;

COMMENT ON VIEW audit.task_timeline IS
  'Every event of every task, in stream order, with the state it left the task in. Derived from events only.';
COMMENT ON COLUMN audit.task_timeline.position IS 'Global position in the log (events.position).';
COMMENT ON COLUMN audit.task_timeline.task_id IS 'The task (its stream id, a uuid as text).';
COMMENT ON COLUMN audit.task_timeline.version IS 'Position of the event in its task stream, from 1.';
COMMENT ON COLUMN audit.task_timeline.event_type IS 'TaskSubmitted, TaskQueued, TaskStarted, TaskSucceeded, TaskAttemptFailed, TaskRetryScheduled, TaskFailed, TaskDeadLettered, TaskCancelled or TaskRequeued.';
COMMENT ON COLUMN audit.task_timeline.schema_version IS 'Schema version the event data was stored at.';
COMMENT ON COLUMN audit.task_timeline.at IS 'When it happened (domain time, data.at).';
COMMENT ON COLUMN audit.task_timeline.recorded_at IS 'When PostgreSQL stored it.';
COMMENT ON COLUMN audit.task_timeline.attempt IS 'The attempt the event belongs to; for TaskRetryScheduled and TaskRequeued the attempt they dispatch; 0 before the first queue.';
COMMENT ON COLUMN audit.task_timeline.state IS 'State after the event: submitted, scheduled, queued, running, retrying, succeeded, failed or cancelled.';
COMMENT ON COLUMN audit.task_timeline.state_before IS 'State before the event (NULL for TaskSubmitted).';
COMMENT ON COLUMN audit.task_timeline.node_id IS 'Fog node of TaskStarted, TaskSucceeded and TaskAttemptFailed.';
COMMENT ON COLUMN audit.task_timeline.actor IS 'Who: data.actor (cancel, requeue) or else metadata.actor (api caller, node:<id>, broker, scheduler).';
COMMENT ON COLUMN audit.task_timeline.reason IS 'Failure reason (TaskFailed, TaskDeadLettered) or cancel reason (TaskCancelled).';
COMMENT ON COLUMN audit.task_timeline.error_message IS 'Error message (TaskAttemptFailed, TaskFailed); v1 string errors included.';
COMMENT ON COLUMN audit.task_timeline.error_code IS 'Error code; v1 string errors read as handler_error (non_retryable when marked not retryable).';
COMMENT ON COLUMN audit.task_timeline.error_retryable IS 'Whether the error allowed a retry.';
COMMENT ON COLUMN audit.task_timeline.tenant IS 'Tenant of the task (from TaskSubmitted).';
COMMENT ON COLUMN audit.task_timeline.task_type IS 'Task type (from TaskSubmitted), e.g. noop, report.';
COMMENT ON COLUMN audit.task_timeline.trace_id IS 'metadata.traceId: the request id of the API call that caused the event.';
COMMENT ON COLUMN audit.task_timeline.correlation_id IS 'metadata.correlationId.';
COMMENT ON COLUMN audit.task_timeline.causation_id IS 'metadata.causationId (e.g. the schedule that fired the task).';
COMMENT ON COLUMN audit.task_timeline.data IS 'The event data as stored.';
COMMENT ON COLUMN audit.task_timeline.metadata IS 'The event metadata as stored.';

-- One row per task and attempt.
CREATE VIEW audit.task_attempts AS
WITH per_attempt AS (
  SELECT t.task_id,
         t.attempt,
         min(t.tenant) AS tenant,
         min(t.task_type) AS task_type,
         (array_agg(t.event_type ORDER BY t.version) FILTER (WHERE t.event_type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskRequeued')))[1] AS queued_by_event,
         (array_agg(t.actor ORDER BY t.version) FILTER (WHERE t.event_type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskRequeued')))[1] AS queued_by,
         min(t.at) FILTER (WHERE t.event_type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskRequeued')) AS queued_at,
         min(COALESCE((t.data->>'availableAt')::timestamptz, t.at)) FILTER (WHERE t.event_type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskRequeued')) AS available_at,
         min(t.at) FILTER (WHERE t.event_type = 'TaskStarted') AS started_at,
         max(t.at) FILTER (WHERE t.event_type = 'TaskStarted') AS last_started_at,
         count(*) FILTER (WHERE t.event_type = 'TaskStarted') AS starts,
         (array_agg(t.node_id ORDER BY t.version DESC) FILTER (WHERE t.node_id IS NOT NULL))[1] AS node_id,
         (array_agg(t.event_type ORDER BY t.version DESC) FILTER (WHERE t.event_type IN ('TaskSucceeded', 'TaskAttemptFailed', 'TaskFailed', 'TaskDeadLettered', 'TaskCancelled')))[1] AS end_event,
         (array_agg(t.at ORDER BY t.version DESC) FILTER (WHERE t.event_type IN ('TaskSucceeded', 'TaskAttemptFailed', 'TaskFailed', 'TaskDeadLettered', 'TaskCancelled')))[1] AS finished_at,
         (array_agg(t.error_message ORDER BY t.version DESC) FILTER (WHERE t.error_message IS NOT NULL))[1] AS error_message,
         (array_agg(t.error_code ORDER BY t.version DESC) FILTER (WHERE t.error_message IS NOT NULL))[1] AS error_code,
         (array_agg((t.data->>'durationMs')::bigint ORDER BY t.version DESC) FILTER (WHERE t.event_type = 'TaskSucceeded'))[1] AS reported_duration_ms
    FROM audit.task_timeline t
   WHERE t.attempt > 0
   GROUP BY t.task_id, t.attempt
)
SELECT p.task_id,
       p.attempt,
       p.tenant,
       p.task_type,
       p.queued_by_event,
       p.queued_by,
       p.queued_at,
       p.available_at,
       p.started_at,
       p.last_started_at,
       p.starts,
       p.node_id,
       CASE p.end_event
         WHEN 'TaskSucceeded' THEN 'succeeded'
         WHEN 'TaskAttemptFailed' THEN 'failed'
         WHEN 'TaskFailed' THEN 'failed'
         WHEN 'TaskDeadLettered' THEN 'dead_lettered'
         WHEN 'TaskCancelled' THEN 'cancelled'
         ELSE CASE WHEN p.started_at IS NULL THEN 'waiting' ELSE 'running' END
       END AS outcome,
       p.finished_at,
       p.started_at - p.available_at AS queue_wait,
       p.finished_at - p.started_at AS run_time,
       p.reported_duration_ms,
       p.error_message,
       p.error_code
  FROM per_attempt p;

COMMENT ON VIEW audit.task_attempts IS
  'One row per task attempt: when it was queued, became due, started and ended, where it ran, how it ended. Derived from events only.';
COMMENT ON COLUMN audit.task_attempts.attempt IS 'Attempt number, from 1; a requeue starts a new attempt.';
COMMENT ON COLUMN audit.task_attempts.queued_by_event IS 'What dispatched the attempt: TaskQueued (first), TaskRetryScheduled (retry) or TaskRequeued (requeue).';
COMMENT ON COLUMN audit.task_attempts.queued_by IS 'Actor of that event (api caller, node:<id> for a retry, the requeuing user).';
COMMENT ON COLUMN audit.task_attempts.queued_at IS 'When the attempt was dispatched.';
COMMENT ON COLUMN audit.task_attempts.available_at IS 'When it became due (after notBefore or the retry backoff).';
COMMENT ON COLUMN audit.task_attempts.started_at IS 'First start on a fog node.';
COMMENT ON COLUMN audit.task_attempts.last_started_at IS 'Last start (differs from started_at when the message was redelivered after a crash or a lost node).';
COMMENT ON COLUMN audit.task_attempts.starts IS 'Number of TaskStarted events of the attempt.';
COMMENT ON COLUMN audit.task_attempts.node_id IS 'Fog node of the last start or of the result.';
COMMENT ON COLUMN audit.task_attempts.outcome IS 'succeeded, failed, dead_lettered, cancelled; running (started, no result yet) or waiting (not started).';
COMMENT ON COLUMN audit.task_attempts.finished_at IS 'When the attempt ended (result, dead letter or cancel).';
COMMENT ON COLUMN audit.task_attempts.queue_wait IS 'started_at - available_at: time spent due in the queue (negative values mean clock skew between core and node).';
COMMENT ON COLUMN audit.task_attempts.run_time IS 'finished_at - started_at, from the first start (includes redeliveries).';
COMMENT ON COLUMN audit.task_attempts.reported_duration_ms IS 'Handler duration the fog node reported (TaskSucceeded.durationMs).';
COMMENT ON COLUMN audit.task_attempts.error_message IS 'Error of the attempt, if it failed.';
COMMENT ON COLUMN audit.task_attempts.error_code IS 'Error code of the attempt, if it failed.';

-- One row per task: what it asked for and where it stands, according to the log.
CREATE VIEW audit.tasks AS
WITH per_task AS (
  SELECT t.task_id,
         min(t.tenant) AS tenant,
         min(t.task_type) AS task_type,
         (array_agg(t.data->'task' ORDER BY t.version) FILTER (WHERE t.event_type = 'TaskSubmitted'))[1] AS spec,
         min(t.at) FILTER (WHERE t.event_type = 'TaskSubmitted') AS submitted_at,
         (array_agg(t.actor ORDER BY t.version) FILTER (WHERE t.event_type = 'TaskSubmitted'))[1] AS submitted_by,
         (array_agg(t.trace_id ORDER BY t.version) FILTER (WHERE t.event_type = 'TaskSubmitted'))[1] AS trace_id,
         (array_agg(t.state ORDER BY t.version DESC))[1] AS state,
         max(t.attempt) AS attempt,
         max(t.version) AS events,
         (array_agg(t.event_type ORDER BY t.version DESC))[1] AS last_event_type,
         (array_agg(t.at ORDER BY t.version DESC))[1] AS last_event_at,
         (array_agg(t.at ORDER BY t.version DESC) FILTER (WHERE t.event_type IN ('TaskSucceeded', 'TaskFailed', 'TaskDeadLettered', 'TaskCancelled')))[1] AS last_terminal_at,
         (array_agg(t.reason ORDER BY t.version DESC) FILTER (WHERE t.event_type IN ('TaskFailed', 'TaskDeadLettered')))[1] AS last_failure_reason,
         (array_agg(t.node_id ORDER BY t.version DESC) FILTER (WHERE t.node_id IS NOT NULL))[1] AS last_node_id,
         (array_agg(t.error_message ORDER BY t.version DESC) FILTER (WHERE t.error_message IS NOT NULL))[1] AS last_error_message,
         count(*) FILTER (WHERE t.event_type = 'TaskRetryScheduled') AS retries,
         count(*) FILTER (WHERE t.event_type = 'TaskRequeued') AS requeues
    FROM audit.task_timeline t
   GROUP BY t.task_id
)
SELECT p.task_id,
       p.tenant,
       p.task_type,
       p.spec->>'tier' AS tier,
       p.spec->>'priority' AS priority,
       (p.spec->>'maxAttempts')::integer AS max_attempts,
       (p.spec->'resources'->>'cpu')::numeric AS cpu,
       COALESCE(p.spec->'resources'->>'memoryMb', p.spec->'resources'->>'memory')::numeric AS memory_mb,
       (p.spec->>'timeoutMs')::bigint AS timeout_ms,
       (p.spec->>'notBefore')::timestamptz AS not_before,
       (p.spec->>'deadline')::timestamptz AS deadline,
       p.spec->>'idempotencyKey' AS idempotency_key,
       p.submitted_at,
       p.submitted_by,
       p.trace_id,
       p.state,
       p.attempt,
       CASE WHEN p.state IN ('succeeded', 'failed', 'cancelled') THEN p.last_terminal_at END AS finished_at,
       CASE WHEN p.state = 'failed' THEN p.last_failure_reason END AS failure_reason,
       p.last_error_message,
       p.last_node_id,
       p.retries,
       p.requeues,
       p.events,
       p.last_event_type,
       p.last_event_at
  FROM per_task p;

COMMENT ON VIEW audit.tasks IS
  'One row per task: its spec and its state according to the log (the last lifecycle event decides). Derived from events only, not from task_current.';
COMMENT ON COLUMN audit.tasks.memory_mb IS 'Requested memory in MB (resources.memoryMb; v1 resources.memory).';
COMMENT ON COLUMN audit.tasks.submitted_by IS 'Actor of TaskSubmitted (api caller or schedule:<id>).';
COMMENT ON COLUMN audit.tasks.trace_id IS 'Request id of the submit call.';
COMMENT ON COLUMN audit.tasks.state IS 'State after the last event; a requeue after failed makes the task queued (open) again.';
COMMENT ON COLUMN audit.tasks.attempt IS 'Current (highest) attempt.';
COMMENT ON COLUMN audit.tasks.finished_at IS 'Time of the terminal event while the task is terminal (succeeded, failed, cancelled); NULL while open.';
COMMENT ON COLUMN audit.tasks.failure_reason IS 'max-attempts, non-retryable, delivery-limit, rejected, expired or timeout, while the task is failed.';
COMMENT ON COLUMN audit.tasks.last_error_message IS 'Latest error message of any attempt.';
COMMENT ON COLUMN audit.tasks.last_node_id IS 'Fog node of the latest start or result.';
COMMENT ON COLUMN audit.tasks.retries IS 'Number of TaskRetryScheduled events.';
COMMENT ON COLUMN audit.tasks.requeues IS 'Number of TaskRequeued events.';
COMMENT ON COLUMN audit.tasks.events IS 'Number of events in the task stream.';

-- One row per task: where its time went.
CREATE VIEW audit.task_durations AS
SELECT t.task_id,
       t.tenant,
       t.task_type,
       t.tier,
       t.priority,
       t.state,
       t.submitted_at,
       a.first_started_at,
       t.finished_at,
       a.attempts,
       a.runs,
       a.first_queue_wait,
       a.total_queue_wait,
       a.total_run_time,
       a.first_started_at - t.submitted_at AS time_to_first_start,
       t.finished_at - t.submitted_at AS total_time
  FROM audit.tasks t
  LEFT JOIN (
    SELECT ta.task_id,
           count(*) AS attempts,
           count(ta.started_at) AS runs,
           min(ta.started_at) AS first_started_at,
           (array_agg(ta.queue_wait ORDER BY ta.attempt))[1] AS first_queue_wait,
           sum(ta.queue_wait) AS total_queue_wait,
           sum(ta.run_time) AS total_run_time
      FROM audit.task_attempts ta
     GROUP BY ta.task_id
  ) a ON a.task_id = t.task_id;

COMMENT ON VIEW audit.task_durations IS
  'One row per task: queue wait, run time and submit-to-end time over all its attempts. Derived from events only.';
COMMENT ON COLUMN audit.task_durations.state IS 'Current state (see audit.tasks.state).';
COMMENT ON COLUMN audit.task_durations.first_started_at IS 'First start of any attempt.';
COMMENT ON COLUMN audit.task_durations.finished_at IS 'Time of the terminal event; NULL while open.';
COMMENT ON COLUMN audit.task_durations.attempts IS 'Attempts dispatched (first queue, retries, requeues).';
COMMENT ON COLUMN audit.task_durations.runs IS 'Attempts that started on a fog node.';
COMMENT ON COLUMN audit.task_durations.first_queue_wait IS 'Queue wait of the first attempt (start - due time).';
COMMENT ON COLUMN audit.task_durations.total_queue_wait IS 'Sum of the queue waits of all attempts that started.';
COMMENT ON COLUMN audit.task_durations.total_run_time IS 'Sum of the run times of all attempts that ended after starting.';
COMMENT ON COLUMN audit.task_durations.time_to_first_start IS 'Submit to first start (includes notBefore delays).';
COMMENT ON COLUMN audit.task_durations.total_time IS 'Submit to terminal event; NULL while open.';

-- One row per failure-related event.
CREATE VIEW audit.task_failures AS
WITH f AS (
  SELECT t.*, count(t.error_message) OVER (PARTITION BY t.task_id ORDER BY t.version) AS error_run
    FROM audit.task_timeline t
   WHERE t.event_type IN ('TaskAttemptFailed', 'TaskRetryScheduled', 'TaskFailed', 'TaskDeadLettered')
)
SELECT f.position,
       f.task_id,
       f.tenant,
       f.task_type,
       f.event_type,
       CASE f.event_type
         WHEN 'TaskAttemptFailed' THEN 'attempt_failed'
         WHEN 'TaskRetryScheduled' THEN 'retry_scheduled'
         WHEN 'TaskFailed' THEN 'failed'
         WHEN 'TaskDeadLettered' THEN 'dead_lettered'
       END AS kind,
       f.event_type IN ('TaskFailed', 'TaskDeadLettered') AS is_final,
       f.at,
       f.attempt,
       f.node_id,
       f.actor,
       f.reason,
       f.error_message,
       f.error_code,
       f.error_retryable,
       first_value(f.error_message) OVER (PARTITION BY f.task_id, f.error_run ORDER BY f.version) AS last_error_message,
       first_value(f.error_code) OVER (PARTITION BY f.task_id, f.error_run ORDER BY f.version) AS last_error_code,
       (f.data->>'delayMs')::bigint AS retry_delay_ms,
       CASE WHEN f.event_type = 'TaskRetryScheduled' THEN (f.data->>'availableAt')::timestamptz END AS retry_at,
       f.data->>'queue' AS queue,
       f.trace_id
  FROM f;

COMMENT ON VIEW audit.task_failures IS
  'Attempt failures, retries scheduled and final failures (TaskFailed, TaskDeadLettered) with reason and the last error. Derived from events only.';
COMMENT ON COLUMN audit.task_failures.kind IS 'attempt_failed, retry_scheduled, failed or dead_lettered.';
COMMENT ON COLUMN audit.task_failures.is_final IS 'True for TaskFailed and TaskDeadLettered (the task ended failed; a later requeue may reopen it).';
COMMENT ON COLUMN audit.task_failures.attempt IS 'Attempt that failed; for retry_scheduled the attempt it schedules.';
COMMENT ON COLUMN audit.task_failures.reason IS 'Failure reason of final rows: max-attempts, non-retryable, delivery-limit, rejected, expired, timeout.';
COMMENT ON COLUMN audit.task_failures.error_message IS 'Error carried by this event.';
COMMENT ON COLUMN audit.task_failures.last_error_message IS 'Latest error of the task up to this event (for a dead letter, the error of an earlier attempt if any).';
COMMENT ON COLUMN audit.task_failures.last_error_code IS 'Code of last_error_message.';
COMMENT ON COLUMN audit.task_failures.retry_delay_ms IS 'Backoff of a retry_scheduled row.';
COMMENT ON COLUMN audit.task_failures.retry_at IS 'When the retry became due.';
COMMENT ON COLUMN audit.task_failures.queue IS 'Queue a dead-lettered message came from.';

-- One row per cancellation.
CREATE VIEW audit.task_cancellations AS
SELECT c.position,
       c.task_id,
       c.tenant,
       c.task_type,
       c.at AS cancelled_at,
       c.recorded_at,
       c.actor AS cancelled_by,
       c.reason,
       c.state_before,
       c.attempt,
       CASE WHEN c.state_before = 'running' THEN a.node_id END AS running_on,
       c.submitted_at,
       c.at - c.submitted_at AS cancelled_after,
       c.trace_id
  FROM (
    SELECT t.*, first_value(t.at) OVER (PARTITION BY t.task_id ORDER BY t.version) AS submitted_at
      FROM audit.task_timeline t
  ) c
  LEFT JOIN audit.task_attempts a ON a.task_id = c.task_id AND a.attempt = c.attempt
 WHERE c.event_type = 'TaskCancelled';

COMMENT ON VIEW audit.task_cancellations IS 'Who cancelled which task, when, why, and what state it was in. Derived from events only.';
COMMENT ON COLUMN audit.task_cancellations.cancelled_by IS 'The actor of TaskCancelled (the API caller).';
COMMENT ON COLUMN audit.task_cancellations.reason IS 'Reason given with the cancel, if any.';
COMMENT ON COLUMN audit.task_cancellations.state_before IS 'State the task was in: scheduled, queued, running or retrying.';
COMMENT ON COLUMN audit.task_cancellations.running_on IS 'Fog node running it, when it was running.';
COMMENT ON COLUMN audit.task_cancellations.cancelled_after IS 'Time from submit to cancel.';

-- One row per start of a task attempt on a fog node.
CREATE VIEW audit.node_activity AS
WITH runs AS (
  SELECT t.*,
         lead(t.event_type) OVER w AS next_type,
         lead(t.at) OVER w AS next_at,
         lead(t.error_message) OVER w AS next_error
    FROM audit.task_timeline t
   WHERE t.event_type IN ('TaskStarted', 'TaskSucceeded', 'TaskAttemptFailed', 'TaskDeadLettered', 'TaskCancelled')
  WINDOW w AS (PARTITION BY t.task_id, t.attempt ORDER BY t.version)
)
SELECT r.node_id,
       r.task_id,
       r.tenant,
       r.task_type,
       r.attempt,
       r.at AS started_at,
       r.next_at AS finished_at,
       r.next_at - r.at AS run_time,
       CASE r.next_type
         WHEN 'TaskSucceeded' THEN 'succeeded'
         WHEN 'TaskAttemptFailed' THEN 'failed'
         WHEN 'TaskDeadLettered' THEN 'dead_lettered'
         WHEN 'TaskCancelled' THEN 'cancelled'
         WHEN 'TaskStarted' THEN 'redelivered'
         ELSE 'running'
       END AS outcome,
       CASE WHEN r.next_type = 'TaskAttemptFailed' THEN r.next_error END AS error_message,
       r.position AS start_position
  FROM runs r
 WHERE r.event_type = 'TaskStarted';

COMMENT ON VIEW audit.node_activity IS 'Which task attempts ran on which fog node, from when to when, and how each run ended. Derived from events only.';
COMMENT ON COLUMN audit.node_activity.node_id IS 'Fog node that started the attempt.';
COMMENT ON COLUMN audit.node_activity.started_at IS 'TaskStarted time.';
COMMENT ON COLUMN audit.node_activity.finished_at IS 'Time of the next event of the attempt: its result, dead letter or cancel, or a later start elsewhere (redelivered); NULL while running.';
COMMENT ON COLUMN audit.node_activity.run_time IS 'finished_at - started_at.';
COMMENT ON COLUMN audit.node_activity.outcome IS 'succeeded, failed, dead_lettered, cancelled, redelivered (the message went to a node again: crash or lost node) or running.';
COMMENT ON COLUMN audit.node_activity.error_message IS 'Error when the run failed.';
COMMENT ON COLUMN audit.node_activity.start_position IS 'Log position of the TaskStarted event.';

-- One row per fog node membership event.
CREATE VIEW audit.node_membership AS
SELECT e.position,
       COALESCE(e.data->>'nodeId', regexp_replace(e.stream_id, '^node:', '')) AS node_id,
       e.type AS event_type,
       CASE e.type WHEN 'FogNodeJoined' THEN 'joined' WHEN 'FogNodeLost' THEN 'lost' END AS kind,
       (e.data->>'at')::timestamptz AS at,
       e.recorded_at,
       e.data->>'tier' AS tier,
       (e.data->>'slots')::integer AS slots,
       e.data->>'version' AS node_version,
       e.data->>'reason' AS reason,
       (e.data->>'lastSeen')::timestamptz AS last_seen,
       CASE WHEN jsonb_typeof(e.data->'inFlightTaskIds') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(e.data->'inFlightTaskIds')) END AS in_flight_task_ids,
       CASE WHEN e.type = 'FogNodeLost' AND lag(e.type) OVER w = 'FogNodeJoined'
            THEN (lag(e.data->>'at') OVER w)::timestamptz END AS joined_at,
       e.metadata->>'actor' AS recorded_by
  FROM public.events e
 WHERE e.stream_type = 'node'
WINDOW w AS (PARTITION BY e.stream_id ORDER BY e.stream_version);

COMMENT ON VIEW audit.node_membership IS 'Fog nodes joining and being lost, as the coordinator recorded them. Derived from events only.';
COMMENT ON COLUMN audit.node_membership.kind IS 'joined or lost.';
COMMENT ON COLUMN audit.node_membership.at IS 'When the coordinator saw the join or the loss.';
COMMENT ON COLUMN audit.node_membership.slots IS 'Task slots the node announced (joined).';
COMMENT ON COLUMN audit.node_membership.node_version IS 'fogsched version the node ran (joined).';
COMMENT ON COLUMN audit.node_membership.reason IS 'Why it was lost: heartbeat-expired or stopped.';
COMMENT ON COLUMN audit.node_membership.last_seen IS 'Its last heartbeat before the loss.';
COMMENT ON COLUMN audit.node_membership.in_flight_task_ids IS 'Tasks it was running at its last heartbeat (lost).';
COMMENT ON COLUMN audit.node_membership.joined_at IS 'For a loss: when the node had joined.';
COMMENT ON COLUMN audit.node_membership.recorded_by IS 'Coordinator instance that recorded it.';

-- Messages ingest could not use, kept in the log instead of vanishing.
CREATE VIEW audit.message_dead_letters AS
SELECT e.position,
       e.data->>'messageId' AS message_id,
       (e.data->>'at')::timestamptz AS at,
       e.recorded_at,
       e.data->>'exchange' AS exchange,
       e.data->>'routingKey' AS routing_key,
       e.data->'headers'->>'x-first-death-reason' AS death_reason,
       e.data->'headers'->>'x-first-death-queue' AS death_queue,
       e.data->>'body' AS body,
       e.metadata->>'actor' AS recorded_by
  FROM public.events e
 WHERE e.stream_type = 'message' AND e.type = 'MessageDeadLettered';

COMMENT ON VIEW audit.message_dead_letters IS 'Messages ingest could not apply (unreadable results, dead-lettered non-task messages), as recorded in the log.';
COMMENT ON COLUMN audit.message_dead_letters.death_reason IS 'x-first-death-reason from the broker, if it dead-lettered the message.';
COMMENT ON COLUMN audit.message_dead_letters.body IS 'The message body as text (first 100,000 characters).';

-- Tasks still open: no terminal event after their last (re)queue.
CREATE VIEW audit.open_tasks AS
SELECT t.task_id,
       t.tenant,
       t.task_type,
       t.tier,
       t.priority,
       t.state,
       t.attempt,
       t.submitted_at,
       now() - t.submitted_at AS age,
       t.last_event_type,
       t.last_event_at,
       now() - t.last_event_at AS idle_for,
       t.last_node_id,
       t.requeues,
       t.deadline
  FROM audit.tasks t
 WHERE COALESCE(t.state, '') NOT IN ('succeeded', 'failed', 'cancelled');

COMMENT ON VIEW audit.open_tasks IS
  'Tasks whose last lifecycle event is not terminal (no TaskSucceeded, TaskFailed, TaskDeadLettered or TaskCancelled since the last requeue). Derived from events only.';
COMMENT ON COLUMN audit.open_tasks.state IS 'submitted, scheduled, queued, running or retrying.';
COMMENT ON COLUMN audit.open_tasks.age IS 'now() - submitted_at.';
COMMENT ON COLUMN audit.open_tasks.idle_for IS 'now() - time of the last event: how long nothing has happened.';
COMMENT ON COLUMN audit.open_tasks.last_node_id IS 'Fog node of the latest start (the one running it when state is running).';
COMMENT ON COLUMN audit.open_tasks.requeues IS 'How many times it was requeued after failing.';

-- The auditor: reads the views and the log, nothing else. Roles are cluster-wide, and many
-- databases (tests, tenants) may run this migration on one server: create it once; a
-- concurrent migration of another database may win the race, which is fine. The migrating
-- user needs CREATEROLE unless a DBA created the role beforehand.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'fogsched_auditor') THEN
    BEGIN
      CREATE ROLE fogsched_auditor NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END IF;
END $$;

GRANT USAGE ON SCHEMA audit TO fogsched_auditor;
GRANT SELECT ON ALL TABLES IN SCHEMA audit TO fogsched_auditor;
-- USAGE on public is PUBLIC's by default; granted here so a database that revoked it still works.
GRANT USAGE ON SCHEMA public TO fogsched_auditor;
GRANT SELECT ON public.events TO fogsched_auditor;

-- Down Migration
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'fogsched_auditor') THEN
    REVOKE SELECT ON public.events FROM fogsched_auditor;
    REVOKE USAGE ON SCHEMA public FROM fogsched_auditor;
  END IF;
END $$;
-- The role stays: other databases on the server may still use it.
DROP SCHEMA audit CASCADE;

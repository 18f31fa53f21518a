-- Up Migration

-- Issue 15: the audit views learn TaskReturned (an attempt given back to its queue without
-- counting as one: its node stopped while running it, or the broker dead-lettered it before
-- it ever started) and what ingest sets aside instead of applying. Each changed view is
-- restated from 1700000000005_audit.sql with CREATE OR REPLACE VIEW: the same columns in the
-- same order, new ones only at the end, so the views built on them and the auditor's grants
-- stay as they are.
--
-- - task_timeline: TaskReturned leaves the task `queued` (reason node-shutdown or
--   delivery-limit; node_id the node that gave it back, if any).
-- - task_attempts: an attempt whose last run event is a TaskReturned is `waiting` again, not
--   `running`; new column `returns`.
-- - tasks: new column `returns`.
-- - node_activity: a run that ended in a TaskReturned has outcome `returned`.
-- - message_dead_letters: new columns `reason` (why ingest kept it) and `body_base64` (the
--   exact bytes of a body that is not storable text: `\u0000`, invalid UTF-8).
-- - result_records_set_aside (new): result records ingest could never write, one row each.

CREATE OR REPLACE VIEW audit.task_timeline AS
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
           WHEN 'TaskReturned' THEN 'queued'
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

COMMENT ON COLUMN audit.task_timeline.event_type IS 'TaskSubmitted, TaskQueued, TaskStarted, TaskSucceeded, TaskAttemptFailed, TaskRetryScheduled, TaskFailed, TaskDeadLettered, TaskCancelled, TaskRequeued or TaskReturned.';
COMMENT ON COLUMN audit.task_timeline.node_id IS 'Fog node of TaskStarted, TaskSucceeded and TaskAttemptFailed; of TaskReturned when a node gave the attempt back.';
COMMENT ON COLUMN audit.task_timeline.reason IS 'Failure reason (TaskFailed, TaskDeadLettered), cancel reason (TaskCancelled) or return reason (TaskReturned: node-shutdown or delivery-limit).';

CREATE OR REPLACE VIEW audit.task_attempts AS
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
         (array_agg((t.data->>'durationMs')::bigint ORDER BY t.version DESC) FILTER (WHERE t.event_type = 'TaskSucceeded'))[1] AS reported_duration_ms,
         -- A return puts the attempt back in its queue: waiting again until its next start.
         (array_agg(t.event_type ORDER BY t.version DESC) FILTER (WHERE t.event_type IN ('TaskStarted', 'TaskReturned')))[1] AS last_run_event,
         count(*) FILTER (WHERE t.event_type = 'TaskReturned') AS returns
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
         ELSE CASE WHEN p.started_at IS NULL OR p.last_run_event = 'TaskReturned' THEN 'waiting' ELSE 'running' END
       END AS outcome,
       p.finished_at,
       p.started_at - p.available_at AS queue_wait,
       p.finished_at - p.started_at AS run_time,
       p.reported_duration_ms,
       p.error_message,
       p.error_code,
       p.returns
  FROM per_attempt p;

COMMENT ON COLUMN audit.task_attempts.outcome IS 'succeeded, failed, dead_lettered, cancelled; running (started, no result yet) or waiting (not started, or returned to its queue since its last start).';
COMMENT ON COLUMN audit.task_attempts.returns IS 'How often the attempt went back to its queue without counting as an attempt (TaskReturned).';

CREATE OR REPLACE VIEW audit.tasks AS
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
         count(*) FILTER (WHERE t.event_type = 'TaskRequeued') AS requeues,
         count(*) FILTER (WHERE t.event_type = 'TaskReturned') AS returns
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
       p.last_event_at,
       p.returns
  FROM per_task p;

COMMENT ON COLUMN audit.tasks.returns IS 'Number of TaskReturned events: attempts given back by a stopping node or dead-lettered before they started.';

CREATE OR REPLACE VIEW audit.node_activity AS
WITH runs AS (
  SELECT t.*,
         lead(t.event_type) OVER w AS next_type,
         lead(t.at) OVER w AS next_at,
         lead(t.error_message) OVER w AS next_error
    FROM audit.task_timeline t
   WHERE t.event_type IN ('TaskStarted', 'TaskSucceeded', 'TaskAttemptFailed', 'TaskDeadLettered', 'TaskCancelled', 'TaskReturned')
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
         WHEN 'TaskReturned' THEN 'returned'
         ELSE 'running'
       END AS outcome,
       CASE WHEN r.next_type = 'TaskAttemptFailed' THEN r.next_error END AS error_message,
       r.position AS start_position
  FROM runs r
 WHERE r.event_type = 'TaskStarted';

COMMENT ON COLUMN audit.node_activity.outcome IS 'succeeded, failed, dead_lettered, cancelled, redelivered (the message went to a node again: crash or lost node), returned (the node gave the attempt back when it stopped) or running.';
COMMENT ON COLUMN audit.node_activity.finished_at IS 'Time of the next event of the attempt: its result, dead letter, cancel or return, or a later start elsewhere (redelivered); NULL while running.';

CREATE OR REPLACE VIEW audit.message_dead_letters AS
SELECT e.position,
       e.data->>'messageId' AS message_id,
       (e.data->>'at')::timestamptz AS at,
       e.recorded_at,
       e.data->>'exchange' AS exchange,
       e.data->>'routingKey' AS routing_key,
       e.data->'headers'->>'x-first-death-reason' AS death_reason,
       e.data->'headers'->>'x-first-death-queue' AS death_queue,
       e.data->>'body' AS body,
       e.metadata->>'actor' AS recorded_by,
       e.data->>'reason' AS reason,
       e.data->>'bodyBase64' AS body_base64
  FROM public.events e
 WHERE e.stream_type = 'message' AND e.type = 'MessageDeadLettered';

COMMENT ON COLUMN audit.message_dead_letters.reason IS 'Why ingest kept the message instead of applying it (malformed, not a task message, or the error PostgreSQL gave).';
COMMENT ON COLUMN audit.message_dead_letters.body IS 'The message body as text (first 100,000 bytes); a NUL or an invalid UTF-8 byte shows as U+FFFD (see body_base64).';
COMMENT ON COLUMN audit.message_dead_letters.body_base64 IS 'The exact body bytes in base64 when body is not them (NUL, invalid UTF-8); NULL otherwise.';

-- Result records ingest could never write (a record of a message whose other records were
-- applied), kept in the log instead of being dropped.
CREATE VIEW audit.result_records_set_aside AS
SELECT e.position,
       e.data->>'messageId' AS message_id,
       (e.data->>'recordIndex')::integer AS record_index,
       e.data->>'taskId' AS task_id,
       e.data->>'kind' AS record_kind,
       (e.data->>'attempt')::integer AS attempt,
       e.data->>'nodeId' AS node_id,
       (e.data->>'reportedAt')::timestamptz AS reported_at,
       (e.data->>'at')::timestamptz AS at,
       e.recorded_at,
       e.data->>'error' AS error_message,
       e.data->>'errorCode' AS error_code,
       e.metadata->>'actor' AS recorded_by
  FROM public.events e
 WHERE e.stream_type = 'message' AND e.type = 'ResultRecordSetAside';

COMMENT ON VIEW audit.result_records_set_aside IS 'Result records (started, succeeded, failed, returned) ingest could never write, set aside while the rest of their message was applied. Derived from events only.';
COMMENT ON COLUMN audit.result_records_set_aside.message_id IS 'The result message the record came in.';
COMMENT ON COLUMN audit.result_records_set_aside.record_index IS 'Position of the record in its message, from 0.';
COMMENT ON COLUMN audit.result_records_set_aside.record_kind IS 'started, succeeded, failed or returned.';
COMMENT ON COLUMN audit.result_records_set_aside.reported_at IS 'The record''s own time (the fog node''s clock).';
COMMENT ON COLUMN audit.result_records_set_aside.at IS 'When ingest set it aside (the ingest''s clock).';
COMMENT ON COLUMN audit.result_records_set_aside.error_message IS 'The error PostgreSQL gave for the record.';
COMMENT ON COLUMN audit.result_records_set_aside.error_code IS 'Its SQLSTATE.';

GRANT SELECT ON audit.result_records_set_aside TO fogsched_auditor;

-- Down Migration
-- The restated views keep their added columns (a view's columns cannot be dropped by CREATE OR
-- REPLACE); they read every event of 1700000000005 as before.
DROP VIEW audit.result_records_set_aside;

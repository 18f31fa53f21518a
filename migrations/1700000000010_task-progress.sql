-- Up Migration

-- Issue 18: handlers report progress (ctx.progress → TaskProgressed, coalesced by the fog
-- node), and a progress report keeps a running task's lease alive.
--
-- task_current:
-- - progress: the last report of the current run, {fraction, message, at} (at: the node's
--   clock); NULL until the run reports, and again at each new start.
-- - reported_at: when the node last reported on the running attempt (its start, or its last
--   progress, by the node's clock). The running lease (src/schedules/lease.ts) now runs from it
--   instead of from started_at, so its index is rebuilt on it.
-- No read model version bump: no TaskProgressed exists before this migration, so NULL is what a
-- rebuild writes for every existing row.
ALTER TABLE task_current ADD COLUMN progress jsonb, ADD COLUMN reported_at timestamptz;
UPDATE task_current SET reported_at = started_at WHERE state = 'running';

DROP INDEX task_current_running_idx;
CREATE INDEX task_current_running_idx ON task_current ((spec->>'timeoutMs' IS NULL), task_lease_base_ms(coalesce(reported_at, started_at), spec))
  INCLUDE (node_id) WHERE state = 'running';

-- The latest report (TaskStarted or TaskProgressed) of a task's stream, for the lease sweep.
CREATE INDEX events_run_report_idx ON events (stream_id, stream_version) WHERE type IN ('TaskStarted', 'TaskProgressed');

-- Audit views: TaskProgressed leaves the task's state as it is (task_timeline needs no change:
-- its CASE gives NULL, "unchanged"). The two views that count events per task and per attempt
-- are restated from 1700000000009_audit-returns.sql with new columns at the end:
-- - task_attempts: progress_reports, last_progress_fraction, last_progress_message, last_progress_at;
-- - tasks: progress_reports.

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
         count(*) FILTER (WHERE t.event_type = 'TaskReturned') AS returns,
         count(*) FILTER (WHERE t.event_type = 'TaskProgressed') AS progress_reports,
         (array_agg(t.data ORDER BY t.version DESC) FILTER (WHERE t.event_type = 'TaskProgressed'))[1] AS last_progress
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
       p.returns,
       p.progress_reports,
       (p.last_progress->>'fraction')::float8 AS last_progress_fraction,
       p.last_progress->>'message' AS last_progress_message,
       (p.last_progress->>'reportedAt')::timestamptz AS last_progress_at
  FROM per_attempt p;

COMMENT ON COLUMN audit.task_attempts.progress_reports IS 'TaskProgressed events of the attempt (the node sends at most one per PROGRESS_MIN_INTERVAL_MS, and always the last).';
COMMENT ON COLUMN audit.task_attempts.last_progress_fraction IS 'Fraction in [0, 1] of the attempt''s last progress report; NULL without one.';
COMMENT ON COLUMN audit.task_attempts.last_progress_at IS 'The node''s clock at the last progress report.';

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
         count(*) FILTER (WHERE t.event_type = 'TaskReturned') AS returns,
         count(*) FILTER (WHERE t.event_type = 'TaskProgressed') AS progress_reports
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
       p.returns,
       p.progress_reports
  FROM per_task p;

COMMENT ON COLUMN audit.tasks.progress_reports IS 'Number of TaskProgressed events over all attempts.';

COMMENT ON COLUMN audit.task_timeline.event_type IS 'TaskSubmitted, TaskQueued, TaskStarted, TaskProgressed, TaskSucceeded, TaskAttemptFailed, TaskRetryScheduled, TaskFailed, TaskDeadLettered, TaskCancelled, TaskRequeued or TaskReturned.';

-- Down Migration
-- The restated views keep their added columns (CREATE OR REPLACE cannot drop them).
DROP INDEX events_run_report_idx;
DROP INDEX task_current_running_idx;
CREATE INDEX task_current_running_idx ON task_current ((spec->>'timeoutMs' IS NULL), task_lease_base_ms(started_at, spec))
  INCLUDE (node_id) WHERE state = 'running';
ALTER TABLE task_current DROP COLUMN reported_at, DROP COLUMN progress;

-- Up Migration

-- Issue 20: task dependencies (a DAG of tasks) and placement by zone and labels.
--
-- task_dependencies: one row per edge, written in the submit's transaction. `resolved_state` is
-- NULL until the dependency ended (succeeded, failed or cancelled), set exactly once by the
-- transaction that wrote the dependency's terminal event (or at submit, when it had already
-- ended). The primary key leads with the dependency: a finishing task finds its dependants.
-- task_waits: the unresolved dependency count of a task submitted waiting. A finishing
-- dependency decrements it; the row lock serialises concurrent finishers, and the one that
-- reaches 0 releases the task (src/tasks/execute-commands.ts).
-- Both are write-side coordination state, like idempotency_keys and the outbox, not read
-- models: `projections rebuild` does not touch them (the log holds every TaskWaiting,
-- TaskReleased and dependency cancel, so the rebuilt task_current agrees with them).
CREATE TABLE task_dependencies (
  task_id uuid NOT NULL,
  depends_on uuid NOT NULL,
  tenant text NOT NULL,
  resolved_state text NULL CHECK (resolved_state IN ('succeeded', 'failed', 'cancelled')),
  PRIMARY KEY (depends_on, task_id)
);
CREATE INDEX task_dependencies_task_idx ON task_dependencies (task_id);

CREATE TABLE task_waits (
  task_id uuid PRIMARY KEY,
  pending integer NOT NULL
);

-- The expiry sweep (src/schedules/schedules.ts) also fails waiting tasks whose deadline passed.
DROP INDEX task_current_deadline_idx;
CREATE INDEX task_current_deadline_idx ON task_current (deadline)
  WHERE deadline IS NOT NULL AND state IN ('waiting', 'queued', 'scheduled', 'retrying');

-- Audit: task_timeline learns the new events (restated from 1700000000009_audit-returns.sql,
-- same columns): TaskWaiting leaves the task `waiting`; TaskReleased leaves it as it is (the
-- TaskQueued after it moves it on); TaskPlacementFallback puts it `queued` again (the same
-- attempt, dispatched to its tier's general queue). A release's and a dependency cancel's
-- metadata.causationId (column causation_id) is the dependency that caused it.
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
           WHEN 'TaskWaiting' THEN 'waiting'
           WHEN 'TaskPlacementFallback' THEN 'queued'
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

COMMENT ON COLUMN audit.task_timeline.event_type IS 'TaskSubmitted, TaskWaiting, TaskReleased, TaskQueued, TaskStarted, TaskProgressed, TaskSucceeded, TaskAttemptFailed, TaskRetryScheduled, TaskFailed, TaskDeadLettered, TaskCancelled, TaskRequeued, TaskReturned or TaskPlacementFallback.';
COMMENT ON COLUMN audit.task_timeline.reason IS 'Failure reason (TaskFailed, TaskDeadLettered), cancel reason (TaskCancelled; dependency-failed when a dependency failed or was cancelled) or return reason (TaskReturned: node-shutdown or delivery-limit).';
COMMENT ON COLUMN audit.task_timeline.causation_id IS 'The event or task that caused this one; for TaskReleased and a dependency-failed TaskCancelled, the dependency whose end caused it.';

-- Down Migration
-- The view keeps its two new cases: no event of those types exists without this migration's code.
DROP INDEX task_current_deadline_idx;
CREATE INDEX task_current_deadline_idx ON task_current (deadline)
  WHERE deadline IS NOT NULL AND state IN ('queued', 'scheduled', 'retrying');
DROP TABLE task_waits;
DROP TABLE task_dependencies;

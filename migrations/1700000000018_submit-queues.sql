-- Up Migration

-- Issue 16: a task with nothing to wait for is queued by its TaskSubmitted (schema version 3),
-- which carries `attempt` (1) and `availableAt`, instead of a TaskSubmitted followed by a
-- TaskQueued of attempt 1: one event, one hash and five index entries fewer per task. Old logs
-- keep their two events and read as before: a TaskSubmitted without `availableAt` leaves its task
-- `submitted`, and its TaskQueued moves it on. The views that know which event queues a task
-- learn the new case (restated with the same columns):
-- - task_event_state (task_history's state): a TaskSubmitted with `availableAt` leaves the task
--   `queued`, or `scheduled` when it is later than `at` (as TaskQueued does);
-- - task_history: the attempt carried to an event without one may come from a TaskSubmitted;
-- - audit.task_timeline: its state comes from task_event_state (it had a copy of the CASE);
-- - audit.task_attempts: a TaskSubmitted with `availableAt` dispatched attempt 1 (queued_by_event,
--   queued_by, queued_at, available_at).

CREATE OR REPLACE FUNCTION task_event_state(type text, data jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE type
    WHEN 'TaskSubmitted' THEN
      CASE WHEN NOT data ? 'availableAt' THEN 'submitted'
           WHEN (data->>'availableAt') COLLATE "C" > (data->>'at') COLLATE "C" THEN 'scheduled'
           ELSE 'queued' END
    WHEN 'TaskQueued' THEN
      CASE WHEN (data->>'availableAt') COLLATE "C" > (data->>'at') COLLATE "C" THEN 'scheduled' ELSE 'queued' END
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
  END
$$;

CREATE OR REPLACE VIEW task_history AS
SELECT e.position,
       e.stream_id::uuid AS task_id,
       e.stream_version AS version,
       e.type,
       coalesce(
         task_event_state(e.type, e.data),
         (SELECT task_event_state(p.type, p.data) FROM events p
           WHERE p.stream_id = e.stream_id AND p.stream_version < e.stream_version
             AND task_event_state(p.type, p.data) IS NOT NULL
           ORDER BY p.stream_version DESC LIMIT 1),
         'submitted') AS state,
       CASE WHEN e.data ? 'attempt' THEN (e.data->>'attempt')::integer
            ELSE coalesce(
              (SELECT (p.data->>'attempt')::integer FROM events p
                WHERE p.stream_id = e.stream_id AND p.stream_version < e.stream_version
                  AND p.type IN ('TaskSubmitted', 'TaskQueued', 'TaskStarted', 'TaskRetryScheduled', 'TaskRequeued')
                  AND p.data ? 'attempt'
                ORDER BY p.stream_version DESC LIMIT 1),
              0)
       END AS attempt,
       e.data->>'nodeId' AS node_id,
       CASE WHEN e.data ? 'actor' THEN e.data->>'actor' ELSE e.metadata->>'actor' END AS actor,
       e.data->>'reason' AS reason,
       CASE WHEN task_event_data(e.type, e.schema_version, e.data)->'error' IN ('null'::jsonb, 'false'::jsonb, '0'::jsonb, '""'::jsonb) THEN NULL
            ELSE task_event_data(e.type, e.schema_version, e.data)->'error' END AS error,
       (e.data->>'at')::timestamptz AS at,
       task_event_data(e.type, e.schema_version, e.data) AS data
  FROM events e
 WHERE e.stream_type = 'task';

CREATE OR REPLACE VIEW audit.task_timeline AS
WITH task_events AS (
  SELECT e.position, e.stream_id, e.stream_version, e.type, e.schema_version, e.data, e.metadata, e.recorded_at,
         (e.data->>'at')::timestamptz AS at,
         (e.data->>'attempt')::integer AS event_attempt,
         -- The state each event moves the task to (evolve in src/domain/task.ts); NULL: unchanged.
         -- One function for it now, shared with task_history.
         public.task_event_state(e.type, e.data) AS state_set
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

COMMENT ON COLUMN audit.task_timeline.event_type IS 'TaskSubmitted (which also queues attempt 1 when its data has availableAt), TaskWaiting, TaskReleased, TaskQueued, TaskStarted, TaskProgressed, TaskSucceeded, TaskAttemptFailed, TaskRetryScheduled, TaskFailed, TaskDeadLettered, TaskCancelled, TaskRequeued, TaskReturned or TaskPlacementFallback.';

CREATE OR REPLACE VIEW audit.task_attempts AS
WITH per_attempt AS (
  SELECT t.task_id,
         t.attempt,
         min(t.tenant) AS tenant,
         min(t.task_type) AS task_type,
         (array_agg(t.event_type ORDER BY t.version) FILTER (WHERE (t.event_type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskRequeued') OR (t.event_type = 'TaskSubmitted' AND t.data ? 'availableAt'))))[1] AS queued_by_event,
         (array_agg(t.actor ORDER BY t.version) FILTER (WHERE (t.event_type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskRequeued') OR (t.event_type = 'TaskSubmitted' AND t.data ? 'availableAt'))))[1] AS queued_by,
         min(t.at) FILTER (WHERE (t.event_type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskRequeued') OR (t.event_type = 'TaskSubmitted' AND t.data ? 'availableAt'))) AS queued_at,
         min(COALESCE((t.data->>'availableAt')::timestamptz, t.at)) FILTER (WHERE (t.event_type IN ('TaskQueued', 'TaskRetryScheduled', 'TaskRequeued') OR (t.event_type = 'TaskSubmitted' AND t.data ? 'availableAt'))) AS available_at,
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

COMMENT ON COLUMN audit.task_attempts.queued_by_event IS 'What dispatched the attempt: TaskSubmitted or TaskQueued (first), TaskRetryScheduled (retry) or TaskRequeued (requeue).';

-- Down Migration
-- The views keep the new case: a TaskSubmitted with `availableAt` exists only once this
-- migration's code wrote one, and reading it as queued stays right after a downgrade.

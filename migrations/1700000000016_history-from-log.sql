-- Up Migration

-- task_history was a projection: one row per task event, written beside the event by every task
-- write, with the same `data` again (4 of the 12 row writes of a task that runs once, and two
-- index entries each). Everything in it follows from the event and the events before it in its
-- stream, so it is now a view of the log with the same columns: nothing to write, nothing to
-- rebuild, and it cannot drift from the log. Readers keep their queries; one task's rows come from
-- the (stream_id, stream_version) key, a join on `position` from events' primary key.

-- The state an event moves its task to (evolve in src/domain/task.ts), 'submitted' for the
-- TaskSubmitted of a new task; NULL for the events that leave it as it is (TaskProgressed,
-- TaskAttemptFailed, TaskReleased). TaskQueued compares its two ISO times as text, as the code does.
CREATE FUNCTION task_event_state(type text, data jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE type
    WHEN 'TaskSubmitted' THEN 'submitted'
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

-- An event's data in its current schema (the upcasters of src/domain/event-versions.ts, for
-- readers in SQL): TaskSubmitted v1 had `resources.memory` and no deadline, retry or
-- idempotencyKey; TaskAttemptFailed v1 had the message alone in `error` and `retryable` beside it.
CREATE FUNCTION task_event_data(type text, schema_version smallint, data jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN type = 'TaskSubmitted' AND schema_version < 2 THEN
      data || jsonb_build_object('task', coalesce(data->'task', '{}'::jsonb) || jsonb_build_object(
        'resources', (coalesce(data #> '{task,resources}', '{}'::jsonb) - 'memory' - 'memoryMb')
          || CASE
               WHEN nullif(data #> '{task,resources,memoryMb}', 'null'::jsonb) IS NOT NULL
                 THEN jsonb_build_object('memoryMb', data #> '{task,resources,memoryMb}')
               WHEN data #> '{task,resources}' ? 'memory'
                 THEN jsonb_build_object('memoryMb', data #> '{task,resources,memory}')
               ELSE '{}'::jsonb
             END,
        'deadline', coalesce(data #> '{task,deadline}', 'null'::jsonb),
        'retry', coalesce(data #> '{task,retry}', 'null'::jsonb),
        'idempotencyKey', coalesce(data #> '{task,idempotencyKey}', 'null'::jsonb)))
    WHEN type = 'TaskAttemptFailed' AND schema_version < 2 AND jsonb_typeof(data->'error') = 'string' THEN
      (data - 'retryable' - 'error') || jsonb_build_object('error', jsonb_build_object(
        'message', data->'error',
        'code', CASE WHEN data->'retryable' = 'false'::jsonb THEN 'non_retryable' ELSE 'handler_error' END,
        'retryable', data->'retryable' IS DISTINCT FROM 'false'::jsonb))
    ELSE data
  END
$$;

ALTER TABLE task_history RENAME TO task_history_table;
ALTER INDEX task_history_task_idx RENAME TO task_history_table_task_idx;

-- A plain view (no window, no aggregate): a filter or a join on its columns goes into the scan of
-- events. The state and attempt of an event that carries none are its stream's last before it,
-- found backwards on the (stream_id, stream_version) key (a few rows).
CREATE VIEW task_history AS
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
                  AND p.type IN ('TaskQueued', 'TaskStarted', 'TaskRetryScheduled', 'TaskRequeued')
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

COMMENT ON VIEW task_history IS
  'One row per task event with the state it left its task in: a view of events (it was a table, written beside each event, until migration 16).';

-- The upgrade keeps every old task's history as it was: the view must give back the rows the
-- table held, or the migration stops (run `fogsched projections verify` on the old version to see
-- why they differ) and nothing changes.
DO $$
DECLARE
  differing bigint;
BEGIN
  SELECT count(*) INTO differing FROM (
    (SELECT * FROM task_history_table EXCEPT ALL SELECT * FROM task_history)
    UNION ALL
    (SELECT * FROM task_history EXCEPT ALL SELECT * FROM task_history_table)
  ) d;
  IF differing > 0 THEN
    RAISE EXCEPTION 'task_history: % rows differ from what the log gives; not replacing the table with the view', differing
      USING HINT = 'run `fogsched projections verify` with the previous version, rebuild if it differs, then migrate again';
  END IF;
END $$;

DROP TABLE task_history_table;
DELETE FROM projection_versions WHERE projection = 'task_history';

-- Down Migration
CREATE TABLE task_history_table (
  position     bigint      PRIMARY KEY,
  task_id      uuid        NOT NULL,
  version      integer     NOT NULL,
  type         text        NOT NULL,
  state        text        NOT NULL,
  attempt      integer     NOT NULL,
  node_id      text,
  actor        text,
  reason       text,
  error        jsonb,
  at           timestamptz NOT NULL,
  data         jsonb       NOT NULL
);
INSERT INTO task_history_table SELECT * FROM task_history;
DROP VIEW task_history;
ALTER TABLE task_history_table RENAME TO task_history;
CREATE INDEX task_history_task_idx ON task_history (task_id, version);
INSERT INTO projection_versions (projection, version) VALUES ('task_history', 1) ON CONFLICT (projection) DO NOTHING;
DROP FUNCTION task_event_data(text, smallint, jsonb);
DROP FUNCTION task_event_state(text, jsonb);

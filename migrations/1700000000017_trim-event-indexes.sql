-- Up Migration

-- Indexes on events that no query of fogsched needs, each an entry written with every event:
-- - events_type_idx (type, position): nothing reads the whole log by type on a hot path. The
--   dashboard counts recent events by type through the BRIN on recorded_at; the audit views
--   read by stream (task_timeline's windows partition by stream_id); the chaos checker reads
--   offline. A type over the whole log is a scan of events, which an auditor can bound by
--   recorded_at (BRIN).
-- - events_run_report_idx (stream_id, stream_version) WHERE type IN (TaskStarted, TaskProgressed):
--   the running-lease sweeper's "last start or progress of this task" walks the task's stream
--   backwards on events_stream_version_key, the same key; a task stream is a handful of events.
DROP INDEX events_type_idx;
DROP INDEX events_run_report_idx;

-- Down Migration
CREATE INDEX events_run_report_idx ON events (stream_id, stream_version) WHERE type IN ('TaskStarted', 'TaskProgressed');
CREATE INDEX events_type_idx ON events (type, position);

-- Up Migration

-- Issue 17: the autoscaler records each change of a tier's fog-node replicas as a
-- FogTierScaled event in the stream autoscale:<tier> (src/autoscaler/events.ts). This view
-- shows them, so an auditor sees why capacity changed and what was measured at that moment.

CREATE VIEW audit.capacity_changes AS
SELECT e.position,
       COALESCE(e.data->>'tier', regexp_replace(e.stream_id, '^autoscale:', '')) AS tier,
       (e.data->>'at')::timestamptz AS at,
       e.recorded_at,
       (e.data->>'from')::integer AS replicas_from,
       (e.data->>'to')::integer AS replicas_to,
       e.data->>'trigger' AS trigger,
       e.data->>'reason' AS reason,
       (e.data->>'depth')::integer AS queue_depth,
       (e.data->>'queued')::integer AS queued,
       (e.data->>'running')::integer AS running,
       ((e.data->>'oldestWaitMs')::bigint * interval '1 millisecond') AS oldest_wait,
       ((e.data->>'avgWaitMs')::bigint * interval '1 millisecond') AS average_wait,
       (e.data->>'min')::integer AS min_replicas,
       (e.data->>'max')::integer AS max_replicas,
       e.data->>'backend' AS backend,
       e.metadata->>'actor' AS recorded_by
  FROM public.events e
 WHERE e.stream_type = 'autoscale' AND e.type = 'FogTierScaled';

COMMENT ON VIEW audit.capacity_changes IS 'Each change of a tier''s fog-node replicas the autoscaler decided, with what it measured. Derived from events only.';
COMMENT ON COLUMN audit.capacity_changes.at IS 'When the autoscaler decided (its clock).';
COMMENT ON COLUMN audit.capacity_changes.replicas_from IS 'Replicas the backend reported before the change.';
COMMENT ON COLUMN audit.capacity_changes.replicas_to IS 'Replicas set.';
COMMENT ON COLUMN audit.capacity_changes.trigger IS 'below-min, above-max, backlog (ready messages per replica above AUTOSCALE_UP_DEPTH), wait (oldest queued task above AUTOSCALE_UP_WAIT_MS) or idle (the work fits in one replica fewer).';
COMMENT ON COLUMN audit.capacity_changes.reason IS 'The trigger with the figures measured, in one line.';
COMMENT ON COLUMN audit.capacity_changes.queue_depth IS 'Ready messages in the tier''s task queues (all priorities).';
COMMENT ON COLUMN audit.capacity_changes.queued IS 'Tasks of the tier due and not started (task_current at that moment).';
COMMENT ON COLUMN audit.capacity_changes.running IS 'Tasks of the tier in state running.';
COMMENT ON COLUMN audit.capacity_changes.oldest_wait IS 'How long the oldest queued task had waited since it became due.';
COMMENT ON COLUMN audit.capacity_changes.average_wait IS 'Mean wait of the queued tasks.';
COMMENT ON COLUMN audit.capacity_changes.backend IS 'swarm or local.';
COMMENT ON COLUMN audit.capacity_changes.recorded_by IS 'Autoscaler instance that decided.';

GRANT SELECT ON audit.capacity_changes TO fogsched_auditor;

-- Down Migration
DROP VIEW audit.capacity_changes;

-- Up Migration

-- The running lease (src/schedules/lease.ts). A running task's lease runs out at
-- started_at + timeoutMs + RUNNING_LEASE_GRACE_MS when it has a timeout, and at
-- started_at + RUNNING_LEASE_MS when it has none. The grace and the lease are settings, so the
-- index holds only what is fixed per task: whether it has a timeout, and started_at (plus the
-- timeout) in epoch milliseconds. The scheduler then finds expired leases, and the next one to
-- expire, with a range scan per kind instead of reading every running task.
--
-- The arithmetic stays in immutable functions (timestamptz - timestamptz, extract from an
-- interval): timestamptz + interval and extract from a timestamptz are only stable, which an
-- index expression may not use. Plain SQL, so PostgreSQL inlines it into the index and the query.
CREATE FUNCTION task_lease_base_ms(started_at timestamptz, spec jsonb) RETURNS double precision
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT extract(epoch FROM started_at - timestamptz '1970-01-01 00:00:00+00')::float8 * 1000
         + coalesce((spec->>'timeoutMs')::float8, 0)
$$;

-- node_id is included for the node-lost check (which nodes run tasks now), read from the same
-- index. Only running rows are in it: one entry per start, gone with the next state.
CREATE INDEX task_current_running_idx ON task_current ((spec->>'timeoutMs' IS NULL), task_lease_base_ms(started_at, spec))
  INCLUDE (node_id) WHERE state = 'running';

-- The last FogNodeLost of a node, for the node-lost check: one lookup per node that runs tasks,
-- however many losses the log holds. Only loss events are in it (a few per node restart).
CREATE INDEX events_node_lost_idx ON events (stream_id, position) WHERE type = 'FogNodeLost';

-- Retention (src/schedules/retention.ts) deletes the oldest inbox rows and idempotency keys
-- in batches; without these it would read the whole table to find them. (Outbox rows are
-- found by walking the primary key from its low end: ids grow with created_at.)
CREATE INDEX inbox_received_at_idx ON inbox (received_at);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- Down Migration
DROP INDEX events_node_lost_idx;
DROP INDEX idempotency_keys_created_at_idx;
DROP INDEX inbox_received_at_idx;
DROP INDEX task_current_running_idx;
DROP FUNCTION task_lease_base_ms(timestamptz, jsonb);

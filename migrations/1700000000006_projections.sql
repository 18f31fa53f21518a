-- Up Migration

-- Readers of the whole log (projection rebuild, `fogsched events tail`) page by
-- (transaction_id, position), the gap-free order: see readAll in src/store/event-store.ts.
CREATE INDEX events_transaction_position_idx ON events (transaction_id, position);

-- task_current.seq (the list order and cursor) becomes the position of the task's
-- TaskSubmitted event instead of an identity value: the same for the live table and for one
-- rebuilt from the log, so a rebuild keeps every cursor valid and verify can compare it.
-- Rows written before this migration keep their (unique, increasing) identity values.
ALTER TABLE task_current ALTER COLUMN seq DROP IDENTITY;

-- The version of each read model's shape the tables hold. A newer version in the code means
-- the tables are stale: `fogsched start` refuses them until `fogsched projections rebuild`.
CREATE TABLE projection_versions (
  projection           text        PRIMARY KEY,
  version              integer     NOT NULL,
  rebuilt_at           timestamptz,
  rebuilt_events       bigint
);
INSERT INTO projection_versions (projection, version) VALUES ('task_current', 1), ('task_history', 1);

-- The checkpoint of the rebuild in progress (at most one): where it stands in the log, so a
-- killed rebuild resumes there. Written in the transaction that fills the shadow tables.
CREATE TABLE projection_rebuilds (
  id                   integer     PRIMARY KEY DEFAULT 1 CHECK (id = 1),
  projections          text[]      NOT NULL,
  last_transaction_id  xid8        NOT NULL DEFAULT '0',
  last_position        bigint      NOT NULL DEFAULT 0,
  -- Events read ahead of an earlier version of their stream (transaction order is not
  -- stream order), applied when that version arrives.
  held_positions       bigint[]    NOT NULL DEFAULT '{}',
  events_applied       bigint      NOT NULL DEFAULT 0,
  started_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Down Migration
DROP TABLE projection_rebuilds;
DROP TABLE projection_versions;
ALTER TABLE task_current ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('task_current', 'seq'), coalesce(max(seq), 0) + 1, false) FROM task_current;
DROP INDEX events_transaction_position_idx;

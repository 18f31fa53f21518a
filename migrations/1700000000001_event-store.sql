-- Up Migration

-- The log: append-only, one row per event. `position` orders the whole log;
-- (stream_id, stream_version) gives optimistic concurrency per stream.
CREATE TABLE events (
  position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  stream_id       text        NOT NULL,
  stream_type     text        NOT NULL,
  stream_version  integer     NOT NULL CHECK (stream_version > 0),
  event_id        uuid        NOT NULL UNIQUE,
  type            text        NOT NULL,
  schema_version  smallint    NOT NULL DEFAULT 1,
  data            jsonb       NOT NULL,
  metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
  recorded_at     timestamptz NOT NULL DEFAULT now(),
  -- The writing transaction: readers that tail the log stay below pg_snapshot_xmin.
  transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
  CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_type_idx ON events (type, position);
CREATE INDEX events_recorded_at_idx ON events USING brin (recorded_at);

CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_append_only
  BEFORE UPDATE OR DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION events_reject_change();
CREATE TRIGGER events_no_truncate
  BEFORE TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();

-- Messages to publish, written in the transaction that appends their events.
-- Published rows keep published_at for the audit trail until retention removes them.
CREATE TABLE outbox (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  message_id    uuid        NOT NULL UNIQUE,
  stream_id     text        NOT NULL,
  exchange      text        NOT NULL,
  routing_key   text        NOT NULL,
  headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
  body          jsonb       NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  available_at  timestamptz NOT NULL DEFAULT now(),
  published_at  timestamptz,
  attempts      integer     NOT NULL DEFAULT 0,
  last_error    text
);
CREATE INDEX outbox_due_idx ON outbox (available_at, id) WHERE published_at IS NULL;
CREATE INDEX outbox_stream_idx ON outbox (stream_id, id) WHERE published_at IS NULL;

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('fogsched_outbox', '');
  RETURN NULL;
END $$;
CREATE TRIGGER outbox_inserted
  AFTER INSERT ON outbox
  FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Ids of messages ingest has already applied (exactly-once effect).
CREATE TABLE inbox (
  message_id   text        PRIMARY KEY,
  source       text        NOT NULL,
  received_at  timestamptz NOT NULL DEFAULT now()
);

-- Idempotency-Key → task; request_hash tells a retry from a different request.
CREATE TABLE idempotency_keys (
  tenant        text        NOT NULL,
  key           text        NOT NULL,
  task_id       uuid        NOT NULL,
  request_hash  text        NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, key)
);

-- Read model: one row per task, the latest state (also the decide snapshot).
CREATE TABLE task_current (
  task_id          uuid        PRIMARY KEY,
  seq              bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
  tenant           text        NOT NULL,
  type             text        NOT NULL,
  state            text        NOT NULL,
  tier             text        NOT NULL,
  priority         text        NOT NULL,
  attempt          integer     NOT NULL,
  first_attempt    integer     NOT NULL DEFAULT 1,
  max_attempts     integer     NOT NULL,
  version          integer     NOT NULL,
  spec             jsonb       NOT NULL,
  node_id          text,
  output           jsonb,
  last_error       jsonb,
  failure_reason   text,
  available_at     timestamptz,
  submitted_at     timestamptz NOT NULL,
  started_at       timestamptz,
  finished_at      timestamptz,
  updated_at       timestamptz NOT NULL
);
CREATE INDEX task_current_state_idx ON task_current (tenant, state, seq);
CREATE INDEX task_current_list_idx ON task_current (tenant, seq);

-- Read model: one row per lifecycle event, the auditor's timeline.
CREATE TABLE task_history (
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
CREATE INDEX task_history_task_idx ON task_history (task_id, version);

-- Read model: samples the fog nodes publish, pruned by retention.
CREATE TABLE node_metrics (
  node_id      text        NOT NULL,
  at           timestamptz NOT NULL,
  tier         text        NOT NULL,
  cpu          double precision NOT NULL,
  rss_mb       double precision NOT NULL,
  in_flight    integer     NOT NULL,
  completed    bigint      NOT NULL,
  failed       bigint      NOT NULL,
  PRIMARY KEY (node_id, at)
);
CREATE INDEX node_metrics_at_idx ON node_metrics (at);

-- Down Migration
DROP TABLE node_metrics;
DROP TABLE task_history;
DROP TABLE task_current;
DROP TABLE idempotency_keys;
DROP TABLE inbox;
DROP TABLE outbox;
DROP FUNCTION outbox_notify();
DROP TABLE events;
DROP FUNCTION events_reject_change();

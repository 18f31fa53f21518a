-- Up Migration

-- Read model (and decide snapshot) of recurring schedules; their events are in `events`
-- (stream_type 'schedule').
CREATE TABLE schedules (
  schedule_id    uuid        PRIMARY KEY,
  seq            bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
  tenant         text        NOT NULL,
  name           text        NOT NULL,
  cron           text        NOT NULL,
  timezone       text        NOT NULL,
  catch_up       text        NOT NULL,
  template       jsonb       NOT NULL,
  state          text        NOT NULL,
  next_fire_at   timestamptz,
  last_fired_at  timestamptz,
  last_task_id   uuid,
  fired_count    integer     NOT NULL DEFAULT 0,
  version        integer     NOT NULL,
  created_at     timestamptz NOT NULL,
  updated_at     timestamptz NOT NULL
);
CREATE INDEX schedules_due_idx ON schedules (next_fire_at) WHERE state = 'active';
CREATE INDEX schedules_tenant_idx ON schedules (tenant, seq);

-- Down Migration
DROP TABLE schedules;

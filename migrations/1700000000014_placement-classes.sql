-- Up Migration

-- Every placement class (zone, labels, fallback delay: src/domain/policy.ts placementClass) a
-- submit has used. Each class has broker queues of its own that nothing deletes, so the number of
-- classes is capped (PLACEMENT_MAX_CLASSES): a submit naming a new class past the cap is refused
-- (422 PLACEMENT_CLASS_LIMIT) instead of creating queues without bound. An operator who deleted a
-- class's queues may delete its row here to free its place.
CREATE TABLE placement_classes (
  class               text        PRIMARY KEY,
  placement           jsonb       NOT NULL,
  fallback_after_ms   integer,
  first_tenant        text        NOT NULL,
  created_at          timestamptz NOT NULL DEFAULT now()
);

-- Down Migration
DROP TABLE placement_classes;

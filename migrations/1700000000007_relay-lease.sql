-- Up Migration

-- Relay leadership as a lease (src/outbox/relay-lease.ts) instead of a session advisory lock,
-- which a frozen or cut-off leader kept until TCP gave up. One row per relay group; the holder
-- renews `expires_at` (database clock) every third of RELAY_LEASE_MS; a standby takes the row
-- once it expired. Every takeover bumps `epoch`, the fencing token the leader's writes name.
CREATE TABLE relay_lease (
  name         text        PRIMARY KEY,
  holder       text        NOT NULL,
  epoch        bigint      NOT NULL,
  expires_at   timestamptz NOT NULL,
  -- When this epoch began (database clock).
  acquired_at  timestamptz NOT NULL DEFAULT now()
);

-- The epoch of the leader that marked the row published: a fenced write can only name the
-- epoch holding the lease, so with acquired_at it shows which term published what.
ALTER TABLE outbox ADD COLUMN published_epoch bigint;

-- Down Migration
ALTER TABLE outbox DROP COLUMN published_epoch;
DROP TABLE relay_lease;

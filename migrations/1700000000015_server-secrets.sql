-- Up Migration

-- Secrets the servers share through the database, made once at migration. `workflow-step-ids`
-- keys the HMAC that derives a workflow step's task id from (tenant, Idempotency-Key, step):
-- stable across api replicas and restarts (a retried request names the same tasks) and unknown to
-- tenants, so no tenant can compute, and take first, the ids another tenant's workflow will use.
-- gen_random_uuid() draws from PostgreSQL's strong random source (two of them: 244 random bits).
CREATE TABLE server_secrets (
  name        text        PRIMARY KEY,
  secret      text        NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO server_secrets (name, secret) VALUES ('workflow-step-ids', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));

-- Down Migration
DROP TABLE server_secrets;

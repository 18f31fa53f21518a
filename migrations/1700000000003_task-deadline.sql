-- Up Migration

-- The deadline as a column, so the scheduler finds waiting tasks whose deadline passed
-- (a task no fog node picked up must still end failed/expired on time).
ALTER TABLE task_current ADD COLUMN deadline timestamptz;
UPDATE task_current SET deadline = (spec->>'deadline')::timestamptz WHERE spec->>'deadline' IS NOT NULL;
CREATE INDEX task_current_deadline_idx ON task_current (deadline)
  WHERE deadline IS NOT NULL AND state IN ('queued', 'scheduled', 'retrying');

-- Down Migration
DROP INDEX task_current_deadline_idx;
ALTER TABLE task_current DROP COLUMN deadline;

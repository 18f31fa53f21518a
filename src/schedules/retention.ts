import { sql, type Kysely } from 'kysely';
import type { Database } from '../store/index.js';

/** How long rows that only guard against repeats are kept (the event log itself is never pruned). */
export interface RetentionOptions {
  /** OUTBOX_RETENTION_DAYS: published outbox rows older than this (by published_at) go. Default 7. */
  readonly outboxDays: number;
  /** INBOX_RETENTION_DAYS: ingest's record of applied message ids older than this goes. Default 7. */
  readonly inboxDays: number;
  /** IDEMPOTENCY_KEY_TTL_HOURS: an Idempotency-Key older than this is forgotten. Default 24. */
  readonly idempotencyKeyHours: number;
  /** Rows per DELETE (default 5,000): each is its own short transaction, so a backlog never holds locks for long. */
  readonly batchRows?: number;
}

export interface RetentionResult {
  readonly outbox: number;
  readonly inbox: number;
  readonly idempotencyKeys: number;
  /** task_waits rows of tasks no longer waiting (released, cancelled or expired). */
  readonly taskWaits: number;
}

const DEFAULT_BATCH_ROWS = 5000;

/**
 * Deletes what retention allows, batch after batch until a table has nothing more to give (or
 * `signal` aborts). Safe with several replicas: two deleting the same rows only wait for each
 * other's short batch. Returns the rows deleted per table.
 */
export async function pruneRetention(db: Kysely<Database>, options: RetentionOptions, signal?: AbortSignal): Promise<RetentionResult> {
  const batch = options.batchRows ?? DEFAULT_BATCH_ROWS;
  const drain = async (deleteBatch: () => Promise<number>): Promise<number> => {
    let total = 0;
    while (!signal?.aborted) {
      const n = await deleteBatch();
      total += n;
      if (n < batch) break;
    }
    return total;
  };

  // Outbox ids grow with created_at, and a row is published after it was created, so every row
  // retention may take sits at the low end of the primary key. Walk it from there in chunks
  // (no index on published_at: the relay's UPDATE would pay for one on every row) and stop at
  // the first chunk that reaches rows created after the cutoff. Rows kept down there (not yet
  // published: a far delayed task, or a dispatch the broker keeps refusing) are stepped over.
  const outboxCutoff = sql<Date>`now() - ${options.outboxDays}::float8 * interval '1 day'`;
  let outbox = 0;
  let after = 0;
  while (!signal?.aborted) {
    const r = await sql<{ deleted: number; last_id: number | null; reached_recent: boolean | null }>`
      WITH chunk AS (
        SELECT id, published_at, created_at FROM outbox WHERE id > ${after} ORDER BY id LIMIT ${batch}
      ), gone AS (
        DELETE FROM outbox o USING chunk c WHERE o.id = c.id AND c.published_at < ${outboxCutoff} RETURNING o.id
      )
      SELECT (SELECT count(*) FROM gone)::int AS deleted, (SELECT max(id) FROM chunk) AS last_id,
             (SELECT bool_or(created_at >= ${outboxCutoff}) FROM chunk) AS reached_recent`.execute(db);
    const row = r.rows[0];
    outbox += row?.deleted ?? 0;
    if (!row || row.last_id === null || row.reached_recent) break;
    after = row.last_id;
  }

  // A DELETE ... WHERE key IN (the oldest `batch` keys) per statement, through the time indexes of migration 8.
  const inbox = await drain(async () =>
    Number(
      (
        await sql`DELETE FROM inbox WHERE message_id IN (
          SELECT message_id FROM inbox WHERE received_at < now() - ${options.inboxDays}::float8 * interval '1 day' ORDER BY received_at LIMIT ${batch})`.execute(db)
      ).numAffectedRows ?? 0,
    ),
  );
  const idempotencyKeys = await drain(async () =>
    Number(
      (
        await sql`DELETE FROM idempotency_keys WHERE (tenant, key) IN (
          SELECT tenant, key FROM idempotency_keys WHERE created_at < now() - ${options.idempotencyKeyHours}::float8 * interval '1 hour' ORDER BY created_at LIMIT ${batch})`.execute(db)
      ).numAffectedRows ?? 0,
    ),
  );
  // A task's pending count matters only while it waits; its edges (task_dependencies) stay, like
  // task_current, for the graph. A finishing dependency finds no row and changes nothing.
  const taskWaits = await drain(async () =>
    Number(
      (
        await sql`DELETE FROM task_waits WHERE task_id IN (
          SELECT w.task_id FROM task_waits w JOIN task_current c ON c.task_id = w.task_id WHERE c.state <> 'waiting' LIMIT ${batch})`.execute(db)
      ).numAffectedRows ?? 0,
    ),
  );
  return { outbox, inbox, idempotencyKeys, taskWaits };
}

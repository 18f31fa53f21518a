import pg from 'pg';
import { upcast } from '../domain/index.js';
import type { History, LoggedEvent, OutboxLeftover, ReadModelRow } from './checker.js';

/**
 * Reads what the checker judges from the chaos run's PostgreSQL: every task stream (data
 * upcast to the current schema, as the system itself reads it), the tasks schedules fired,
 * the outbox rows still unpublished and due, and task_current.
 */
export async function loadHistory(databaseUrl: string): Promise<History> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const tasks = new Map<string, LoggedEvent[]>();
    // Streamed in pages: a 10,000-task run has ~60,000 events.
    let after = 0;
    for (;;) {
      const page = await client.query<{ position: string; stream_id: string; stream_version: number; type: string; schema_version: number; data: unknown; recorded_at: Date }>(
        `SELECT position, stream_id, stream_version, type, schema_version, data, recorded_at
           FROM events WHERE stream_type = 'task' AND position > $1 ORDER BY position LIMIT 20000`,
        [after],
      );
      if (page.rows.length === 0) break;
      for (const r of page.rows) {
        const list = tasks.get(r.stream_id) ?? [];
        list.push({ position: Number(r.position), version: r.stream_version, type: r.type, data: upcast(r.type, r.schema_version, r.data) as Record<string, unknown>, recordedAt: r.recorded_at.getTime() });
        tasks.set(r.stream_id, list);
        after = Number(r.position);
      }
    }
    for (const list of tasks.values()) list.sort((a, b) => a.version - b.version);
    const fired = await client.query<{ task_id: string }>(`SELECT data->>'taskId' AS task_id FROM events WHERE type = 'ScheduleFired' ORDER BY position`);
    const leftovers = await client.query<{ id: string; stream_id: string; exchange: string; available_at: Date }>(
      `SELECT id, stream_id, exchange, available_at FROM outbox WHERE published_at IS NULL AND available_at <= now() ORDER BY id`,
    );
    const setAside = await client.query<{ n: string }>(`SELECT count(*) AS n FROM events WHERE type = 'MessageDeadLettered'`);
    const current = await client.query<{ task_id: string; state: string; version: number; attempt: number }>(`SELECT task_id, state, version, attempt FROM task_current`);
    return {
      tasks,
      scheduleFired: fired.rows.map((r) => r.task_id),
      unpublishedDue: leftovers.rows.map((r): OutboxLeftover => ({ id: Number(r.id), streamId: r.stream_id, exchange: r.exchange, availableAt: r.available_at.getTime() })),
      deadLetteredMessages: Number(setAside.rows[0]?.n ?? 0),
      readModel: new Map(current.rows.map((r): [string, ReadModelRow] => [r.task_id, { status: r.state, version: r.version, attempt: r.attempt }])),
    };
  } finally {
    await client.end();
  }
}

/** Progress while the system recovers: tasks not terminal yet, and due outbox rows not published. */
export async function openWork(databaseUrl: string): Promise<{ open: number; unpublished: number }> {
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 3000 });
  client.on('error', () => {});
  await client.connect();
  try {
    const r = await client.query<{ open: string; unpublished: string }>(
      `SELECT (SELECT count(*) FROM task_current WHERE state NOT IN ('succeeded', 'failed', 'cancelled')) AS open,
              (SELECT count(*) FROM outbox WHERE published_at IS NULL AND available_at <= now()) AS unpublished`,
    );
    return { open: Number(r.rows[0]?.open ?? 0), unpublished: Number(r.rows[0]?.unpublished ?? 0) };
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Tells the nemesis when tasks complete again: a terminal event written after `since`.
 * One connection, reopened after PostgreSQL restarts.
 */
export function progressProbe(databaseUrl: string): { completedSince(since: number): Promise<boolean>; close(): Promise<void> } {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 1, connectionTimeoutMillis: 2000 });
  pool.on('error', () => {});
  return {
    async completedSince(since) {
      const r = await pool.query<{ ok: boolean }>(
        `SELECT EXISTS (SELECT 1 FROM events WHERE recorded_at > to_timestamp($1::float8 / 1000)
            AND type IN ('TaskSucceeded', 'TaskFailed', 'TaskCancelled', 'TaskDeadLettered')) AS ok`,
        [since],
      );
      return r.rows[0]?.ok === true;
    },
    close: () => pool.end(),
  };
}

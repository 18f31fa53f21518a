import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConcurrencyError } from '../../src/domain/index.js';
import { appendToStream, cursorAfter, LOG_START, readAll, readStream, type LogCursor } from '../../src/store/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

let tdb: TestDatabase;
beforeAll(async () => {
  tdb = await createTestDatabase('store');
});
afterAll(async () => {
  await tdb.drop();
});

const ev = (type: string, data: unknown = {}) => ({ eventId: randomUUID(), type, data, metadata: { actor: 'test' } });

describe('event store', () => {
  it('appends with expected versions and reads the stream back in order', async () => {
    const id = randomUUID();
    await appendToStream(tdb.db, { id, type: 'task', expectedVersion: 0 }, [ev('A'), ev('B')]);
    await appendToStream(tdb.db, { id, type: 'task', expectedVersion: 2 }, [ev('C', { n: 3 })]);
    const events = await readStream(tdb.db, id);
    expect(events.map((e) => [e.type, e.streamVersion])).toEqual([['A', 1], ['B', 2], ['C', 3]]);
    expect(events[2]?.data).toEqual({ n: 3 });
    expect(events[0]?.metadata).toEqual({ actor: 'test' });
  });

  it('gives exactly one of two concurrent writers the stream; the other gets a typed ConcurrencyError', async () => {
    const id = randomUUID();
    await appendToStream(tdb.db, { id, type: 'task', expectedVersion: 0 }, [ev('A')]);
    const results = await Promise.allSettled(
      [1, 2].map(() => tdb.db.transaction().execute((trx) => appendToStream(trx, { id, type: 'task', expectedVersion: 1 }, [ev('B')]))),
    );
    const failed = results.filter((r) => r.status === 'rejected');
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(failed).toHaveLength(1);
    const reason = (failed[0] as PromiseRejectedResult).reason as ConcurrencyError;
    expect(reason).toBeInstanceOf(ConcurrencyError);
    expect(reason.code).toBe('CONCURRENT_UPDATE');
    expect(reason.streamId).toBe(id);
    expect(reason.expectedVersion).toBe(1);
    expect(await readStream(tdb.db, id)).toHaveLength(2);
  });

  it('refuses an append that would leave a gap in the stream with a typed ConcurrencyError', async () => {
    const id = randomUUID();
    await appendToStream(tdb.db, { id, type: 'task', expectedVersion: 0 }, [ev('A')]);
    const error = await appendToStream(tdb.db, { id, type: 'task', expectedVersion: 3 }, [ev('B')]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConcurrencyError);
    expect((error as ConcurrencyError).expectedVersion).toBe(3);
    expect(await readStream(tdb.db, id)).toHaveLength(1);
  });

  it('rejects UPDATE, DELETE and TRUNCATE of events', async () => {
    const id = randomUUID();
    await appendToStream(tdb.db, { id, type: 'task', expectedVersion: 0 }, [ev('A')]);
    await expect(sql`UPDATE events SET type = 'X' WHERE stream_id = ${id}`.execute(tdb.db)).rejects.toThrow(/append-only: UPDATE/);
    await expect(sql`DELETE FROM events WHERE stream_id = ${id}`.execute(tdb.db)).rejects.toThrow(/append-only: DELETE/);
    await expect(sql`TRUNCATE events`.execute(tdb.db)).rejects.toThrow(/append-only: TRUNCATE/);
    expect((await readStream(tdb.db, id))[0]?.type).toBe('A');
  });

  it('readAll stays below the oldest running transaction (no gaps for a tailing reader)', async () => {
    const start = await tail();
    const client = await tdb.pool.connect();
    try {
      await client.query('BEGIN');
      // This transaction takes a position but has not committed...
      await client.query(
        `INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data) VALUES ($1, 'task', 1, $2, 'Slow', '{}')`,
        [randomUUID(), randomUUID()],
      );
      // ...while a later one commits a higher position.
      await appendToStream(tdb.db, { id: randomUUID(), type: 'task', expectedVersion: 0 }, [ev('Fast')]);
      const seen = await readAll(tdb.db, start, 100);
      expect(seen.map((e) => e.type)).not.toContain('Fast');
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    const after = await readUntil(start, 2);
    expect(after.map((e) => e.type)).toEqual(['Slow', 'Fast']);
  });

  it('readAll does not pass over a lower position that commits after a higher one from an older transaction', async () => {
    const start = await tail();
    const older = await tdb.pool.connect();
    const younger = await tdb.pool.connect();
    try {
      // The older transaction takes its xid first (any write does), the younger one then takes
      // the lower position, the older one the higher position and commits first.
      await older.query('BEGIN');
      await older.query(`INSERT INTO inbox (message_id, source) VALUES ($1, 'test')`, [randomUUID()]);
      await younger.query('BEGIN');
      const insert = `INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data) VALUES ($1, 'task', 1, $2, $3, '{}') RETURNING position`;
      const low = await younger.query<{ position: string }>(insert, [randomUUID(), randomUUID(), 'LowPosition']);
      const high = await older.query<{ position: string }>(insert, [randomUUID(), randomUUID(), 'HighPosition']);
      expect(Number(low.rows[0]?.position)).toBeLessThan(Number(high.rows[0]?.position));
      await older.query('COMMIT');
      // A reader now sees the higher position (its transaction is below the horizon) ...
      const first = await readUntil(start, 1);
      expect(first.map((e) => e.type)).toEqual(['HighPosition']);
      // ... and its cursor must still let the lower one through once it commits.
      await younger.query('COMMIT');
      const next = await readUntil(cursorAfter(start, first), 1);
      expect(next.map((e) => e.type)).toEqual(['LowPosition']);
    } finally {
      older.release();
      younger.release();
    }
  });

  it('reads old schema versions through their upcasters', async () => {
    const id = randomUUID();
    await sql`
      INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, schema_version, data)
      VALUES (${id}, 'task', 1, ${randomUUID()}, 'TaskAttemptFailed', 1, ${JSON.stringify({ attempt: 1, nodeId: 'n1', error: 'disk full', retryable: false, at: '2026-01-01T00:00:00.000Z' })}::jsonb)`.execute(tdb.db);
    const [event] = await readStream(tdb.db, id);
    expect(event?.storedSchemaVersion).toBe(1);
    expect(event?.data).toEqual({ attempt: 1, nodeId: 'n1', error: { message: 'disk full', code: 'non_retryable', retryable: false }, at: '2026-01-01T00:00:00.000Z' });
  });
});

/**
 * The cursor after every event committed so far. Not the settled horizon: that is cluster-wide,
 * so a long transaction in any database on the server (another test file's, a bench's) would
 * leave this file's earlier events after the cursor.
 */
async function tail(): Promise<LogCursor> {
  let cursor = LOG_START;
  for (;;) {
    const batch = await readAll(tdb.db, cursor, 10_000, { settled: false });
    if (batch.length === 0) return cursor;
    cursor = cursorAfter(cursor, batch);
  }
}

/** Reads after `from` until `n` events are there (another test file's open transaction can hold the horizon back for a moment). */
async function readUntil(from: LogCursor, n: number) {
  return eventually(async () => {
    const rows = await readAll(tdb.db, from, 100);
    return rows.length >= n ? rows : null;
  });
}

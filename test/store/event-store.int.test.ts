import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConcurrencyError } from '../../src/domain/index.js';
import { appendToStream, readAll, readStream } from '../../src/store/index.js';
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

  it('rejects UPDATE, DELETE and TRUNCATE of events', async () => {
    const id = randomUUID();
    await appendToStream(tdb.db, { id, type: 'task', expectedVersion: 0 }, [ev('A')]);
    await expect(sql`UPDATE events SET type = 'X' WHERE stream_id = ${id}`.execute(tdb.db)).rejects.toThrow(/append-only: UPDATE/);
    await expect(sql`DELETE FROM events WHERE stream_id = ${id}`.execute(tdb.db)).rejects.toThrow(/append-only: DELETE/);
    await expect(sql`TRUNCATE events`.execute(tdb.db)).rejects.toThrow(/append-only: TRUNCATE/);
    expect((await readStream(tdb.db, id))[0]?.type).toBe('A');
  });

  it('readAll stays below the oldest running transaction (no gaps for a tailing reader)', async () => {
    const before = await readAll(tdb.db, 0, 100_000);
    const start = before[before.length - 1]?.position ?? 0;
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
    // Another test file's open transaction can hold the horizon back for a moment.
    const after = await eventually(async () => {
      const rows = await readAll(tdb.db, start, 100);
      return rows.length === 2 ? rows : null;
    });
    expect(after.map((e) => e.type)).toEqual(['Slow', 'Fast']);
  });
});

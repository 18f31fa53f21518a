import { createHash, randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyHashChains, type VerifyProgress, type VerifyResult } from '../../src/audit/hash-chain.js';
import { formatAuditReport } from '../../src/cli/audit-commands.js';
import { appendEvents, type NewEvent } from '../../src/store/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

let tdb: TestDatabase;
beforeAll(async () => {
  tdb = await createTestDatabase('audit');
});
afterAll(async () => {
  await tdb.drop();
});

const ev = (streamId: string, streamVersion: number, type = `E${streamVersion}`, data: unknown = { n: streamVersion }): NewEvent => ({
  streamId,
  streamType: 'task',
  streamVersion,
  eventId: randomUUID(),
  type,
  data,
  metadata: { actor: 'test' },
});

/** Versions from..to of one stream. */
const versions = (streamId: string, from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => ev(streamId, from + i));

interface HashRow {
  stream_id: string;
  stream_version: number;
  event_id: string;
  type: string;
  schema_version: number;
  data: unknown;
  metadata: unknown;
  micros: string;
  hash: Buffer;
  position: number;
}

async function rowsOf(db: TestDatabase, streamId: string): Promise<HashRow[]> {
  const { rows } = await sql<HashRow>`
    SELECT position, stream_id, stream_version, event_id, type, schema_version, data, metadata, hash,
           (extract(epoch FROM recorded_at) * 1000000)::bigint::text AS micros
      FROM events WHERE stream_id = ${streamId} ORDER BY stream_version`.execute(db.db);
  return rows;
}

/**
 * The documented definition, rebuilt outside PostgreSQL for flat values: jsonb's text form
 * puts ", " and ": " between items and sorts an object's keys by length, then bytes.
 */
function expectedHash(prev: Buffer | null, row: HashRow, canonicalData: string, canonicalMetadata: string): Buffer {
  const content = `[${JSON.stringify(row.stream_id)}, "task", ${row.stream_version}, "${row.event_id}", ${JSON.stringify(row.type)}, ${row.schema_version}, ${row.micros}, ${canonicalData}, ${canonicalMetadata}]`;
  return createHash('sha256').update(prev ?? Buffer.alloc(32)).update(content, 'utf8').digest();
}

/** A database of its own, for a test that tampers with the log. */
async function withTamperedLog(label: string, body: (db: TestDatabase) => Promise<void>): Promise<void> {
  const db = await createTestDatabase(label);
  try {
    await body(db);
  } finally {
    await db.drop();
  }
}

/** Runs `statement` with the append-only trigger off, as someone with table-owner rights could. */
async function tamper(db: TestDatabase, statement: ReturnType<typeof sql>): Promise<void> {
  await db.db.transaction().execute(async (trx) => {
    await sql`ALTER TABLE events DISABLE TRIGGER events_append_only`.execute(trx);
    await statement.execute(trx);
    await sql`ALTER TABLE events ENABLE TRIGGER events_append_only`.execute(trx);
  });
}

/** Streams a-…, b-…, c-… (so whole-log order is known), 4 events each, appended in interleaved statements. */
async function seedThreeStreams(db: TestDatabase): Promise<{ a: string; b: string; c: string }> {
  const suffix = randomUUID();
  const [a, b, c] = [`a-${suffix}`, `b-${suffix}`, `c-${suffix}`];
  await appendEvents(db.db, [ev(c, 1), ev(a, 1), ev(b, 1), ev(a, 2), ev(b, 2), ev(c, 2)]);
  await appendEvents(db.db, [ev(b, 3), ev(a, 3), ev(b, 4), ev(c, 3), ev(a, 4), ev(c, 4)]);
  return { a, b, c };
}

const BATCH_SIZES = [1, 2, 5, 1000];

async function verifyAtEveryBatchSize(db: TestDatabase, options: { streamId?: string } = {}): Promise<VerifyResult> {
  const results = await Promise.all(BATCH_SIZES.map((batchSize) => verifyHashChains(db.db, { ...options, batchSize })));
  for (const r of results.slice(1)) expect(r).toEqual(results[0]);
  return results[0] as VerifyResult;
}

describe('hash chain on append', () => {
  it('hashes every event on insert and chains each stream on its own, streams interleaved in one statement', async () => {
    const [a, b] = [`a-${randomUUID()}`, `b-${randomUUID()}`];
    // Session time zone must not matter: recorded_at goes in as UTC microseconds.
    await tdb.db.transaction().execute(async (trx) => {
      await sql`SET LOCAL TimeZone = 'Asia/Kathmandu'`.execute(trx);
      await appendEvents(trx, [ev(a, 1), ev(b, 1), ev(a, 2), ev(b, 2), ev(a, 3)]);
    });
    for (const streamId of [a, b]) {
      const rows = await rowsOf(tdb, streamId);
      let prev: Buffer | null = null;
      for (const row of rows) {
        expect(row.hash).toHaveLength(32);
        expect(row.hash.toString('hex')).toBe(expectedHash(prev, row, `{"n": ${row.stream_version}}`, '{"actor": "test"}').toString('hex'));
        prev = row.hash;
      }
    }
    expect((await rowsOf(tdb, a)).map((r) => r.stream_version)).toEqual([1, 2, 3]);
  });

  it('chains several versions of one stream written by one statement onto the stream so far', async () => {
    const id = `s-${randomUUID()}`;
    await appendEvents(tdb.db, versions(id, 1, 2));
    await appendEvents(tdb.db, versions(id, 3, 7)); // the trigger sees versions 3..6 inserted by this same statement
    const { rows } = await sql<{ ok: boolean }>`
      SELECT hash = event_hash(lag(hash) OVER w, stream_id, stream_type, stream_version, event_id, type,
                               schema_version, data, metadata, recorded_at) AS ok
        FROM events WHERE stream_id = ${id} WINDOW w AS (ORDER BY stream_version) ORDER BY stream_version`.execute(tdb.db);
    expect(rows.map((r) => r.ok)).toEqual([true, true, true, true, true, true, true]);
  });

  it('ignores a hash the writer supplies and refuses an append that would leave a gap', async () => {
    const id = `s-${randomUUID()}`;
    await sql`INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data, hash)
              VALUES (${id}, 'task', 1, ${randomUUID()}, 'A', '{}', '\\x00')`.execute(tdb.db);
    expect((await rowsOf(tdb, id))[0]?.hash).toHaveLength(32);
    // The trigger's refusal reaches the caller as the typed concurrency error (the stream is behind).
    await expect(appendEvents(tdb.db, [ev(id, 3)])).rejects.toMatchObject({ code: 'CONCURRENT_UPDATE', streamId: id, expectedVersion: 2 });
    expect(await rowsOf(tdb, id)).toHaveLength(1);
  });
});

describe('verifyHashChains', () => {
  it('passes an intact log whatever the batch size, counting every event and stream', async () => {
    await seedThreeStreams(tdb);
    const { rows } = await sql<{ events: number; streams: number }>`
      SELECT count(*)::int AS events, count(DISTINCT stream_id)::int AS streams FROM events`.execute(tdb.db);
    expect(await verifyAtEveryBatchSize(tdb)).toEqual({ checked: rows[0]?.events, streams: rows[0]?.streams, broken: null });
  });

  it('checks one stream with --stream, and reports progress after each batch', async () => {
    const { b } = await seedThreeStreams(tdb);
    const progress: VerifyProgress[] = [];
    const result = await verifyHashChains(tdb.db, { streamId: b, batchSize: 3, onProgress: (p) => progress.push(p) });
    expect(result).toEqual({ checked: 4, streams: 1, broken: null });
    expect(progress).toEqual([
      { checked: 3, streams: 1, streamId: b, streamVersion: 3 },
      { checked: 4, streams: 1, streamId: b, streamVersion: 4 },
    ]);
    expect(await verifyHashChains(tdb.db, { streamId: `none-${randomUUID()}` })).toEqual({ checked: 0, streams: 0, broken: null });
  });

  it('reports an event edited with the append-only trigger disabled as the first broken link', async () => {
    await withTamperedLog('audit_edit', async (db) => {
      const { b, c } = await seedThreeStreams(db);
      const target = (await rowsOf(db, b))[1] as HashRow;
      await tamper(db, sql`UPDATE events SET data = '{"n": 666}' WHERE stream_id = ${b} AND stream_version = 2`);
      await tamper(db, sql`UPDATE events SET type = 'Forged' WHERE stream_id = ${c} AND stream_version = 1`); // later in the walk
      const result = await verifyAtEveryBatchSize(db);
      expect(result.broken).toEqual({
        position: target.position,
        streamId: b,
        streamVersion: 2,
        eventId: target.event_id,
        kind: 'hash-mismatch',
        expected: expect.stringMatching(/^[0-9a-f]{64}$/) as string,
        actual: target.hash.toString('hex'), // the hash is untouched: only the content changed
        reason: expect.stringContaining('the event was changed') as string,
      });
      expect(result.broken?.expected).not.toBe(result.broken?.actual);
      expect(result).toMatchObject({ checked: 4 + 2, streams: 2 }); // all of a-…, then b-… up to version 2
      expect((await verifyHashChains(db.db, { streamId: c })).broken).toMatchObject({ streamId: c, streamVersion: 1, kind: 'hash-mismatch' });
    });
  });

  it('reports a deleted event as a gap at its successor, and a deleted first event at the new first one', async () => {
    await withTamperedLog('audit_gap', async (db) => {
      const { a, b } = await seedThreeStreams(db);
      const [aRows, bRows] = [await rowsOf(db, a), await rowsOf(db, b)];
      await tamper(db, sql`DELETE FROM events WHERE stream_id = ${b} AND stream_version = 3`);
      await tamper(db, sql`DELETE FROM events WHERE stream_id = ${a} AND stream_version IN (1, 2)`);
      expect((await verifyAtEveryBatchSize(db)).broken).toMatchObject({
        streamId: a,
        streamVersion: 3,
        eventId: aRows[2]?.event_id,
        kind: 'gap',
        reason: 'versions 1–2 are missing (the stream starts at version 3)',
      });
      const inB = await verifyAtEveryBatchSize(db, { streamId: b });
      expect(inB).toMatchObject({ checked: 3, streams: 1 });
      expect(inB.broken).toMatchObject({
        streamId: b,
        streamVersion: 4,
        eventId: bRows[3]?.event_id,
        kind: 'gap',
        actual: bRows[3]?.hash.toString('hex'),
        reason: 'version 3 is missing (the stream goes from version 2 to version 4)',
      });
    });
  });

  it('catches a forged hash that is right for its own event at the successor', async () => {
    await withTamperedLog('audit_forge', async (db) => {
      const { b } = await seedThreeStreams(db);
      // Rewrite version 2 and give it the hash it would have had: its own link holds...
      await tamper(
        db,
        sql`UPDATE events e SET data = '{"n": 666}',
                  hash = event_hash(p.hash, e.stream_id, e.stream_type, e.stream_version, e.event_id, e.type,
                                    e.schema_version, '{"n": 666}', e.metadata, e.recorded_at)
             FROM events p
            WHERE e.stream_id = ${b} AND e.stream_version = 2 AND p.stream_id = e.stream_id AND p.stream_version = 1`,
      );
      // ...but version 3 was chained to the old hash.
      const result = await verifyAtEveryBatchSize(db);
      expect(result.broken).toMatchObject({ streamId: b, streamVersion: 3, kind: 'hash-mismatch' });
      expect(result.broken?.reason).toMatch(/version 2's hash was/);
      expect(result).toMatchObject({ checked: 4 + 3, streams: 2 });
    });
  });

  it('rejects a batch size below 1', async () => {
    await expect(verifyHashChains(tdb.db, { batchSize: 0 })).rejects.toThrow(RangeError);
  });
});

describe('formatAuditReport', () => {
  it('says ok in one line when every chain holds', () => {
    expect(formatAuditReport({ checked: 12, streams: 3, broken: null })).toBe('ok: 12 events in 3 streams, every chain intact\n');
    expect(formatAuditReport({ checked: 1, streams: 1, broken: null })).toBe('ok: 1 event in 1 stream, every chain intact\n');
    expect(formatAuditReport({ checked: 0, streams: 0, broken: null }, { streamId: 'x' })).toBe('ok: 0 events in 0 streams, every chain intact (stream x has no events)\n');
  });

  it('names the first broken link in two lines', () => {
    const text = formatAuditReport({
      checked: 6,
      streams: 2,
      broken: {
        position: 42,
        streamId: 'b-1',
        streamVersion: 2,
        eventId: '00000000-0000-4000-8000-000000000000',
        kind: 'hash-mismatch',
        expected: 'ab'.repeat(32),
        actual: 'cd'.repeat(32),
        reason: 'its stored hash is not the hash of its content and version 1\'s stored hash: the event was changed, or version 1\'s hash was',
      },
    });
    expect(text.split('\n')).toEqual([
      "BROKEN: stream b-1 version 2 (position 42, event 00000000-0000-4000-8000-000000000000): its stored hash is not the hash of its content and version 1's stored hash: the event was changed, or version 1's hash was",
      `  hash-mismatch; expected hash ${'ab'.repeat(32)}, stored ${'cd'.repeat(32)}; 6 events in 2 streams checked`,
      '',
    ]);
  });
});

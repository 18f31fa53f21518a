import { sql, type Kysely } from 'kysely';
import type { Database } from '../store/db.js';

/** Events per query of {@link verifyHashChains} unless told otherwise. */
export const DEFAULT_VERIFY_BATCH_SIZE = 2000;

export interface VerifyProgress {
  /** Events checked so far. */
  readonly checked: number;
  /** Streams entered so far. */
  readonly streams: number;
  /** The last stream checked (its events up to `streamVersion`). */
  readonly streamId: string;
  readonly streamVersion: number;
}

export interface VerifyOptions {
  /** Only this stream; default every stream. */
  readonly streamId?: string;
  /** Events per query; default {@link DEFAULT_VERIFY_BATCH_SIZE}. */
  readonly batchSize?: number;
  /** Called after each batch. */
  readonly onProgress?: (progress: VerifyProgress) => void;
  /** Stops the walk between batches (it then rejects with the signal's reason). */
  readonly signal?: AbortSignal;
}

/**
 * The first event whose link does not hold. `gap`: the event's predecessor in its stream is
 * missing (removed); `hash-mismatch`: its stored hash is not the hash of its content and its
 * predecessor's stored hash (it, or its predecessor's hash, was changed).
 */
export interface BrokenLink {
  readonly position: number;
  readonly streamId: string;
  readonly streamVersion: number;
  readonly eventId: string;
  readonly kind: 'gap' | 'hash-mismatch';
  /** Hex of the hash recomputed from the stored predecessor (for a gap: from the nearest one before it). */
  readonly expected: string;
  /** Hex of the stored hash. */
  readonly actual: string;
  /** One sentence for a human. */
  readonly reason: string;
}

export interface VerifyResult {
  /** Events checked, the broken one included. */
  readonly checked: number;
  /** Streams entered, the broken one's included. */
  readonly streams: number;
  readonly broken: BrokenLink | null;
}

interface ChainCursor {
  readonly streamId: string;
  readonly streamVersion: number;
  readonly hash: Buffer | null;
}

interface PageRow {
  readonly last: boolean;
  readonly position: number | string;
  readonly stream_id: string;
  readonly stream_version: number;
  readonly event_id: string;
  readonly hash: Buffer | null;
  readonly expected: Buffer | null;
  readonly new_stream: boolean;
  readonly want_version: number;
  readonly n: number;
  readonly streams: number;
}

/**
 * Walks the per-stream hash chains of `events` (migration 1700000000004_event-hash) in
 * (stream_id, stream_version) order and stops at the first broken link. Reads keyset-paged
 * batches of `batchSize` events, one statement each (no long transaction, no snapshot
 * held); the hashes are recomputed in PostgreSQL by `event_hash`, the function the insert
 * trigger uses, and only two rows per batch come back. Events appended while the walk runs
 * are checked when their stream is still ahead of it.
 *
 * What it cannot see, having no anchor outside the table: a stream whose tail was cut off,
 * a stream removed whole, or a stream rewritten from some event to its end with every
 * later hash recomputed.
 *
 * ### Examples
 * ```ts
 * const { checked, streams, broken } = await verifyHashChains(db, { onProgress: (p) => log(p) });
 * if (broken) console.log(`${broken.streamId} v${broken.streamVersion}: ${broken.reason}`);
 * ```
 */
export async function verifyHashChains(db: Kysely<Database>, options: VerifyOptions = {}): Promise<VerifyResult> {
  const batchSize = options.batchSize ?? DEFAULT_VERIFY_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be a whole number ≥ 1 (got ${batchSize})`);
  let checked = 0;
  let streams = 0;
  // The last event checked: the keyset cursor, and the predecessor of the next batch's first event.
  let prev = null as ChainCursor | null;

  for (;;) {
    options.signal?.throwIfAborted();
    const afterStream: string = prev?.streamId ?? options.streamId ?? '';
    const afterVersion: number = prev?.streamVersion ?? 0;
    // Raw SQL: window functions, a row-value keyset and the shared event_hash function, on a
    // column (hash) the shared Database type does not list. '' sorts before every stream id.
    const where =
      options.streamId === undefined
        ? sql`(stream_id, stream_version) > (${afterStream}::text, ${afterVersion}::int)`
        : sql`stream_id = ${options.streamId}::text AND stream_version > ${afterVersion}::int`;
    const { rows } = await sql<PageRow>`
      WITH page AS (
        SELECT e.*,
               lag(e.stream_id, 1, ${prev?.streamId ?? null}::text) OVER w IS DISTINCT FROM e.stream_id AS new_stream,
               lag(e.stream_version, 1, ${prev?.streamVersion ?? null}::int) OVER w AS prev_version,
               lag(e.hash, 1, ${prev?.hash ?? null}::bytea) OVER w AS prev_hash,
               (row_number() OVER w)::int AS n
          FROM (SELECT position, stream_id, stream_type, stream_version, event_id, type, schema_version,
                       data, metadata, recorded_at, hash
                  FROM events WHERE ${where}
                 ORDER BY stream_id, stream_version
                 LIMIT ${batchSize}::int) e
        WINDOW w AS (ORDER BY e.stream_id, e.stream_version)
      ), checked AS (
        SELECT p.position, p.stream_id, p.stream_version, p.event_id, p.hash, p.new_stream, p.n,
               CASE WHEN p.new_stream THEN 1 ELSE p.prev_version + 1 END AS want_version,
               event_hash(CASE WHEN p.new_stream THEN NULL ELSE p.prev_hash END, p.stream_id, p.stream_type,
                          p.stream_version, p.event_id, p.type, p.schema_version, p.data, p.metadata,
                          p.recorded_at) AS expected,
               (count(*) FILTER (WHERE p.new_stream) OVER (ORDER BY p.n))::int AS streams
          FROM page p
      )
      (SELECT false AS last, * FROM checked
        WHERE stream_version <> want_version OR hash IS DISTINCT FROM expected
        ORDER BY n LIMIT 1)
      UNION ALL
      (SELECT true AS last, * FROM checked ORDER BY n DESC LIMIT 1)`.execute(db);

    const last = rows.find((r) => r.last);
    if (last === undefined) break; // no events after the cursor
    const broken = rows.find((r) => !r.last);
    if (broken !== undefined) {
      return { checked: checked + broken.n, streams: streams + broken.streams, broken: toBrokenLink(broken) };
    }
    checked += last.n;
    streams += last.streams;
    prev = { streamId: last.stream_id, streamVersion: last.stream_version, hash: last.hash };
    options.onProgress?.({ checked, streams, streamId: last.stream_id, streamVersion: last.stream_version });
    if (last.n < batchSize) break;
  }
  return { checked, streams, broken: null };
}

function toBrokenLink(row: PageRow): BrokenLink {
  const hex = (b: Buffer | null) => (b === null ? '' : b.toString('hex'));
  const common = {
    position: Number(row.position),
    streamId: row.stream_id,
    streamVersion: row.stream_version,
    eventId: row.event_id,
    expected: hex(row.expected),
    actual: hex(row.hash),
  };
  if (row.stream_version !== row.want_version) {
    const missing = row.want_version === row.stream_version - 1 ? `version ${row.want_version} is` : `versions ${row.want_version}–${row.stream_version - 1} are`;
    const context = row.new_stream ? 'the stream starts at' : `the stream goes from version ${row.want_version - 1} to`;
    return { ...common, kind: 'gap', reason: `${missing} missing (${context} version ${row.stream_version})` };
  }
  const reason =
    row.hash === null
      ? 'the event has no hash'
      : row.new_stream
        ? 'its stored hash is not the hash of its content: the event was changed'
        : `its stored hash is not the hash of its content and version ${row.stream_version - 1}'s stored hash: the event was changed, or version ${row.stream_version - 1}'s hash was`;
  return { ...common, kind: 'hash-mismatch', reason };
}

import { sql, type Kysely, type Transaction } from 'kysely';
import { ConcurrencyError } from '../domain/errors.js';
import type { Database } from './db.js';

export type Executor = Kysely<Database> | Transaction<Database>;

/** Who and why, stored with every event. */
export interface EventMetadata {
  readonly tenant?: string;
  readonly actor?: string;
  readonly traceId?: string;
  readonly correlationId?: string;
  readonly causationId?: string;
  readonly [key: string]: unknown;
}

export interface NewEvent {
  readonly streamId: string;
  readonly streamType: string;
  /** The version this event gives its stream: expected version + its index + 1. */
  readonly streamVersion: number;
  readonly eventId: string;
  readonly type: string;
  readonly data: unknown;
  readonly metadata: EventMetadata;
}

export interface StoredEvent extends NewEvent {
  readonly position: number;
  readonly schemaVersion: number;
  readonly recordedAt: Date;
}

/**
 * Appends events of any number of streams in one statement. A stream whose
 * version was taken by a concurrent writer fails the whole statement with a
 * ConcurrencyError (so the caller's transaction writes nothing).
 * Returns the global positions, in input order.
 */
export async function appendEvents(db: Executor, events: readonly NewEvent[]): Promise<number[]> {
  if (events.length === 0) return [];
  try {
    // unnest: one statement and five array parameters whatever the batch size.
    const result = await sql<{ position: number }>`
      INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data, metadata)
      SELECT stream_id, stream_type, stream_version, event_id, type, data, metadata FROM unnest(
        ${events.map((e) => e.streamId)}::text[],
        ${events.map((e) => e.streamType)}::text[],
        ${events.map((e) => e.streamVersion)}::int[],
        ${events.map((e) => e.eventId)}::uuid[],
        ${events.map((e) => e.type)}::text[],
        ${events.map((e) => JSON.stringify(e.data))}::jsonb[],
        ${events.map((e) => JSON.stringify(e.metadata))}::jsonb[]
      ) WITH ORDINALITY AS t(stream_id, stream_type, stream_version, event_id, type, data, metadata, n)
      ORDER BY n
      RETURNING position`.execute(db);
    return result.rows.map((r) => r.position);
  } catch (error) {
    throw asConcurrencyError(error, events) ?? error;
  }
}

/** Appends to one stream, expecting it to be at `expectedVersion` (0 for a new stream). */
export async function appendToStream(
  db: Executor,
  stream: { id: string; type: string; expectedVersion: number },
  events: readonly { eventId: string; type: string; data: unknown; metadata: EventMetadata }[],
): Promise<number[]> {
  return appendEvents(
    db,
    events.map((e, i) => ({ ...e, streamId: stream.id, streamType: stream.type, streamVersion: stream.expectedVersion + i + 1 })),
  );
}

export async function readStream(db: Executor, streamId: string, fromVersion = 1): Promise<StoredEvent[]> {
  const rows = await db
    .selectFrom('events')
    .selectAll()
    .where('stream_id', '=', streamId)
    .where('stream_version', '>=', fromVersion)
    .orderBy('stream_version')
    .execute();
  return rows.map(toStoredEvent);
}

/**
 * Reads the log in position order after `afterPosition`, only from transactions
 * that finished before every transaction still running began
 * (`pg_snapshot_xmin`): a lower position can commit after a higher one is
 * read, and this bound keeps a tailing reader from skipping it.
 */
export async function readAll(db: Executor, afterPosition: number, limit: number): Promise<StoredEvent[]> {
  const rows = await db
    .selectFrom('events')
    .selectAll()
    .where('position', '>', afterPosition)
    .where(sql<boolean>`transaction_id < pg_snapshot_xmin(pg_current_snapshot())`)
    .orderBy('position')
    .limit(limit)
    .execute();
  return rows.map(toStoredEvent);
}

function toStoredEvent(row: {
  position: number;
  stream_id: string;
  stream_type: string;
  stream_version: number;
  event_id: string;
  type: string;
  schema_version: number;
  data: unknown;
  metadata: unknown;
  recorded_at: Date;
}): StoredEvent {
  return {
    position: row.position,
    streamId: row.stream_id,
    streamType: row.stream_type,
    streamVersion: row.stream_version,
    eventId: row.event_id,
    type: row.type,
    schemaVersion: row.schema_version,
    data: row.data,
    metadata: row.metadata as EventMetadata,
    recordedAt: row.recorded_at,
  };
}

function asConcurrencyError(error: unknown, events: readonly NewEvent[]): ConcurrencyError | undefined {
  const e = error as { code?: string; constraint?: string; detail?: string };
  if (e.code !== '23505' || e.constraint !== 'events_stream_version_key') return undefined;
  // detail: Key (stream_id, stream_version)=(<id>, <version>) already exists.
  const match = /=\((.*), (\d+)\)/.exec(e.detail ?? '');
  const streamId = match?.[1] ?? events[0]?.streamId ?? 'unknown';
  const version = Number(match?.[2] ?? events[0]?.streamVersion ?? 1);
  return new ConcurrencyError(streamId, version - 1);
}

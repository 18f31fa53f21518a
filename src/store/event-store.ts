import { sql, type Kysely, type Transaction } from 'kysely';
import { ConcurrencyError } from '../domain/errors.js';
import { currentSchemaVersion, upcast } from '../domain/event-versions.js';
import type { Database } from './db.js';
import { jsonRecordset, type Column } from './json-rows.js';

export type Executor = Kysely<Database> | Transaction<Database>;

/** Who and why, stored with every event. */
export interface EventMetadata {
  readonly tenant?: string;
  readonly actor?: string;
  /** The task's trace id (W3C, 32 hex digits) and the `traceparent` its messages carry (docs/tracing.md). */
  readonly traceId?: string;
  readonly traceparent?: string;
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
  /** The schema version `data` was stored at; `data` itself is already upcast to the current one. */
  readonly storedSchemaVersion: number;
  readonly recordedAt: Date;
  /** The writing transaction (xid8, as text): with `position`, the reading order of the log. */
  readonly transactionId: string;
}

/** Where a reader of the whole log stands: the last event it has read. */
export interface LogCursor {
  readonly transactionId: string;
  readonly position: number;
}

export const LOG_START: LogCursor = { transactionId: '0', position: 0 };

const EVENT_COLUMNS: readonly Column<NewEvent>[] = [
  { name: 'stream_id', type: 'text', value: (e) => e.streamId },
  { name: 'stream_type', type: 'text', value: (e) => e.streamType },
  { name: 'stream_version', type: 'int', value: (e) => e.streamVersion },
  { name: 'event_id', type: 'uuid', value: (e) => e.eventId },
  { name: 'type', type: 'text', value: (e) => e.type },
  { name: 'schema_version', type: 'smallint', value: (e) => currentSchemaVersion(e.type) },
  { name: 'data', type: 'jsonb', value: (e) => JSON.stringify(e.data) ?? null },
  { name: 'metadata', type: 'jsonb', value: (e) => JSON.stringify(e.metadata) },
];

/**
 * Appends events of any number of streams in one statement. A stream whose
 * version was taken by a concurrent writer fails the whole statement with a
 * ConcurrencyError (so the caller's transaction writes nothing).
 * Returns the global positions, in input order.
 */
export async function appendEvents(db: Executor, events: readonly NewEvent[]): Promise<number[]> {
  if (events.length === 0) return [];
  try {
    const result = await insertEvents(events).execute(db);
    return positionsInOrder(events, result.rows);
  } catch (error) {
    throw asConcurrencyError(error, events) ?? error;
  }
}

/**
 * The INSERT of `events` in input order (so a statement may carry versions v, v+1, ... of a
 * stream), returning each row's event_id and position: run alone by appendEvents, or as a
 * data-modifying CTE of a larger write (the task command path). One JSON parameter for the
 * whole batch (see jsonRecordset). Map its errors with asConcurrencyError.
 */
export function insertEvents(events: readonly NewEvent[]) {
  return sql<{ event_id: string; position: number }>`
      INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, schema_version, data, metadata)
      SELECT stream_id, stream_type, stream_version, event_id, type, schema_version, data, metadata
        FROM ${jsonRecordset(EVENT_COLUMNS, events, { ordinality: true })}
      ORDER BY n
      RETURNING event_id, position`;
}

/** The positions of `events`, in input order, from insertEvents' rows. */
export function positionsInOrder(events: readonly NewEvent[], rows: readonly { event_id: string; position: number }[]): number[] {
  const byId = new Map(rows.map((r) => [r.event_id, r.position]));
  return events.map((e) => {
    const position = byId.get(e.eventId);
    if (position === undefined) throw new Error(`event ${e.eventId} was not stored`);
    return position;
  });
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
 * Reads the whole log after `after`, in (transaction id, position) order, only from
 * transactions that finished before every transaction still running began
 * (`pg_snapshot_xmin`). Reading by position alone has gaps: a transaction can take a lower
 * position and commit after a higher one has been read (even when its xid is the higher one,
 * e.g. when it wrote something else first). Every transaction not yet below the horizon has an
 * xid at or above it, so a cursor on (xid, position) never passes over an event that commits
 * later.
 *
 * The price: the order is transaction order, not position order. Within one stream it can
 * differ (a transaction that took its xid early can append the next version after a younger
 * one appended the previous): a reader that folds streams applies each stream's events by
 * stream_version (see projections/rebuild).
 *
 * `settled: false` drops the horizon: every committed event is returned. Only for a reader that
 * holds locks which keep the writers it cares about out (the rebuild's final swap).
 */
export async function readAll(db: Executor, after: LogCursor, limit: number, opts: { settled?: boolean } = {}): Promise<StoredEvent[]> {
  const rows = await logAfter(db, after, limit, opts).selectAll().execute();
  return rows.map(toStoredEvent);
}

/** The events a fold of the log reads: readAll's, without what no fold looks at. */
export interface FoldEvent {
  readonly position: number;
  readonly streamId: string;
  readonly streamType: string;
  readonly streamVersion: number;
  readonly type: string;
  /** Upcast to the current schema version. */
  readonly data: unknown;
  /** Only when asked for (`metadata: true`). */
  readonly metadata?: EventMetadata;
  readonly transactionId: string;
}

/**
 * readAll's events and order with only the columns a fold uses (projections/rebuild): the
 * event id, recorded_at and the hashes are not read, the metadata only with `metadata: true`.
 * Each of those is parsed per row by the client (a Date, a Buffer, a JSON document): about a
 * fifth of a rebuild's CPU.
 */
export async function readAllForFold(db: Executor, after: LogCursor, limit: number, opts: { settled?: boolean; metadata?: boolean } = {}): Promise<FoldEvent[]> {
  const rows = await logAfter(db, after, limit, opts)
    .select(['position', 'stream_id', 'stream_type', 'stream_version', 'type', 'schema_version', 'data', 'transaction_id'])
    .$if(opts.metadata === true, (q) => q.select('metadata'))
    .execute();
  return rows.map((row) => ({
    position: row.position,
    streamId: row.stream_id,
    streamType: row.stream_type,
    streamVersion: row.stream_version,
    type: row.type,
    data: upcast(row.type, row.schema_version, row.data),
    ...(row.metadata !== undefined ? { metadata: row.metadata as EventMetadata } : {}),
    transactionId: String(row.transaction_id),
  }));
}

/** The log after `after` in readAll's order, below its horizon unless `settled: false`. */
function logAfter(db: Executor, after: LogCursor, limit: number, opts: { settled?: boolean }) {
  let query = db.selectFrom('events').where(sql<boolean>`(transaction_id, position) > (${after.transactionId}::xid8, ${after.position}::bigint)`);
  if (opts.settled !== false) query = query.where(sql<boolean>`transaction_id < pg_snapshot_xmin(pg_current_snapshot())`);
  return query.orderBy('transaction_id').orderBy('position').limit(limit);
}

/** The events at the given positions, in position order. */
export async function readPositions(db: Executor, positions: readonly number[]): Promise<StoredEvent[]> {
  if (positions.length === 0) return [];
  const rows = await db.selectFrom('events').selectAll().where('position', '=', sql<number>`ANY(${[...positions]}::bigint[])`).orderBy('position').execute();
  return rows.map(toStoredEvent);
}

/** The cursor just past `events` (or `after` when there are none). */
export function cursorAfter(after: LogCursor, events: readonly Pick<StoredEvent, 'transactionId' | 'position'>[]): LogCursor {
  const last = events.at(-1);
  return last ? { transactionId: last.transactionId, position: last.position } : after;
}

/** A row of `events` as read by the store (data upcast to its current schema version). */
export function toStoredEvent(row: {
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
  transaction_id: string;
}): StoredEvent {
  return {
    position: row.position,
    streamId: row.stream_id,
    streamType: row.stream_type,
    streamVersion: row.stream_version,
    eventId: row.event_id,
    type: row.type,
    storedSchemaVersion: row.schema_version,
    data: upcast(row.type, row.schema_version, row.data),
    metadata: row.metadata as EventMetadata,
    recordedAt: row.recorded_at,
    transactionId: String(row.transaction_id),
  };
}

/** A write that lost a stream version to a concurrent writer, as the typed ConcurrencyError (else undefined). */
export function asConcurrencyError(error: unknown, events: readonly NewEvent[]): ConcurrencyError | undefined {
  const e = error as { code?: string; constraint?: string; detail?: string; message?: string };
  // The hash-chain trigger refuses a version whose predecessor is missing: the stream is behind
  // the expected version, which is a concurrency conflict too (and the log stays gap-free).
  const behind = e.code === '23503' ? /stream (.*) has no version (\d+),/.exec(e.message ?? '') : null;
  if (behind) return new ConcurrencyError(behind[1] as string, Number(behind[2]));
  if (e.code !== '23505' || e.constraint !== 'events_stream_version_key') return undefined;
  // detail: Key (stream_id, stream_version)=(<id>, <version>) already exists.
  const match = /=\((.*), (\d+)\)/.exec(e.detail ?? '');
  const streamId = match?.[1] ?? events[0]?.streamId ?? 'unknown';
  const version = Number(match?.[2] ?? events[0]?.streamVersion ?? 1);
  return new ConcurrencyError(streamId, version - 1);
}

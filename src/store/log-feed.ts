import { sql } from 'kysely';
import { cursorAfter, LOG_START, toStoredEvent, type Executor, type LogCursor, type StoredEvent } from './event-store.js';

/**
 * Reading the log live (the api's server-sent events, `fogsched events tail`): pages of the log
 * in the gap-free order of `readAll` (writing transaction, then position, only below
 * `pg_snapshot_xmin`), filtered in SQL by tenant, event type, stream and the task state an event
 * left its task in. The cursor moves past every event scanned, matching or not, so a filter that
 * matches little still costs one bounded page per read.
 */

/** An event of the feed, with what the filters looked at. */
export interface FeedEvent {
  readonly event: StoredEvent;
  /** The task's tenant (task_current), or the event's `metadata.tenant` (schedules); null for node events. */
  readonly tenant: string | null;
  /** The state the event left its task in (task_history); null for events of other streams. */
  readonly state: string | null;
}

export interface FeedFilter {
  /** Only events of this tenant's tasks and schedules; absent: every event (the CLI). */
  readonly tenant?: string;
  readonly types?: readonly string[];
  readonly streamId?: string;
  readonly state?: string;
}

export interface FeedPage {
  readonly events: readonly FeedEvent[];
  /** Past the last event scanned (matching or not). */
  readonly cursor: LogCursor;
  /** Fewer events than the page size were below the horizon: the reader is at the head. */
  readonly caughtUp: boolean;
  /**
   * Committed events wait above the horizon (an older transaction, of any database of the
   * server, is still open): they become readable when it ends, which may bring no notification.
   */
  readonly heldBack: boolean;
}

export const FEED_PAGE_SIZE = 500;

/**
 * One page of the log after `after`, in readAll's order and below the same horizon. Uses
 * events_transaction_position_idx for the scan, task_current's and events' primary keys for
 * the filters' joins (task_history is a view of events).
 */
export async function readFeedPage(db: Executor, after: LogCursor, filter: FeedFilter, limit = FEED_PAGE_SIZE): Promise<FeedPage> {
  const conditions = [sql<boolean>`true`];
  if (filter.tenant !== undefined) conditions.push(sql<boolean>`m.tenant = ${filter.tenant}`);
  if (filter.types && filter.types.length > 0) conditions.push(sql<boolean>`m.type = ANY(${[...filter.types]}::text[])`);
  if (filter.streamId !== undefined) conditions.push(sql<boolean>`m.stream_id = ${filter.streamId}`);
  if (filter.state !== undefined) conditions.push(sql<boolean>`m.state = ${filter.state}`);
  const matches = sql.join(conditions, sql` AND `);
  // The scan is readAll's (see there why the horizon); the joins only label what was scanned.
  // The CASE keeps the uuid cast away from streams that are not tasks (node:<id>, schedules).
  const { rows } = await sql<EventRow & { tenant: string | null; state: string | null; matches: boolean; is_last: boolean; scanned: number }>`
    WITH scan AS (
      SELECT * FROM events
       WHERE (transaction_id, position) > (${after.transactionId}::xid8, ${after.position}::bigint)
         AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
       ORDER BY transaction_id, position
       LIMIT ${limit}
    ), marked AS (
      SELECT s.*, COALESCE(c.tenant, CASE WHEN s.stream_type = 'schedule' THEN s.metadata->>'tenant' END) AS tenant, h.state,
             row_number() OVER (ORDER BY s.transaction_id DESC, s.position DESC) = 1 AS is_last,
             count(*) OVER () AS scanned
        FROM scan s
        LEFT JOIN task_current c ON c.task_id = CASE WHEN s.stream_type = 'task' THEN s.stream_id::uuid END
        LEFT JOIN task_history h ON h.position = s.position
    ), labelled AS (
      SELECT m.*, (${matches}) AS matches FROM marked m
    )
    SELECT * FROM labelled WHERE matches OR is_last ORDER BY transaction_id, position`.execute(db);
  const last = rows.find((r) => r.is_last);
  const cursor = last ? { transactionId: String(last.transaction_id), position: last.position } : after;
  const events = rows.filter((r) => r.matches).map((r) => ({ event: toStoredEvent(r), tenant: r.tenant, state: r.state }));
  const caughtUp = !last || Number(last.scanned) < limit;
  return { events, cursor, caughtUp, heldBack: caughtUp && (await committedAboveHorizon(db, cursor)) };
}

/** Whether events after `after` are committed but not yet below the horizon. */
async function committedAboveHorizon(db: Executor, after: LogCursor): Promise<boolean> {
  const { rows } = await sql<{ held: boolean }>`
    SELECT EXISTS (SELECT 1 FROM events
      WHERE (transaction_id, position) > (${after.transactionId}::xid8, ${after.position}::bigint)
        AND transaction_id >= pg_snapshot_xmin(pg_current_snapshot())) AS held`.execute(db);
  return rows[0]?.held === true;
}

type EventRow = Parameters<typeof toStoredEvent>[0];

/**
 * Where a reader that wants only what comes next starts: past every transaction that had
 * finished before the oldest one still running began. Events of transactions still running (or
 * committed but not yet below the horizon) are after it, so nothing new is missed; a few events
 * committed just before may be read too.
 */
export async function headCursor(db: Executor): Promise<LogCursor> {
  const { rows } = await sql<{ xmin: string }>`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin`.execute(db);
  return { transactionId: rows[0]?.xmin ?? LOG_START.transactionId, position: 0 };
}

/**
 * The cursor just past the event at `position` (a client's Last-Event-ID): everything after it in
 * the feed's order is what that client has not seen. Null when no event has that position. 0 is
 * the start of the log.
 */
export async function cursorAtPosition(db: Executor, position: number): Promise<LogCursor | null> {
  if (position === 0) return LOG_START;
  const row = await db.selectFrom('events').select(sql<string>`transaction_id::text`.as('xid')).where('position', '=', position).executeTakeFirst();
  return row ? { transactionId: row.xid, position } : null;
}

/**
 * Events of one task stream after `afterVersion`, by stream version, with the state each left
 * the task in. A stream needs no horizon: its writers lock the task's task_current row, so
 * version n + 1 is written only after version n committed.
 */
export async function readTaskFeed(db: Executor, taskId: string, afterVersion: number, limit = FEED_PAGE_SIZE): Promise<FeedEvent[]> {
  const rows = await db
    .selectFrom('events as e')
    .leftJoin('task_history as h', 'h.position', 'e.position')
    .selectAll('e')
    .select('h.state')
    .where('e.stream_id', '=', taskId)
    .where('e.stream_version', '>', afterVersion)
    .orderBy('e.stream_version')
    .limit(limit)
    .execute();
  return rows.map((r) => ({ event: toStoredEvent(r), tenant: null, state: r.state }));
}

/** The stream version of the event at `position` of task `taskId`; null when it is not one of its events. */
export async function taskVersionAt(db: Executor, taskId: string, position: number): Promise<number | null> {
  if (position === 0) return 0;
  const row = await db.selectFrom('events').select('stream_version').where('position', '=', position).where('stream_id', '=', taskId).executeTakeFirst();
  return row?.stream_version ?? null;
}

export { cursorAfter };

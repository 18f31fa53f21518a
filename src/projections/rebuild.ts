import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Kysely, PostgresDialect, sql, type PostgresPool, type PostgresPoolClient } from 'kysely';
import type pg from 'pg';
import pgCopy from 'pg-copy-streams';
import { evolve, FogschedError, initialTaskState, type TaskEvent, type TaskState } from '../domain/index.js';
import { cursorAfter, LOG_START, readAllForFold, readPositions, type Database, type Executor, type FoldEvent, type LogCursor } from '../store/index.js';
import type { Postgres } from '../infra/postgres.js';
import {
  columnList,
  CURRENT_COLUMNS,
  CURRENT_ON_CONFLICT,
  HISTORY_COLUMNS,
  LIVE_TASK_TABLES,
  loadTaskStates,
  type Column,
  type CurrentRow,
  type HistoryRow,
  type TaskTables,
} from './task-projections.js';

const { from: copyFrom } = pgCopy;

/**
 * Projection rebuild: replays the log into shadow tables while the live system keeps writing
 * and reading, then swaps them in.
 *
 * 1. Replay (no locks): read the log in batches below the safe horizon (readAll), fold each
 *    task's events, write the shadow rows and the checkpoint in one transaction per batch. A
 *    killed rebuild resumes from its checkpoint.
 * 2. Swap (one short transaction): lock the live tables against writers (EXCLUSIVE: readers go
 *    on), read every committed event past the checkpoint (no horizon: every transaction that
 *    touches the read models has finished or waits for the lock; a submit still waiting writes
 *    its rows into the new tables once they are in place), optionally compare, rename.
 *
 * Every task writer locks its task_current rows (or, for a submit, writes them) in the
 * transaction that appends its events, which is what makes step 2 sound.
 */

/** Each stored projection's shape version. Bump it when the rows a projection writes change. */
export const PROJECTION_VERSIONS = { task_current: 1 } as const;
/**
 * What a rebuild or a verify can name. task_history is a view of the log since migration 16:
 * nothing to rebuild or swap, but verify and dry-run still fold its rows and compare them with
 * what the view gives (the view's SQL against the code's evolve).
 */
export type ProjectionName = keyof typeof PROJECTION_VERSIONS | 'task_history';
export const PROJECTION_NAMES: ProjectionName[] = ['task_current', 'task_history'];
/** The projections stored in tables: what a rebuild replays and swaps by default. */
export const STORED_PROJECTIONS = Object.keys(PROJECTION_VERSIONS) as ProjectionName[];
const STORED = new Set<ProjectionName>(STORED_PROJECTIONS);

const SHADOW: TaskTables = { current: 'task_current__rebuild', history: 'task_history__rebuild' };
/** Each projection's live table, shadow table and key. */
const TABLES: Record<ProjectionName, { live: string; shadow: string; key: string }> = {
  task_current: { live: LIVE_TASK_TABLES.current, shadow: SHADOW.current, key: 'task_id' },
  task_history: { live: LIVE_TASK_TABLES.history, shadow: SHADOW.history, key: 'position' },
};
/** pg_try_advisory_lock key: one rebuild at a time. */
const REBUILD_LOCK = 0x6f6773_7262; // "fogs" "rb"
/** Task states kept between batches (most of a task's events are close together in the log). */
const CACHE_LIMIT = 100_000;

export interface RebuildProgress {
  readonly phase: 'replay' | 'swap';
  readonly applied: number;
  /** Position of the last event read, and the log's highest position when the rebuild began. */
  readonly position: number;
  readonly headPosition: number;
}

export interface RowDifference {
  readonly key: string;
  /** Column → [live value, rebuilt value]; a row missing on one side has undefined there. */
  readonly columns: Readonly<Record<string, readonly [unknown, unknown]>>;
}

export interface ProjectionComparison {
  readonly projection: ProjectionName;
  readonly liveRows: number;
  readonly rebuiltRows: number;
  /** Rows only in the live table / only in the rebuilt one (a changed row counts on both sides). */
  readonly liveOnly: number;
  readonly rebuiltOnly: number;
  readonly samples: readonly RowDifference[];
}

export interface RebuildOptions {
  readonly projections?: readonly ProjectionName[];
  readonly batchSize?: number;
  /** Compare the rebuilt tables with the live ones under the swap lock; swap only when equal. */
  readonly verify?: boolean;
  /** Replay and compare, then drop the shadow tables: the live tables are left alone. */
  readonly dryRun?: boolean;
  readonly maxDifferences?: number;
  readonly onProgress?: (progress: RebuildProgress) => void;
  readonly signal?: AbortSignal;
}

export interface RebuildReport {
  readonly projections: readonly ProjectionName[];
  readonly resumed: boolean;
  readonly events: number;
  readonly durationMs: number;
  readonly swapped: boolean;
  /** Present when verify or dry-run compared the tables. */
  readonly comparisons: readonly ProjectionComparison[] | null;
}

export class RebuildRunningError extends FogschedError {
  constructor() {
    super({ code: 'REBUILD_RUNNING', status: 409, message: 'another projection rebuild is running on this database; wait for it or stop it' });
  }
}

/**
 * The replay in memory: task states (those not yet written to the shadow table always among them)
 * and the rows not yet written. What is not written is lost with the process; the checkpoint
 * says what was.
 */
interface ReplayState {
  /** The last event folded. */
  cursor: LogCursor;
  held: FoldEvent[];
  applied: number;
  /** Events folded since the last checkpoint. */
  pending: number;
  readonly cache: Map<string, TaskState>;
  readonly dirty: Set<string>;
  readonly seqs: Map<string, number>;
  /** The history rows folded since the last checkpoint; null when task_history is not compared (nothing would read them). */
  history: HistoryRow[] | null;
}

function freshState(cursor: LogCursor, held: FoldEvent[], applied: number, keepHistory: boolean): ReplayState {
  return { cursor, held, applied, pending: 0, cache: new Map(), dirty: new Set(), seqs: new Map(), history: keepHistory ? [] : null };
}

export async function rebuildProjections(pg: Postgres, options: RebuildOptions = {}): Promise<RebuildReport> {
  const compare = options.verify === true || options.dryRun === true;
  // The view is folded only to be compared: a plain rebuild has nothing to write for it.
  // By default a dry run (verify) checks the view too; a rebuild, with or without --verify, the
  // stored tables (so a `rebuild --verify` resumes a killed plain rebuild).
  const projections = normalise(options.projections ?? (options.dryRun === true ? PROJECTION_NAMES : STORED_PROJECTIONS)).filter((p) => STORED.has(p) || compare);
  if (projections.length === 0) return { projections, resumed: false, events: 0, durationMs: 0, swapped: false, comparisons: null };
  const batchSize = options.batchSize ?? 10_000;
  const checkpointEvery = batchSize * 10;
  const started = Date.now();
  const lockClient = await pg.pool.connect();
  try {
    const { rows } = await lockClient.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [REBUILD_LOCK]);
    if (!rows[0]?.ok) throw new RebuildRunningError();
    try {
      const { state, resumed } = await prepare(pg, projections);
      const headPosition = await maxPosition(pg.db);
      const progress = (phase: RebuildProgress['phase']) =>
        options.onProgress?.({ phase, applied: state.applied, position: state.cursor.position, headPosition });

      // Replay below the horizon until a batch comes back short: the log's head is near. The
      // next batch is read while this one is folded and written (separate connections); rows
      // and the checkpoint are written together every `checkpointEvery` events, with COPY.
      const writer = await connect(pg.pool);
      try {
        // The metadata only goes into task_history's rows, read when that projection is compared.
        const read = (after: LogCursor) => readAllForFold(pg.db, after, batchSize, { metadata: state.history !== null });
        let next = read(state.cursor);
        next.catch(() => {});
        // One checkpoint written at a time, in order, while the next batches are folded.
        let writing: Promise<void> = Promise.resolve();
        for (;;) {
          options.signal?.throwIfAborted();
          const events = await next;
          const short = events.length < batchSize;
          if (!short) {
            next = read(cursorAfter(state.cursor, events));
            next.catch(() => {}); // awaited (and thrown) at the top of the loop
          }
          await fold(pg.db, events, state);
          if (short || state.pending >= checkpointEvery) {
            const checkpoint = takeCheckpoint(state);
            await writing;
            evictWritten(state, checkpoint);
            writing = inTransaction(writer.client, () => writeCheckpoint(writer, checkpoint, projections));
            writing.catch(() => {}); // awaited (and thrown) at the next checkpoint
            progress('replay');
          }
          if (short) break;
        }
        await writing;
      } finally {
        writer.release();
      }
      await buildIndexes(pg.db);
      await sql`ANALYZE ${sql.table(SHADOW.current)}`.execute(pg.db);
      if (projections.includes('task_history')) await sql`ANALYZE ${sql.table(SHADOW.history)}`.execute(pg.db);

      const outcome = await swapPhase(pg, state, projections, {
        compare,
        swap: options.dryRun !== true,
        maxDifferences: options.maxDifferences ?? 10,
        batchSize,
      });
      progress('swap');
      if (!outcome.swapped) await dropShadow(pg.db);
      return {
        projections,
        resumed,
        events: state.applied,
        durationMs: Date.now() - started,
        swapped: outcome.swapped,
        comparisons: outcome.comparisons,
      };
    } finally {
      await lockClient.query('SELECT pg_advisory_unlock($1)', [REBUILD_LOCK]).catch(() => {});
    }
  } finally {
    lockClient.release();
  }
}

/** Projections whose stored shape version is older than the code's. */
export async function staleProjections(db: Executor): Promise<{ projection: ProjectionName; stored: number | null; code: number }[]> {
  const rows = await db.selectFrom('projection_versions').select(['projection', 'version']).execute();
  const stored = new Map(rows.map((r) => [r.projection, r.version]));
  return (Object.keys(PROJECTION_VERSIONS) as (keyof typeof PROJECTION_VERSIONS)[]).flatMap((projection) => {
    const version = stored.get(projection) ?? null;
    const code = PROJECTION_VERSIONS[projection];
    return version === null || version < code ? [{ projection, stored: version, code }] : [];
  });
}

function normalise(projections: readonly string[]): ProjectionName[] {
  const unknown = projections.filter((p) => !(PROJECTION_NAMES as string[]).includes(p));
  if (unknown.length > 0) {
    throw new FogschedError({
      code: 'VALIDATION_FAILED',
      status: 400,
      message: `unknown projection ${unknown.join(', ')}; projections are ${PROJECTION_NAMES.join(', ')} (node_metrics holds samples, not events: it is not rebuilt from the log)`,
    });
  }
  return PROJECTION_NAMES.filter((p) => projections.includes(p));
}

/** Resumes the rebuild in progress when it is for the same projections, else starts afresh. */
async function prepare(pg: Postgres, projections: readonly ProjectionName[]): Promise<{ state: ReplayState; resumed: boolean }> {
  const { rows } = await sql<{ projections: string[]; last_transaction_id: string; last_position: string; held_positions: string[]; events_applied: string }>`
    SELECT projections, last_transaction_id::text, last_position, held_positions, events_applied FROM projection_rebuilds`.execute(pg.db);
  const saved = rows[0];
  const shadowExists = await tableExists(pg.db, SHADOW.current);
  if (saved && shadowExists && sameSet(saved.projections, projections)) {
    const held = await readPositions(pg.db, saved.held_positions.map(Number));
    return {
      resumed: true,
      state: freshState({ transactionId: saved.last_transaction_id, position: Number(saved.last_position) }, held, Number(saved.events_applied), projections.includes('task_history')),
    };
  }
  await pg.db.transaction().execute(async (trx) => {
    await dropShadowIn(trx);
    // Indexes slow a bulk load down: only task_current's primary key (the fold's upsert needs
    // it) now; the rest are built once the replay is done (buildIndexes).
    await sql`CREATE TABLE ${sql.table(SHADOW.current)} (LIKE task_current INCLUDING ALL EXCLUDING INDEXES)`.execute(trx);
    if (projections.includes('task_history')) await sql`CREATE TABLE ${sql.table(SHADOW.history)} (LIKE task_history)`.execute(trx);
    await sql`ALTER TABLE ${sql.table(SHADOW.current)} ADD PRIMARY KEY (task_id)`.execute(trx);
    await sql`INSERT INTO projection_rebuilds (projections) VALUES (${[...projections]}::text[])`.execute(trx);
  });
  return { resumed: false, state: freshState(LOG_START, [], 0, projections.includes('task_history')) };
}

/**
 * Folds `events` (in log reading order) into the states in memory. Each stream's events are
 * applied by stream_version: one already applied is skipped, one that arrives ahead of a
 * missing earlier version is held until that version is read.
 */
async function fold(db: Executor, events: readonly FoldEvent[], state: ReplayState): Promise<void> {
  state.cursor = cursorAfter(state.cursor, events);
  const byStream = new Map<string, FoldEvent[]>();
  for (const e of [...state.held, ...events]) {
    if (e.streamType !== 'task') continue;
    const list = byStream.get(e.streamId);
    if (list) list.push(e);
    else byStream.set(e.streamId, [e]);
  }
  state.held = [];
  for (const list of byStream.values()) list.sort((a, b) => a.streamVersion - b.streamVersion);
  // States written at an earlier checkpoint (a changed state stays in the cache until written).
  // A stream whose first version is here has none: a checkpoint writes states with the cursor
  // past their events, so the shadow table holds no state of a stream not read before.
  const missing = [...byStream].filter(([id, list]) => list[0]?.streamVersion !== 1 && !state.cache.has(id)).map(([id]) => id);
  for (const [id, s] of await loadTaskStates(db, missing, { forUpdate: false, table: SHADOW.current })) state.cache.set(id, s);

  for (const [id, list] of byStream) {
    let current = state.cache.get(id) ?? initialTaskState(id);
    for (const [i, e] of list.entries()) {
      if (e.streamVersion <= current.version) continue;
      if (e.streamVersion > current.version + 1) {
        state.held.push(...list.slice(i));
        break;
      }
      const event = { type: e.type, data: e.data } as TaskEvent;
      current = evolve(current, event);
      if (event.type === 'TaskSubmitted') state.seqs.set(id, e.position);
      state.history?.push({ position: e.position, state: current, event, metadata: e.metadata ?? {} });
      state.applied++;
      state.pending++;
      state.dirty.add(id);
    }
    state.cache.set(id, current);
  }
}

/** What was folded since the last checkpoint, taken out of the replay state to be written. */
interface Checkpoint {
  readonly cursor: LogCursor;
  readonly held: readonly number[];
  readonly applied: number;
  readonly history: readonly HistoryRow[];
  readonly rows: readonly CurrentRow[];
}

function takeCheckpoint(state: ReplayState): Checkpoint {
  const checkpoint: Checkpoint = {
    cursor: state.cursor,
    held: state.held.map((e) => e.position),
    applied: state.applied,
    history: state.history ?? [],
    rows: [...state.dirty].map((id) => ({ state: state.cache.get(id) as TaskState, seq: state.seqs.get(id) ?? 0 })),
  };
  if (state.history) state.history = [];
  state.dirty.clear();
  state.seqs.clear();
  state.pending = 0;
  return checkpoint;
}

/**
 * Bounds the cache once every earlier checkpoint is written: drops the states that are in the
 * shadow table, keeping those of `writing` and those changed since.
 */
function evictWritten(state: ReplayState, writing: Checkpoint): void {
  if (state.cache.size <= CACHE_LIMIT) return;
  const keep = new Set([...state.dirty, ...writing.rows.map((r) => r.state.taskId)]);
  for (const id of state.cache.keys()) if (!keep.has(id)) state.cache.delete(id);
}

/** Writes a checkpoint's rows and position in the caller's transaction. */
async function writeCheckpoint(conn: Connection, cp: Checkpoint, projections: readonly ProjectionName[]): Promise<void> {
  const { client, db } = conn;
  if (projections.includes('task_history')) await copyRows(client, SHADOW.history, HISTORY_COLUMNS, cp.history);
  if (cp.rows.length > 0) {
    await client.query(`CREATE TEMP TABLE IF NOT EXISTS rebuild_stage (LIKE ${quote(SHADOW.current)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS`);
    await copyRows(client, 'rebuild_stage', CURRENT_COLUMNS, cp.rows);
    const cols = columnList(CURRENT_COLUMNS);
    await sql`INSERT INTO ${sql.table(SHADOW.current)} AS cur (${cols}) SELECT ${cols} FROM rebuild_stage ${CURRENT_ON_CONFLICT}`.execute(db);
    await client.query('DELETE FROM rebuild_stage');
  }
  await sql`
    UPDATE projection_rebuilds SET
      last_transaction_id = ${cp.cursor.transactionId}::xid8, last_position = ${cp.cursor.position},
      held_positions = ${[...cp.held]}::bigint[], events_applied = ${cp.applied}, updated_at = now()`.execute(db);
}

/** COPY ... FROM STDIN of the rows in text format (several times faster than INSERT for a bulk load). */
async function copyRows<T>(client: pg.PoolClient, table: string, columns: readonly Column<T>[], rows: readonly T[]): Promise<void> {
  if (rows.length === 0) return;
  const stream = client.query(copyFrom(`COPY ${quote(table)} (${columns.map((c) => quote(c.name)).join(', ')}) FROM STDIN`));
  // Values of these types never hold a backslash, tab or newline: no escaping needed.
  const plain = columns.map((c) => PLAIN_TYPES.has(c.type));
  function* chunks() {
    let chunk = '';
    for (const row of rows) {
      for (let i = 0; i < columns.length; i++) {
        const value = (columns[i] as Column<T>).value(row);
        if (i > 0) chunk += '\t';
        chunk += value === null || value === undefined ? '\\N' : plain[i] ? String(value) : copyText(value);
      }
      chunk += '\n';
      if (chunk.length > 1 << 20) {
        yield chunk;
        chunk = '';
      }
    }
    if (chunk) yield chunk;
  }
  await pipeline(Readable.from(chunks()), stream);
}

const PLAIN_TYPES = new Set(['uuid', 'bigint', 'int', 'timestamptz']);

/** A value in COPY's text format: \N for null, backslash escapes for backslash, tab, newline, CR. */
function copyText(value: string | number | null): string {
  if (value === null || value === undefined) return '\\N';
  const text = typeof value === 'number' ? String(value) : value;
  return /[\\\t\n\r]/.test(text) ? text.replace(/[\\\t\n\r]/g, (c) => COPY_ESCAPES[c] as string) : text;
}
const COPY_ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' };

async function inTransaction<T>(client: pg.PoolClient, fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    const result = await fn();
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  }
}

/** One checked-out client, raw (for COPY) and through Kysely (typed queries in the same transaction). */
interface Connection {
  readonly client: pg.PoolClient;
  readonly db: Kysely<Database>;
}

async function connect(pool: pg.Pool): Promise<Connection & { release(): void }> {
  const client = await pool.connect();
  const query = client.query.bind(client) as unknown as PostgresPoolClient['query'];
  const single: PostgresPool = { connect: async () => ({ query, release() {} }), end: async () => {} };
  return { client, db: new Kysely<Database>({ dialect: new PostgresDialect({ pool: single }) }), release: () => client.release() };
}

async function swapPhase(
  pg: Postgres,
  state: ReplayState,
  projections: readonly ProjectionName[],
  opts: { compare: boolean; swap: boolean; maxDifferences: number; batchSize: number },
): Promise<{ swapped: boolean; comparisons: ProjectionComparison[] | null }> {
  // A reader holding the live tables for long must not make every writer wait behind us:
  // give up the lock after a while and try again.
  const saved = { cursor: state.cursor, held: state.held, applied: state.applied };
  for (let attempt = 1; ; attempt++) {
    const conn = await connect(pg.pool);
    try {
      return await inTransaction(conn.client, async () => {
        const { db } = conn;
        await sql`SET LOCAL lock_timeout = '5s'`.execute(db);
        await sql`SET LOCAL statement_timeout = 0`.execute(db);
        await sql`LOCK TABLE task_current IN EXCLUSIVE MODE`.execute(db);
        for (;;) {
          const events = await readAllForFold(db, state.cursor, opts.batchSize, { settled: false, metadata: state.history !== null });
          await fold(db, events, state);
          if (events.length < opts.batchSize) break;
        }
        if (state.held.length > 0) {
          const e = state.held[0] as FoldEvent;
          throw new Error(`the log has no version ${e.streamVersion - 1} of stream ${e.streamId} before position ${e.position}: not swapping`);
        }
        await writeCheckpoint(conn, takeCheckpoint(state), projections);
        const comparisons = opts.compare ? await compareAll(db, projections, opts.maxDifferences) : null;
        const equal = comparisons?.every((c) => c.liveOnly === 0 && c.rebuiltOnly === 0) ?? true;
        if (!opts.swap || !equal) return { swapped: false, comparisons };
        const stored = projections.filter((p): p is keyof typeof PROJECTION_VERSIONS => STORED.has(p));
        for (const projection of stored) await swapTable(db, projection);
        for (const projection of stored) {
          await sql`
            INSERT INTO projection_versions (projection, version, rebuilt_at, rebuilt_events)
            VALUES (${projection}, ${PROJECTION_VERSIONS[projection]}, now(), ${state.applied})
            ON CONFLICT (projection) DO UPDATE SET version = EXCLUDED.version, rebuilt_at = EXCLUDED.rebuilt_at, rebuilt_events = EXCLUDED.rebuilt_events`.execute(db);
        }
        await dropShadowIn(db);
        return { swapped: true, comparisons };
      });
    } catch (error) {
      // Back to the last checkpoint: what the rolled-back transaction folded is folded again.
      Object.assign(state, freshState(saved.cursor, saved.held, saved.applied, state.history !== null));
      if ((error as { code?: string }).code !== '55P03' || attempt >= 5) throw error;
    } finally {
      conn.release();
    }
  }
}

/**
 * Gives each shadow table the live table's indexes and key constraints (same definitions, names
 * with a `__rebuild` suffix until the swap). Idempotent: a resumed rebuild may find some built.
 */
async function buildIndexes(db: Executor): Promise<void> {
  for (const { live, shadow } of Object.values(TABLES)) {
    const have = new Set((await indexesOf(db, shadow)).map((i) => i.shape));
    for (const index of await indexesOf(db, live)) {
      if (have.has(index.shape)) continue;
      const name = `${index.name}__rebuild`;
      const def = index.def.replace(/ INDEX \S+ ON (\S+)/, (_m, on: string) => ` INDEX ${quote(name)} ON ${on.replace(/[^.]+$/, quote(shadow))}`);
      await sql.raw(def).execute(db);
      if (index.constraint) {
        await sql`ALTER TABLE ${sql.table(shadow)} ADD CONSTRAINT ${sql.ref(name)} ${sql.raw(index.constraint === 'p' ? 'PRIMARY KEY' : 'UNIQUE')} USING INDEX ${sql.ref(name)}`.execute(db);
      }
    }
  }
}

function quote(identifier: string): string {
  return `"${identifier.replace(/"/g, '""')}"`;
}

/** Renames the shadow table over the live one, and its indexes to the live indexes' names. */
async function swapTable(trx: Executor, projection: ProjectionName): Promise<void> {
  const { live, shadow } = TABLES[projection];
  const liveIndexes = await indexesOf(trx, live);
  const shadowIndexes = await indexesOf(trx, shadow);
  await sql`DROP TABLE ${sql.table(live)}`.execute(trx);
  await sql`ALTER TABLE ${sql.table(shadow)} RENAME TO ${sql.table(live)}`.execute(trx);
  for (const index of shadowIndexes) {
    const twin = liveIndexes.find((l) => l.shape === index.shape);
    if (twin && twin.name !== index.name) await sql`ALTER INDEX ${sql.table(index.name)} RENAME TO ${sql.table(twin.name)}`.execute(trx);
  }
}

async function indexesOf(db: Executor, table: string): Promise<{ name: string; def: string; shape: string; constraint: 'p' | 'u' | null }[]> {
  const { rows } = await sql<{ name: string; def: string; constraint: 'p' | 'u' | null }>`
    SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS def,
      (SELECT c.contype::text FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.contype IN ('p', 'u')) AS constraint
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid = to_regclass(${table})`.execute(db);
  // "CREATE UNIQUE INDEX <name> ON public.<table> USING btree (seq)" → "CREATE UNIQUE INDEX USING btree (seq)"
  return rows.map((r) => ({ ...r, shape: `${r.constraint ?? ''}${r.def.replace(/ INDEX \S+ ON \S+/, ' INDEX')}` }));
}

async function compareAll(db: Executor, projections: readonly ProjectionName[], maxDifferences: number): Promise<ProjectionComparison[]> {
  const result: ProjectionComparison[] = [];
  for (const projection of projections) {
    const { live, shadow, key } = TABLES[projection];
    result.push(await compareTables(db, projection, live, shadow, key, maxDifferences));
  }
  return result;
}

/** Row-for-row comparison of two tables of the same shape (EXCEPT ALL both ways). */
async function compareTables(
  db: Executor,
  projection: ProjectionName,
  live: string,
  rebuilt: string,
  key: string,
  maxDifferences: number,
): Promise<ProjectionComparison> {
  const l = sql.table(live);
  const r = sql.table(rebuilt);
  const k = sql.ref(key);
  const { rows } = await sql<{ live_rows: string; rebuilt_rows: string; live_only: string; rebuilt_only: string; live_sample: Record<string, unknown>[]; rebuilt_sample: Record<string, unknown>[] }>`
    WITH lo AS MATERIALIZED (SELECT * FROM ${l} EXCEPT ALL SELECT * FROM ${r}),
         ro AS MATERIALIZED (SELECT * FROM ${r} EXCEPT ALL SELECT * FROM ${l}),
         keys AS (SELECT ${k} AS k FROM lo UNION SELECT ${k} FROM ro ORDER BY 1 LIMIT ${maxDifferences})
    SELECT
      (SELECT count(*) FROM ${l}) AS live_rows,
      (SELECT count(*) FROM ${r}) AS rebuilt_rows,
      (SELECT count(*) FROM lo) AS live_only,
      (SELECT count(*) FROM ro) AS rebuilt_only,
      (SELECT coalesce(jsonb_agg(to_jsonb(lo)), '[]') FROM lo WHERE ${k} IN (SELECT k FROM keys)) AS live_sample,
      (SELECT coalesce(jsonb_agg(to_jsonb(ro)), '[]') FROM ro WHERE ${k} IN (SELECT k FROM keys)) AS rebuilt_sample`.execute(db);
  const row = rows[0];
  if (!row) throw new Error('comparison returned no row');
  const byKey = new Map<string, [Record<string, unknown> | undefined, Record<string, unknown> | undefined]>();
  for (const x of row.live_sample) byKey.set(String(x[key]), [x, byKey.get(String(x[key]))?.[1]]);
  for (const x of row.rebuilt_sample) byKey.set(String(x[key]), [byKey.get(String(x[key]))?.[0], x]);
  const samples: RowDifference[] = [...byKey].map(([k2, [a, b]]) => {
    const columns: Record<string, readonly [unknown, unknown]> = {};
    for (const c of new Set([...Object.keys(a ?? {}), ...Object.keys(b ?? {})])) {
      const va = a?.[c];
      const vb = b?.[c];
      if (!a || !b || JSON.stringify(va) !== JSON.stringify(vb)) columns[c] = [va, vb];
    }
    return { key: k2, columns };
  });
  return {
    projection,
    liveRows: Number(row.live_rows),
    rebuiltRows: Number(row.rebuilt_rows),
    liveOnly: Number(row.live_only),
    rebuiltOnly: Number(row.rebuilt_only),
    samples,
  };
}

async function dropShadow(db: Executor): Promise<void> {
  await db.transaction().execute((trx) => dropShadowIn(trx));
}

async function dropShadowIn(trx: Executor): Promise<void> {
  await sql`DROP TABLE IF EXISTS ${sql.table(SHADOW.current)}, ${sql.table(SHADOW.history)}`.execute(trx);
  await sql`DELETE FROM projection_rebuilds`.execute(trx);
}

async function tableExists(db: Executor, table: string): Promise<boolean> {
  const { rows } = await sql<{ exists: boolean }>`SELECT to_regclass(${table}) IS NOT NULL AS exists`.execute(db);
  return rows[0]?.exists ?? false;
}

async function maxPosition(db: Executor): Promise<number> {
  const { rows } = await sql<{ max: string | null }>`SELECT max(position) AS max FROM events`.execute(db);
  return Number(rows[0]?.max ?? 0);
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x) => b.includes(x));
}

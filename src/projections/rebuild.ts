import { sql } from 'kysely';
import { evolve, FogschedError, initialTaskState, type TaskEvent, type TaskState } from '../domain/index.js';
import { cursorAfter, LOG_START, readAll, readPositions, type Executor, type LogCursor, type StoredEvent } from '../store/index.js';
import type { Postgres } from '../infra/postgres.js';
import { insertTaskHistory, LIVE_TASK_TABLES, loadTaskStates, upsertTaskCurrent, type HistoryRow, type TaskTables } from './task-projections.js';

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

/** Each projection's shape version. Bump it when the rows a projection writes change. */
export const PROJECTION_VERSIONS = { task_current: 1, task_history: 1 } as const;
export type ProjectionName = keyof typeof PROJECTION_VERSIONS;
export const PROJECTION_NAMES = Object.keys(PROJECTION_VERSIONS) as ProjectionName[];

const SHADOW: TaskTables = { current: 'task_current__rebuild', history: 'task_history__rebuild' };
const KEYS: Record<ProjectionName, string> = { task_current: 'task_id', task_history: 'position' };
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

interface ReplayState {
  cursor: LogCursor;
  held: StoredEvent[];
  applied: number;
  readonly cache: Map<string, TaskState>;
}

export async function rebuildProjections(pg: Postgres, options: RebuildOptions = {}): Promise<RebuildReport> {
  const projections = normalise(options.projections ?? PROJECTION_NAMES);
  const batchSize = options.batchSize ?? 5000;
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

      // Replay below the horizon until a batch comes back short: the log's head is near.
      for (;;) {
        options.signal?.throwIfAborted();
        const events = await readAll(pg.db, state.cursor, batchSize);
        await pg.db.transaction().execute(async (trx) => {
          await applyEvents(trx, events, state, projections);
          await saveCheckpoint(trx, state);
        });
        progress('replay');
        if (events.length < batchSize) break;
      }
      await sql`ANALYZE ${sql.table(SHADOW.current)}`.execute(pg.db);
      if (projections.includes('task_history')) await sql`ANALYZE ${sql.table(SHADOW.history)}`.execute(pg.db);

      const compare = options.verify === true || options.dryRun === true;
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
  return PROJECTION_NAMES.flatMap((projection) => {
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
      state: {
        cursor: { transactionId: saved.last_transaction_id, position: Number(saved.last_position) },
        held,
        applied: Number(saved.events_applied),
        cache: new Map(),
      },
    };
  }
  await pg.db.transaction().execute(async (trx) => {
    await dropShadowIn(trx);
    await sql`CREATE TABLE ${sql.table(SHADOW.current)} (LIKE task_current INCLUDING ALL)`.execute(trx);
    await sql`CREATE TABLE ${sql.table(SHADOW.history)} (LIKE task_history INCLUDING ALL)`.execute(trx);
    await sql`INSERT INTO projection_rebuilds (projections) VALUES (${[...projections]}::text[])`.execute(trx);
  });
  return { resumed: false, state: { cursor: LOG_START, held: [], applied: 0, cache: new Map() } };
}

/**
 * Folds `events` (in log reading order) into the shadow tables. Each stream's events are applied
 * by stream_version: one already applied is skipped, one that arrives ahead of a missing
 * earlier version is held until that version is read.
 */
async function applyEvents(trx: Executor, events: readonly StoredEvent[], state: ReplayState, projections: readonly ProjectionName[]): Promise<void> {
  state.cursor = cursorAfter(state.cursor, events);
  const byStream = new Map<string, StoredEvent[]>();
  for (const e of [...state.held, ...events]) {
    if (e.streamType !== 'task') continue;
    const list = byStream.get(e.streamId);
    if (list) list.push(e);
    else byStream.set(e.streamId, [e]);
  }
  state.held = [];
  if (byStream.size === 0) return;

  if (state.cache.size > CACHE_LIMIT) state.cache.clear();
  const missing = [...byStream.keys()].filter((id) => !state.cache.has(id));
  for (const [id, s] of await loadTaskStates(trx, missing, { forUpdate: false, table: SHADOW.current })) state.cache.set(id, s);

  const touched: TaskState[] = [];
  const seqs = new Map<string, number>();
  const history: HistoryRow[] = [];
  for (const [id, list] of byStream) {
    list.sort((a, b) => a.streamVersion - b.streamVersion);
    let current = state.cache.get(id) ?? initialTaskState(id);
    const before = current;
    for (const [i, e] of list.entries()) {
      if (e.streamVersion <= current.version) continue;
      if (e.streamVersion > current.version + 1) {
        state.held.push(...list.slice(i));
        break;
      }
      const event = { type: e.type, data: e.data } as TaskEvent;
      current = evolve(current, event);
      if (event.type === 'TaskSubmitted') seqs.set(id, e.position);
      history.push({ position: e.position, state: current, event, metadata: e.metadata });
      state.applied++;
    }
    if (current !== before) {
      state.cache.set(id, current);
      touched.push(current);
    }
  }
  await upsertTaskCurrent(trx, touched, seqs, SHADOW.current);
  if (projections.includes('task_history')) await insertTaskHistory(trx, history, SHADOW.history);
}

async function saveCheckpoint(trx: Executor, state: ReplayState): Promise<void> {
  await sql`
    UPDATE projection_rebuilds SET
      last_transaction_id = ${state.cursor.transactionId}::xid8, last_position = ${state.cursor.position},
      held_positions = ${state.held.map((e) => e.position)}::bigint[], events_applied = ${state.applied}, updated_at = now()`.execute(trx);
}

async function swapPhase(
  pg: Postgres,
  state: ReplayState,
  projections: readonly ProjectionName[],
  opts: { compare: boolean; swap: boolean; maxDifferences: number; batchSize: number },
): Promise<{ swapped: boolean; comparisons: ProjectionComparison[] | null }> {
  // A reader holding the live tables for long must not make every writer wait behind us:
  // give up the lock after a while and try again.
  for (let attempt = 1; ; attempt++) {
    const saved = { cursor: state.cursor, held: state.held, applied: state.applied };
    try {
      return await pg.db.transaction().execute(async (trx) => {
        await sql`SET LOCAL lock_timeout = '5s'`.execute(trx);
        await sql`SET LOCAL statement_timeout = 0`.execute(trx);
        await sql`LOCK TABLE task_current, task_history IN EXCLUSIVE MODE`.execute(trx);
        for (;;) {
          const events = await readAll(trx, state.cursor, opts.batchSize, { settled: false });
          await applyEvents(trx, events, state, projections);
          if (events.length < opts.batchSize) break;
        }
        if (state.held.length > 0) {
          const e = state.held[0] as StoredEvent;
          throw new Error(`the log has no version ${e.streamVersion - 1} of stream ${e.streamId} before position ${e.position}: not swapping`);
        }
        await saveCheckpoint(trx, state);
        const comparisons = opts.compare ? await compareAll(trx, projections, opts.maxDifferences) : null;
        const equal = comparisons?.every((c) => c.liveOnly === 0 && c.rebuiltOnly === 0) ?? true;
        if (!opts.swap || !equal) return { swapped: false, comparisons };
        for (const projection of projections) await swapTable(trx, projection);
        for (const projection of projections) {
          await sql`
            INSERT INTO projection_versions (projection, version, rebuilt_at, rebuilt_events)
            VALUES (${projection}, ${PROJECTION_VERSIONS[projection]}, now(), ${state.applied})
            ON CONFLICT (projection) DO UPDATE SET version = EXCLUDED.version, rebuilt_at = EXCLUDED.rebuilt_at, rebuilt_events = EXCLUDED.rebuilt_events`.execute(trx);
        }
        await dropShadowIn(trx);
        return { swapped: true, comparisons };
      });
    } catch (error) {
      state.cursor = saved.cursor;
      state.held = saved.held;
      state.applied = saved.applied;
      state.cache.clear(); // it may hold states of the rolled-back catch-up
      if ((error as { code?: string }).code !== '55P03' || attempt >= 5) throw error;
    }
  }
}

/** Renames the shadow table over the live one, and its indexes to the live indexes' names. */
async function swapTable(trx: Executor, projection: ProjectionName): Promise<void> {
  const live = LIVE_TASK_TABLES[projection === 'task_current' ? 'current' : 'history'];
  const shadow = SHADOW[projection === 'task_current' ? 'current' : 'history'];
  const liveIndexes = await indexesOf(trx, live);
  const shadowIndexes = await indexesOf(trx, shadow);
  await sql`DROP TABLE ${sql.table(live)}`.execute(trx);
  await sql`ALTER TABLE ${sql.table(shadow)} RENAME TO ${sql.table(live)}`.execute(trx);
  for (const index of shadowIndexes) {
    const twin = liveIndexes.find((l) => l.shape === index.shape);
    if (twin && twin.name !== index.name) await sql`ALTER INDEX ${sql.table(index.name)} RENAME TO ${sql.table(twin.name)}`.execute(trx);
  }
}

async function indexesOf(db: Executor, table: string): Promise<{ name: string; shape: string }[]> {
  const { rows } = await sql<{ name: string; def: string }>`
    SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS def
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid = to_regclass(${table})`.execute(db);
  // "CREATE UNIQUE INDEX <name> ON public.<table> USING btree (seq)" → "CREATE UNIQUE INDEX USING btree (seq)"
  return rows.map((r) => ({ name: r.name, shape: r.def.replace(/ INDEX \S+ ON \S+/, ' INDEX') }));
}

async function compareAll(db: Executor, projections: readonly ProjectionName[], maxDifferences: number): Promise<ProjectionComparison[]> {
  const result: ProjectionComparison[] = [];
  for (const projection of projections) {
    const live = LIVE_TASK_TABLES[projection === 'task_current' ? 'current' : 'history'];
    const shadow = SHADOW[projection === 'task_current' ? 'current' : 'history'];
    result.push(await compareTables(db, projection, live, shadow, KEYS[projection], maxDifferences));
  }
  return result;
}

/** Row-for-row comparison of two tables of the same shape (EXCEPT ALL both ways). */
export async function compareTables(
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

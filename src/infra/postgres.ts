import { createHash } from 'node:crypto';
import pg from 'pg';
import { Kysely, PostgresDialect } from 'kysely';
import { runner } from 'node-pg-migrate';
import { fileURLToPath } from 'node:url';
import type { Database } from '../store/db.js';
import type { Logger } from './logger.js';
import { ConcurrencyError, ServiceUnavailableError } from '../domain/errors.js';

// bigint (int8) as number: positions and sequences stay far below 2^53.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations', import.meta.url));
export const MIGRATIONS_TABLE = 'pgmigrations';

export interface PostgresOptions {
  readonly url: string;
  readonly poolMax: number;
  readonly connectTimeoutMs: number;
  readonly statementTimeoutMs: number;
  readonly applicationName?: string;
}

export interface Postgres {
  readonly pool: pg.Pool;
  readonly db: Kysely<Database>;
  close(): Promise<void>;
}

/** A pool that fails fast when PostgreSQL is down (no hang) and a Kysely instance over it. */
export function createPostgres(options: PostgresOptions): Postgres {
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.poolMax,
    connectionTimeoutMillis: options.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    statement_timeout: options.statementTimeoutMs || undefined,
    application_name: options.applicationName ?? 'fogsched',
  });
  // An idle client whose server went away emits here; without a listener it would crash the process.
  pool.on('error', () => {});
  // pg-pool drops its listener while a client is checked out; a server that ends the connection
  // mid-query (restart, pg_terminate_backend) would then emit an unhandled 'error' and crash the
  // process. The query itself still rejects; the pool drops the dead client once it sees the close.
  pool.on('connect', (client) => {
    client.on('error', () => {});
    preparing(client);
  });
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  let closed: Promise<void> | undefined;
  return {
    pool,
    db,
    close: () => (closed ??= db.destroy()),
  };
}

/**
 * Marks a statement to run as a prepared statement on each connection (see `preparing`). For
 * hot statements whose text takes a few variants at most: each variant stays prepared in every
 * backend for the connection's life.
 */
export const PREPARE_MARK = '/* prepared */';

/**
 * Runs statements that start with PREPARE_MARK as named prepared statements (the name is a hash
 * of the text), so PostgreSQL parses and plans them once per connection instead of on every call.
 * The task write (events, task_current, task_history and outbox in one statement) spends ~1.5 ms
 * in parse and plan against ~0.3 ms of execution for one task. Kysely sends every query as
 * `query(text, values)`; anything else passes through unchanged. PostgreSQL re-plans a prepared
 * statement by itself when a table it names changes (a projection swap renames tables).
 */
const preparedNames = new Map<string, string>();

function preparing(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  (client as { query: (...args: unknown[]) => unknown }).query = (text: unknown, ...rest: unknown[]) => {
    if (typeof text !== 'string' || !text.startsWith(PREPARE_MARK) || typeof rest[0] === 'function') return query(text, ...rest);
    let name = preparedNames.get(text);
    if (name === undefined) {
      name = `fogsched_${createHash('sha1').update(text).digest('hex').slice(0, 16)}`;
      preparedNames.set(text, name);
    }
    return query({ name, text, values: rest[0] as unknown[] | undefined });
  };
}

/** Connection-level failures: PostgreSQL is down or unreachable, not a bad query. */
export function isConnectionError(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: string }).code ?? '';
  if (['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH'].includes(code)) return true;
  // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, 08xxx connection exceptions.
  if (/^(57P0[123]|08...)$/.test(code)) return true;
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|connect ECONNREFUSED/i.test(error.message);
}

/**
 * What retrying a failed statement can achieve:
 * - `transient`: the same statement can succeed later (connection lost, serialization failure
 *   40001, deadlock 40P01, lock not available 55P03, statement timeout or cancel 57014,
 *   insufficient resources 53xxx such as disk full or too many connections, read-only
 *   transaction 25006 during a failover, shutdown 57P0x, connection exception 08xxx, system
 *   error 58xxx), and a ConcurrencyError: another writer appended to the stream first.
 * - `permanent`: the data itself is refused and always will be: data exceptions 22xxx (e.g.
 *   22P05, `\u0000` in jsonb), integrity violations 23xxx other than the events (stream,
 *   version) race, cardinality 21xxx, program limits 54xxx, syntax or access rules 42xxx,
 *   PL/pgSQL raise P0xxx.
 * - `unknown`: anything else (no SQLSTATE: a bug, a closed pool). Retry it like a transient
 *   one, but a caller bounds how often before it treats it as permanent.
 */
export function classifyPgError(error: unknown): 'transient' | 'permanent' | 'unknown' {
  if (error instanceof ConcurrencyError) return 'transient';
  if (isConnectionError(error)) return 'transient';
  const e = error as { code?: unknown; constraint?: unknown } | null;
  const code = typeof e?.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code) ? e.code : '';
  if (code === '') return 'unknown';
  if (['40001', '40P01', '55P03', '57014', '25006'].includes(code)) return 'transient';
  if (/^(53|57P0|08|58)/.test(code)) return 'transient';
  // The events (stream, version) race: a writer that lost it retries on the newer version.
  if (code === '23505' && e?.constraint === 'events_stream_version_key') return 'transient';
  if (/^(21|22|23|42|54|P0)/.test(code)) return 'permanent';
  return 'unknown';
}

/** Rethrows connection failures as a 503-mapped ServiceUnavailableError. */
export function mapPostgresError(error: unknown): unknown {
  return isConnectionError(error) ? new ServiceUnavailableError('postgresql', error) : error;
}

/** Creates the database named in `url` when it does not exist yet. */
export async function ensureDatabase(url: string): Promise<void> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.replace(/^\//, ''));
  if (!name) return;
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString(), connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (found.rowCount === 0) {
      try {
        await client.query(`CREATE DATABASE "${name.replace(/"/g, '""')}"`);
      } catch (error) {
        // Another process created it between our check and our create.
        if ((error as { code?: string }).code !== '42P04') throw error;
      }
    }
  } finally {
    await client.end();
  }
}

/** Applies pending migrations (node-pg-migrate; safe when several processes start at once). */
export async function migrate(url: string, logger?: Logger): Promise<void> {
  await ensureDatabase(url);
  await runner({
    databaseUrl: url,
    dir: MIGRATIONS_DIR,
    direction: 'up',
    migrationsTable: MIGRATIONS_TABLE,
    checkOrder: true,
    log: (msg: string) => logger?.debug({ msg: 'migration', detail: msg.trim() }),
  });
}

/** Names of the migration files not applied yet to the database behind `db`. */
export async function pendingMigrations(pool: pg.Pool): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  const files = (await readdir(MIGRATIONS_DIR)).filter((f) => f.endsWith('.sql')).map((f) => f.replace(/\.sql$/, ''));
  const applied = await pool
    .query<{ name: string }>(`SELECT name FROM ${MIGRATIONS_TABLE}`)
    .then((r) => new Set(r.rows.map((row) => row.name)))
    .catch((error: unknown) => {
      if ((error as { code?: string }).code === '42P01') return new Set<string>();
      throw error;
    });
  return files.filter((f) => !applied.has(f));
}

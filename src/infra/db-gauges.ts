import pg from 'pg';
import { cachedSource, registerScrapeGauge } from './metrics.js';

/**
 * Gauges read from PostgreSQL when Prometheus scrapes: one small pool per process (one
 * connection, a 1 s statement timeout), values cached for 5 s, a scrape never waits more than
 * 1 s for them (see cachedSource). The relay registers the outbox gauges, the scheduler the
 * task gauges; with several replicas each exports the same figure, so queries take `max`.
 */

let shared: { url: string; pool: pg.Pool; users: number } | undefined;

function pool(url: string): pg.Pool {
  if (!shared || shared.url !== url) {
    const p = new pg.Pool({ connectionString: url, max: 1, idleTimeoutMillis: 30_000, connectionTimeoutMillis: 1000, statement_timeout: 1000, application_name: 'fogsched-metrics' });
    p.on('error', () => {}); // an idle connection that dies is replaced at the next scrape
    shared = { url, pool: p, users: 0 };
  }
  shared.users++;
  return shared.pool;
}

function release(url: string): void {
  if (shared?.url !== url) return;
  if (--shared.users > 0) return;
  void shared.pool.end().catch(() => {});
  shared = undefined;
}

/** Sources by name: a second role of the same process registering the same gauge reuses them. */
const sources = new Map<string, () => Promise<number | undefined>>();

function gauge(url: string, name: string, help: string, query: string): void {
  const read = cachedSource(name, async () => {
    const r = await pool(url).query<{ v: number | string | null }>(query).finally(() => release(url));
    return Number(r.rows[0]?.v ?? 0);
  });
  sources.set(name, read);
  registerScrapeGauge(name, help, () => sources.get(name)?.() ?? Promise.resolve(undefined));
}

function registration(url: string, register: () => void): () => void {
  pool(url); // held while registered, so the pool outlives each scrape
  register();
  return () => release(url);
}

/** `fogsched_outbox_pending_rows` and `fogsched_outbox_lag_seconds` (the relay). */
export function registerOutboxGauges(url: string): () => void {
  return registration(url, () => {
    gauge(url, 'fogsched_outbox_pending_rows', 'Outbox rows due and not yet published', `SELECT count(*)::int AS v FROM outbox WHERE published_at IS NULL AND available_at <= now()`);
    gauge(
      url,
      'fogsched_outbox_lag_seconds',
      'Age of the oldest due outbox row not yet published (0 when none)',
      `SELECT coalesce(extract(epoch FROM now() - min(available_at)), 0)::float8 AS v FROM outbox WHERE published_at IS NULL AND available_at <= now()`,
    );
  });
}

/** `fogsched_dlq_tasks` and `fogsched_projection_lag_events` (the scheduler). */
export function registerTaskGauges(url: string): () => void {
  return registration(url, () => {
    gauge(url, 'fogsched_dlq_tasks', "Failed tasks (GET /v1/dlq's list, every tenant), waiting for a requeue or for nobody", `SELECT count(*)::int AS v FROM task_current WHERE state = 'failed'`);
    // The live read models are written in the appending transaction, so they never lag; what can
    // lag is a rebuild in progress (`fogsched projections rebuild`): the events after its checkpoint.
    gauge(
      url,
      'fogsched_projection_lag_events',
      'Events of the log a projection rebuild in progress has not replayed yet (0 when none runs: the live read models are written with the events)',
      `SELECT coalesce((SELECT max(position) FROM events) - (SELECT last_position FROM projection_rebuilds WHERE id = 1), 0)::bigint AS v`,
    );
  });
}

import pg from 'pg';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { connectAmqp } from '../infra/amqp.js';
import type { Logger } from '../infra/logger.js';
import { sleep, type Role } from '../infra/role.js';
import { declareTopology, type Topology } from './topology.js';

export interface RelayOptions {
  readonly databaseUrl: string;
  readonly amqpUrl: string;
  readonly topology: Topology;
  readonly logger: Logger;
  readonly batchSize: number;
  readonly pollIntervalMs: number;
  readonly retryMaxMs: number;
  /** Advisory lock key: one relay per database publishes at a time. */
  readonly lockKey?: number;
}

export interface RelayStats {
  leader: boolean;
  published: number;
  failed: number;
  /** Age in ms of the oldest due, unpublished row at the last look (0 when none). */
  lagMs: number;
  pending: number;
}

interface ClaimedRow {
  id: number;
  message_id: string;
  exchange: string;
  routing_key: string;
  headers: Record<string, unknown>;
  body: string;
  attempts: number;
}

const DEFAULT_LOCK_KEY = 0x0f065c4d; // "fogsched relay"
/** How long one round tries to reach the broker before it gives up until the next round. */
const CONNECT_ROUND_MS = 5000;

/**
 * Publishes due outbox rows with publisher confirms, and marks them published
 * only after the broker confirmed them. Several replicas may run: one holds a
 * session advisory lock and publishes (so per-task order holds and nothing is
 * published twice on purpose); the others wait and take over within one poll
 * interval when it dies, since PostgreSQL frees the lock with its session.
 * It wakes on NOTIFY and also polls, so a lost notification only costs a poll.
 */
export function createRelay(options: RelayOptions): Role & { stats(): RelayStats } {
  const logger = options.logger.child({ role: 'relay' });
  const knownExchanges = new Set(options.topology.exchanges.map((e) => e.name));
  // Task dispatches must reach a queue (an unroutable one is a failure); a broadcast may reach none.
  const mandatory = new Set(options.topology.exchanges.filter((e) => e.type === 'direct').map((e) => e.name));
  const abort = new AbortController();
  const stats: RelayStats = { leader: false, published: 0, failed: 0, lagMs: 0, pending: 0 };
  let wake: (() => void) | undefined;
  let loop: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  let client: pg.Client | undefined;
  let connection: ChannelModel | undefined;
  let channel: ConfirmChannel | undefined;

  const waitForWork = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wake = undefined;
        abort.signal.removeEventListener('abort', done);
        resolve();
      }
      wake = done;
      abort.signal.addEventListener('abort', done, { once: true });
    });

  const closeDb = async () => {
    const c = client;
    client = undefined;
    stats.leader = false;
    await c?.end().catch(() => {});
  };

  const closeAmqp = async () => {
    const conn = connection;
    connection = undefined;
    channel = undefined;
    await conn?.close().catch(() => {});
  };

  /** Connects to PostgreSQL and waits to become the publishing replica. */
  const becomeLeader = async (): Promise<pg.Client | undefined> => {
    while (!abort.signal.aborted) {
      const c = new pg.Client({ connectionString: options.databaseUrl, connectionTimeoutMillis: 5000, application_name: 'fogsched-relay' });
      c.on('error', (error) => logger.warn({ err: error }, 'relay database connection lost'));
      try {
        await c.connect();
        for (;;) {
          const got = await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [options.lockKey ?? DEFAULT_LOCK_KEY]);
          if (got.rows[0]?.ok) break;
          await sleep(options.pollIntervalMs, abort.signal);
          if (abort.signal.aborted) {
            await c.end();
            return undefined;
          }
        }
        c.on('notification', () => wake?.());
        await c.query('LISTEN fogsched_outbox');
        stats.leader = true;
        logger.info('relay is the publishing replica');
        return c;
      } catch (error) {
        await c.end().catch(() => {});
        logger.warn({ err: (error as Error).message }, 'relay cannot reach postgresql; retrying');
        await sleep(Math.min(options.retryMaxMs, 1000), abort.signal);
      }
    }
    return undefined;
  };

  const ensureChannel = async (): Promise<ConfirmChannel | undefined> => {
    if (channel) return channel;
    // Bounded: during a broker outage the round ends (rows stay due) instead of parking the
    // loop inside connect, so the lag is still measured and reported, and the next round retries.
    // (Not AbortSignal.any + AbortSignal.timeout: on Node 20 the timeout signal can be garbage
    // collected before it fires, nodejs/node#57736, and every round would leave a listener behind.)
    const round = new AbortController();
    const endRound = () => round.abort();
    const timer = setTimeout(endRound, CONNECT_ROUND_MS);
    abort.signal.addEventListener('abort', endRound, { once: true });
    let conn: ChannelModel | undefined;
    try {
      conn = await connectAmqp(options.amqpUrl, { logger, signal: round.signal, name: 'fogsched-relay', maxBackoffMs: options.retryMaxMs });
    } finally {
      clearTimeout(timer);
      abort.signal.removeEventListener('abort', endRound);
    }
    if (!conn) return undefined;
    connection = conn;
    conn.on('close', () => {
      if (connection === conn) {
        connection = undefined;
        channel = undefined;
      }
    });
    const ch = await conn.createConfirmChannel();
    ch.on('error', (error: unknown) => logger.warn({ err: error }, 'relay channel error'));
    ch.on('close', () => {
      if (channel === ch) channel = undefined;
    });
    await declareTopology(ch, options.topology);
    channel = ch;
    return ch;
  };

  /** Publishes one claimed batch; returns ids confirmed and ids refused (nack, return, or channel loss). */
  const publishBatch = async (ch: ConfirmChannel, rows: ClaimedRow[]) => {
    const returned = new Set<string>();
    const onReturn = (msg: { properties: { messageId?: string } }) => {
      if (msg.properties.messageId) returned.add(msg.properties.messageId);
    };
    ch.on('return', onReturn);
    try {
      const results = await Promise.allSettled(
        rows.map(
          (row) =>
            new Promise<void>((resolve, reject) => {
              ch.publish(
                row.exchange,
                row.routing_key,
                Buffer.from(row.body),
                { persistent: true, mandatory: mandatory.has(row.exchange), messageId: row.message_id, contentType: 'application/json', headers: row.headers, timestamp: Math.floor(Date.now() / 1000) },
                (error: unknown) => (error ? reject(error instanceof Error ? error : new Error('nacked by the broker (queue full?)')) : resolve()),
              );
            }),
        ),
      );
      const ok: number[] = [];
      const failed: { id: number; error: string }[] = [];
      results.forEach((r, i) => {
        const row = rows[i] as ClaimedRow;
        if (r.status === 'fulfilled' && !returned.has(row.message_id)) ok.push(row.id);
        else failed.push({ id: row.id, error: r.status === 'rejected' ? String((r.reason as Error).message ?? r.reason) : `unroutable: no queue bound to ${row.exchange}/${row.routing_key}` });
      });
      return { ok, failed };
    } finally {
      ch.off('return', onReturn);
    }
  };

  const runOnce = async (db: pg.Client): Promise<boolean> => {
    const claimed = await db.query<ClaimedRow>(
      `SELECT id, message_id, exchange, routing_key, headers, body::text AS body, attempts
         FROM outbox WHERE published_at IS NULL AND available_at <= now()
        ORDER BY id LIMIT $1`,
      [options.batchSize],
    );
    if (claimed.rows.length === 0) {
      stats.lagMs = 0;
      return false;
    }
    const ch = await ensureChannel();
    if (!ch) return false;
    // A row for an exchange this relay does not declare (say, written under another AMQP_PREFIX)
    // would close the channel and fail its whole batch each round: set it aside instead.
    const publishable = claimed.rows.filter((r) => knownExchanges.has(r.exchange));
    const strays = claimed.rows.filter((r) => !knownExchanges.has(r.exchange)).map((r) => ({ id: r.id, error: `unknown exchange ${r.exchange}` }));
    const published = await publishBatch(ch, publishable);
    const ok = published.ok;
    const failed = [...published.failed, ...strays];
    if (ok.length > 0) await db.query('UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])', [ok]);
    if (failed.length > 0) {
      // The rows stay unpublished and come due again after a backoff.
      const backoffs = failed.map((f) => {
        const attempts = (claimed.rows.find((r) => r.id === f.id)?.attempts ?? 0) + 1;
        return f.error.startsWith('unknown exchange') ? 3_600_000 : Math.min(options.retryMaxMs, 100 * 2 ** Math.min(attempts, 12));
      });
      await db.query(
        `UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error, available_at = now() + f.backoff * interval '1 millisecond'
           FROM unnest($1::bigint[], $2::text[], $3::int[]) AS f(id, error, backoff) WHERE o.id = f.id`,
        [failed.map((f) => f.id), failed.map((f) => f.error.slice(0, 500)), backoffs],
      );
      stats.failed += failed.length;
      logger.warn({ failed: failed.length, firstError: failed[0]?.error }, 'outbox rows not confirmed; will retry');
    }
    stats.published += ok.length;
    return claimed.rows.length === options.batchSize && failed.length === 0;
  };

  /** Sleep until the poll, or until a delayed row comes due if that is sooner (delays fire on time). */
  const idleWaitMs = async (db: pg.Client): Promise<number> => {
    const r = await db.query<{ ms: number | null }>(
      `SELECT (extract(epoch FROM min(available_at) - now()) * 1000)::float8 AS ms FROM outbox WHERE published_at IS NULL AND available_at > now()`,
    );
    const ms = r.rows[0]?.ms;
    return ms === null || ms === undefined ? options.pollIntervalMs : Math.max(1, Math.min(options.pollIntervalMs, Math.ceil(ms)));
  };

  const measureLag = async (db: pg.Client) => {
    const r = await db.query<{ lag_ms: number | null; pending: number }>(
      `SELECT (extract(epoch FROM now() - min(available_at)) * 1000)::float8 AS lag_ms, count(*)::int AS pending
         FROM outbox WHERE published_at IS NULL AND available_at <= now()`,
    );
    stats.lagMs = Math.max(0, r.rows[0]?.lag_ms ?? 0);
    stats.pending = r.rows[0]?.pending ?? 0;
    if (stats.pending > 0) logger.warn({ lagMs: Math.round(stats.lagMs), pending: stats.pending }, 'outbox lag');
  };

  const run = async () => {
    let failures = 0;
    let lastLagCheck = 0;
    while (!abort.signal.aborted) {
      client ??= await becomeLeader();
      const db = client;
      if (!db) break;
      try {
        const more = await runOnce(db);
        failures = 0;
        if (Date.now() - lastLagCheck > 5000) {
          lastLagCheck = Date.now();
          await measureLag(db);
        }
        if (!more) await waitForWork(await idleWaitMs(db));
      } catch (error) {
        failures++;
        const delay = Math.min(options.retryMaxMs, 100 * 2 ** Math.min(failures, 10));
        logger.warn({ err: (error as Error).message, retryInMs: delay }, 'relay round failed');
        // Start clean: reconnect (and re-take the lock) and open a fresh channel.
        await closeDb();
        await closeAmqp();
        await sleep(delay, abort.signal);
      }
    }
  };

  return {
    name: 'relay',
    stats: () => ({ ...stats }),
    async start() {
      loop = run().catch((error: unknown) => logger.error({ err: error }, 'relay loop crashed'));
    },
    stop() {
      return (stopped ??= (async () => {
        abort.abort();
        await loop; // the batch in flight gets its confirms and its UPDATE
        await closeAmqp();
        await closeDb();
      })());
    },
  };
}

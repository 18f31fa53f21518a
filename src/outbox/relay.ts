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
  /** Batches published and awaiting their confirms and UPDATE at once (default 3; 1 = strictly one after another). */
  readonly pipelineDepth?: number;
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

interface FailedRow {
  id: number;
  attempts: number;
  error: string;
}

interface BatchOutcome {
  ok: number[];
  failed: FailedRow[];
}

interface Claim {
  rows: ClaimedRow[];
  /** Highest id the claim looked at: the next claim starts after it. */
  lastId: number;
  /** It returned as many rows as it asked for: more may follow. */
  full: boolean;
  /** At least half the rows it looked at were due (a claim from the index always is). */
  dense: boolean;
}

const DEFAULT_LOCK_KEY = 0x0f065c4d; // "fogsched relay"
/** How long one round tries to reach the broker before it gives up until the next round. */
const CONNECT_ROUND_MS = 5000;
const DEFAULT_PIPELINE_DEPTH = 3;
const LAG_CHECK_MS = 5000;

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
  const pipelineDepth = Math.max(1, options.pipelineDepth ?? DEFAULT_PIPELINE_DEPTH);
  const abort = new AbortController();
  const stats: RelayStats = { leader: false, published: 0, failed: 0, lagMs: 0, pending: 0 };
  let wake: (() => void) | undefined;
  let loop: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  let client: pg.Client | undefined;
  let connection: ChannelModel | undefined;
  let channel: ConfirmChannel | undefined;
  /** Message ids the broker returned as unroutable, per channel, until their batch settles. */
  const returnedOf = new WeakMap<ConfirmChannel, Set<string>>();
  let lastLagCheck = 0;
  /** A NOTIFY came while a round ran (nobody was waiting to be woken): go again at once. */
  let notified = false;

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

  /**
   * Queries of one round on the leader's connection, one after another: pg.Client runs one query at
   * a time and warns (pg@9 will refuse) when handed another before the first returns.
   */
  let dbTail: Promise<unknown> = Promise.resolve();
  const inTurn = <T>(f: () => Promise<T>): Promise<T> => {
    const p = dbTail.then(f, f);
    dbTail = p.catch(() => {});
    return p;
  };

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
        c.on('notification', () => {
          notified = true;
          wake?.();
        });
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
    const returned = new Set<string>();
    returnedOf.set(ch, returned);
    ch.on('return', (msg: { properties: { messageId?: string } }) => {
      if (msg.properties.messageId) returned.add(msg.properties.messageId);
    });
    await declareTopology(ch, options.topology);
    channel = ch;
    return ch;
  };

  /**
   * Publishes one claimed batch on `ch` (in id order) and resolves once every row is confirmed or
   * refused (nack, return, channel loss). One callback per row, no promise per row.
   */
  const publishBatch = (ch: ConfirmChannel, returned: Set<string>, rows: readonly ClaimedRow[]): Promise<BatchOutcome> =>
    new Promise((resolve) => {
      const errors: (string | undefined)[] = new Array<string | undefined>(rows.length);
      let waiting = rows.length;
      const finish = () => {
        const ok: number[] = [];
        const failed: FailedRow[] = [];
        rows.forEach((row, i) => {
          // The broker sends basic.return before the confirm of that message.
          const wasReturned = returned.delete(row.message_id);
          const error = errors[i] ?? (wasReturned ? `unroutable: no queue bound to ${row.exchange}/${row.routing_key}` : undefined);
          if (error === undefined) ok.push(row.id);
          else failed.push({ id: row.id, attempts: row.attempts, error });
        });
        resolve({ ok, failed });
      };
      if (waiting === 0) return finish();
      const timestamp = Math.floor(Date.now() / 1000);
      for (let i = 0; i < rows.length; i++) {
        const row = rows[i] as ClaimedRow;
        try {
          ch.publish(
            row.exchange,
            row.routing_key,
            Buffer.from(row.body),
            { persistent: true, mandatory: mandatory.has(row.exchange), messageId: row.message_id, contentType: 'application/json', headers: row.headers, timestamp },
            (error: unknown) => {
              if (error) errors[i] = error instanceof Error ? error.message : 'nacked by the broker (queue full?)';
              if (--waiting === 0) finish();
            },
          );
        } catch (error) {
          // The channel is closed (or the frame could not be encoded): this row and the rest of the
          // batch never went out. amqplib queued a confirm callback for this row that no delivery tag
          // will ever match, so later confirms on this channel would land on the wrong rows: drop it.
          if (channel === ch) channel = undefined;
          ch.close().catch(() => {});
          const reason = `not sent: ${(error as Error).message ?? String(error)}`;
          for (let j = i; j < rows.length; j++) errors[j] = reason;
          waiting -= rows.length - i;
          if (waiting === 0) finish();
          break;
        }
      }
    });

  /** Gives refused rows their backoff: they stay unpublished and come due again later. */
  const backOff = async (db: pg.Client, failed: readonly FailedRow[]) => {
    const backoffs = failed.map((f) =>
      f.error.startsWith('unknown exchange') ? 3_600_000 : Math.min(options.retryMaxMs, 100 * 2 ** Math.min(f.attempts + 1, 12)),
    );
    // unnest: one statement sets a different error and backoff per row.
    await inTurn(() =>
      db.query(
        `UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error, available_at = now() + f.backoff * interval '1 millisecond'
           FROM unnest($1::bigint[], $2::text[], $3::int[]) AS f(id, error, backoff) WHERE o.id = f.id`,
        [failed.map((f) => f.id), failed.map((f) => f.error.slice(0, 500)), backoffs],
      ),
    );
    stats.failed += failed.length;
    logger.warn({ failed: failed.length, firstError: failed[0]?.error }, 'outbox rows not confirmed; will retry');
  };

  /** The first claim of a round: the oldest due rows, through the partial index of unpublished rows. */
  const claimDue = async (db: pg.Client): Promise<Claim> => {
    const r = await inTurn(() =>
      db.query<ClaimedRow>(
        `SELECT id, message_id, exchange, routing_key, headers, body::text AS body, attempts
           FROM outbox WHERE published_at IS NULL AND available_at <= now()
          ORDER BY id LIMIT $1`,
        [options.batchSize],
      ),
    );
    const last = r.rows[r.rows.length - 1];
    return { rows: r.rows, lastId: last?.id ?? 0, full: r.rows.length === options.batchSize, dense: true };
  };

  /**
   * The next claim while earlier batches are in flight: the next `batchSize` rows after `afterId`
   * in primary-key order, keeping the due, unpublished ones. It walks the primary key rather than
   * the partial index, whose plan sorts every due row (and every dead entry) on each call.
   * Rows in flight are below `afterId`, so none is claimed twice.
   */
  const claimAfter = async (db: pg.Client, afterId: number): Promise<Claim> => {
    const r = await inTurn(() =>
      db.query<ClaimedRow & { due: boolean }>(
        `SELECT id, message_id, exchange, routing_key, headers, body::text AS body, attempts,
                published_at IS NULL AND available_at <= now() AS due
           FROM outbox WHERE id > $1 ORDER BY id LIMIT $2`,
        [afterId, options.batchSize],
      ),
    );
    const rows = r.rows.filter((x) => x.due);
    const last = r.rows[r.rows.length - 1];
    return { rows, lastId: last?.id ?? afterId, full: r.rows.length === options.batchSize, dense: rows.length * 2 >= r.rows.length };
  };

  /**
   * One round: claims due rows in id order and publishes them on one channel, keeping up to
   * `pipelineDepth` batches awaiting their confirms: the next batch is claimed and published
   * while the earlier ones wait for theirs, and confirmed rows are marked published behind them.
   * It claims no further batch once a row was refused, the channel changed, the rows thin out
   * (the next round starts over from the index) or the relay stops; either way every batch in
   * flight gets its confirms and every confirmed row its UPDATE before it returns.
   * True when more rows may be due right away.
   */
  const runOnce = async (db: pg.Client): Promise<boolean> => {
    let claim = await claimDue(db);
    if (claim.rows.length === 0) {
      stats.lagMs = 0;
      return false;
    }
    const ch = await ensureChannel();
    if (!ch) return false;
    const returned = returnedOf.get(ch) ?? new Set<string>();
    const inFlight = new Set<Promise<void>>();
    let refused = false;
    let failure: unknown;
    let next: Promise<Claim> | undefined;
    // Confirmed ids wait here for their UPDATE; one UPDATE at a time takes all that have gathered,
    // so a slow commit makes the next UPDATE bigger instead of holding back the publishing.
    let toMark: number[] = [];
    let marking: Promise<void> | undefined;
    const markPublished = (ids: readonly number[]) => {
      for (const id of ids) toMark.push(id);
      marking ??= (async () => {
        try {
          while (toMark.length > 0) {
            const batch = toMark;
            toMark = [];
            await inTurn(() => db.query('UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])', [batch]));
            stats.published += batch.length;
          }
        } catch (error) {
          failure ??= error; // the rows not marked stay due and go out again: at least once
        } finally {
          marking = undefined;
        }
      })();
    };
    const stopping = () => refused || failure !== undefined || channel !== ch || abort.signal.aborted;
    try {
      for (;;) {
        // A row for an exchange this relay does not declare (say, written under another AMQP_PREFIX)
        // would close the channel and fail its whole batch each round: set it aside instead.
        const publishable = claim.rows.filter((r) => knownExchanges.has(r.exchange));
        const strays: FailedRow[] = claim.rows
          .filter((r) => !knownExchanges.has(r.exchange))
          .map((r) => ({ id: r.id, attempts: r.attempts, error: `unknown exchange ${r.exchange}` }));
        const settled = publishBatch(ch, returned, publishable)
          .then(async (outcome) => {
            if (outcome.ok.length > 0) markPublished(outcome.ok);
            const failed = [...outcome.failed, ...strays];
            if (failed.length > 0) {
              refused = true;
              await backOff(db, failed);
            }
          })
          .catch((error: unknown) => {
            failure ??= error;
          });
        inFlight.add(settled);
        void settled.then(() => inFlight.delete(settled));
        if (!claim.full || !claim.dense || stopping()) break;
        // Claim the next batch now; publish it once a batch in flight is confirmed and the
        // confirmed rows awaiting their UPDATE are no more than a few batches.
        next = claimAfter(db, claim.lastId);
        next.catch(() => {}); // awaited below; until then a failure must not count as unhandled
        while (inFlight.size >= pipelineDepth) await Promise.race(inFlight);
        while (marking && toMark.length >= pipelineDepth * options.batchSize) await marking;
        claim = await next;
        next = undefined;
        if (claim.rows.length === 0 || stopping()) break;
        if (Date.now() - lastLagCheck > LAG_CHECK_MS) await measureLag(db);
      }
    } catch (error) {
      failure ??= error;
    } finally {
      // Claimed but not published: those rows simply stay due. Every batch in flight gets its
      // confirms, and every confirmed row its UPDATE, before the round ends.
      await next?.catch(() => {});
      await Promise.all(inFlight);
      while (marking) await marking;
    }
    if (failure !== undefined) throw failure;
    return claim.full && !refused;
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
    lastLagCheck = Date.now();
    const r = await inTurn(() =>
      db.query<{ lag_ms: number | null; pending: number }>(
        `SELECT (extract(epoch FROM now() - min(available_at)) * 1000)::float8 AS lag_ms, count(*)::int AS pending
           FROM outbox WHERE published_at IS NULL AND available_at <= now()`,
      ),
    );
    stats.lagMs = Math.max(0, r.rows[0]?.lag_ms ?? 0);
    stats.pending = r.rows[0]?.pending ?? 0;
    if (stats.pending > 0) logger.warn({ lagMs: Math.round(stats.lagMs), pending: stats.pending }, 'outbox lag');
  };

  const run = async () => {
    let failures = 0;
    while (!abort.signal.aborted) {
      client ??= await becomeLeader();
      const db = client;
      if (!db) break;
      try {
        notified = false;
        const more = await runOnce(db);
        failures = 0;
        if (Date.now() - lastLagCheck > LAG_CHECK_MS) await measureLag(db);
        // Notified during the round: start the next at once, without the idle-wait query.
        if (!more && !notified) {
          const ms = await idleWaitMs(db);
          if (!notified) await waitForWork(ms);
        }
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

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { processHealth, UNTRACKED, type LoopProgress } from '../infra/health.js';
import { recordRelayPublished, recordRelayRefused, registerRelayMetrics } from '../infra/metrics.js';
import { registerOutboxGauges } from '../infra/db-gauges.js';
import {
  backoffMs,
  createBackoff,
  createBrokerClient,
  declarePlacement,
  declareTopology,
  placementTopology,
  topologyNames,
  type BrokerConnection,
  type ConfirmingChannel,
  type OutgoingMessage,
  type Topology,
  type TopologyOptions,
} from '../broker/index.js';
import type { Redis } from 'ioredis';
import { createRedis, recordPlacementQueue, redisKeys, whenReady } from '../infra/redis.js';
import { coerceError, PLACEMENT_CLASS_HEADER, type SystemMessage, PLACEMENT_HEADER, type Priority } from '../domain/index.js';
import type { Logger } from '../infra/logger.js';
import { sleep, type Role } from '../infra/role.js';
import { ATTR, failSpan, formatTraceparent, SpanKind, spanTraceContext, startSpan, tracingEnabled, type Span } from '../infra/tracing.js';
import {
  backOffFenced,
  DEFAULT_RELAY_LEASE_NAME,
  keepLease,
  LeaseLostError,
  markPublishedFenced,
  releaseLease,
  renewEveryMs,
  sessionSettings,
  tryAcquireLease,
  type LeaseSpec,
  type LeaseTerm,
} from './relay-lease.js';

/** How long the relay trusts that a placement queue it declared and recorded in Redis is still there. */
const PLACEMENT_RECORD_REFRESH_MS = 30_000;

export interface RelayOptions {
  readonly databaseUrl: string;
  readonly amqpUrl: string;
  readonly topology: Topology;
  readonly logger: Logger;
  readonly batchSize: number;
  readonly pollIntervalMs: number;
  readonly retryMaxMs: number;
  /**
   * Leadership lease (default 5000): the leader renews it every third of this; a leader that could
   * not renew within it stops publishing, and a standby takes over once the database sees it expired.
   */
  readonly leaseMs?: number;
  /** Row of `relay_lease` (default 'outbox'): replicas with one name elect one publisher. */
  readonly leaseName?: string;
  /** This replica's name in `relay_lease` (default `<host>-<pid>-<random>`). */
  readonly holder?: string;
  /** Batches published and awaiting their confirms and UPDATE at once (default 3; 1 = strictly one after another). */
  readonly pipelineDepth?: number;
  /**
   * Placement dispatches (issue 20): the topology settings their class queues are declared with, and
   * the Redis where each class queue is recorded (`fog:placement-classes`) for fog nodes whose
   * labels match. Without it a placement dispatch is refused (and retried) as unroutable; without
   * `redisUrl` the classes are declared but not recorded (only zone nodes find them).
   */
  readonly placement?: { readonly topology: TopologyOptions; readonly redisUrl?: string; readonly redisPrefix?: string };
}

export interface RelayStats {
  leader: boolean;
  /** Fencing token of the term this replica leads (0 when it does not). */
  epoch: number;
  /** Terms that ended because the lease ran out or another replica took it. */
  leasesLost: number;
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
  /** Routing key of a refused placement dispatch (its queue is declared again before the next try). */
  routingKey?: string;
  /** Routing key of a task dispatch the broker nacked: its queue is full (or has no leader), so the key is held. */
  holdKey?: string;
}

interface BatchOutcome {
  ok: number[];
  failed: FailedRow[];
  /** Routing keys of the task exchange that took a message of this batch: their queues have room again. */
  taken: Set<string>;
}

/** A routing key held after its queue nacked a publish: its rows stay due, in order, untouched. */
interface Hold {
  /** Date.now() at which the key is tried again. */
  until: number;
  /** Holds in a row without a publish to the key confirmed: the next hold lasts longer. */
  refusals: number;
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

/** A publish the broker nacked (channel.ts's wording, or amqplib's): the queue refused it. */
const NACKED = /nack/i;

/** How long one round tries to reach the broker before it gives up until the next round. */
const CONNECT_ROUND_MS = 5000;
const DEFAULT_PIPELINE_DEPTH = 3;
const DEFAULT_LEASE_MS = 5000;
const LAG_CHECK_MS = 5000;
/** A connection being closed gets this long to say goodbye; then its socket is destroyed. */
const CLOSE_WAIT_MS = 1000;
/** After its deadline passed, a leader's batches in flight get this long to settle (fenced) before it drops them. */
const EXPIRED_SETTLE_MS = 1000;

/** One leadership term: the lease and the connection the outbox work of that term runs on. */
interface Term {
  readonly lease: LeaseTerm;
  /** LISTENs, claims, and the fenced writes; closed with the term. */
  readonly db: pg.Client;
  /**
   * Queries of the term on `db`, one after another: pg.Client runs one query at a time and warns
   * (pg@9 will refuse) when handed another before the first returns.
   */
  readonly inTurn: <T>(f: () => Promise<T>) => Promise<T>;
  /** Drops the term after its lease expired, unless it wound up by itself first. */
  dropTimer?: NodeJS.Timeout;
}

const closing = new WeakMap<pg.Client, Promise<void>>();

/** Ends a pg client within CLOSE_WAIT_MS, even when its server or network went silent; idempotent. */
function closeClient(c: pg.Client | undefined): Promise<void> {
  if (!c) return Promise.resolve();
  let closed = closing.get(c);
  if (!closed) {
    closed = (async () => {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([c.end().catch(() => {}), new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS)))]);
      clearTimeout(timer);
      c.connection.stream.destroy();
    })();
    closing.set(c, closed);
  }
  return closed;
}

/**
 * Publishes due outbox rows with publisher confirms, and marks them published only after the
 * broker confirmed them. Several replicas may run: one holds the lease in `relay_lease` and
 * publishes (so per-task order holds and nothing is published twice on purpose); the others
 * stand by and take over once the lease expired on the database's clock, within a lease and a
 * third (see relay-lease.ts). A leader stops publishing as soon as it cannot renew in time, and
 * its writes are fenced by its epoch, so one that was frozen or cut off and comes back marks
 * nothing once another has taken over; it drops its claims and stands by again.
 * It wakes on NOTIFY and also polls, so a lost notification only costs a poll.
 */
export function createRelay(options: RelayOptions): Role & { stats(): RelayStats } {
  const leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
  const spec: LeaseSpec = {
    name: options.leaseName ?? DEFAULT_RELAY_LEASE_NAME,
    holder: options.holder ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`,
    leaseMs,
  };
  const logger = options.logger.child({ role: 'relay', holder: spec.holder });
  const knownExchanges = new Set(options.topology.exchanges.map((e) => e.name));
  // Task dispatches must reach a queue (an unroutable one is a failure); a broadcast may reach none.
  const mandatory = new Set(options.topology.exchanges.filter((e) => e.type === 'direct').map((e) => e.name));
  // The task dispatches' exchange (the one direct exchange): the exchange whose routing keys are held.
  const dispatchExchange = options.topology.exchanges.find((e) => e.type === 'direct')?.name ?? '';
  const pipelineDepth = Math.max(1, options.pipelineDepth ?? DEFAULT_PIPELINE_DEPTH);
  // A standby looks at the lease this often: a takeover comes within a lease and this after the last renewal.
  const standbyPollMs = Math.min(options.pollIntervalMs, renewEveryMs(leaseMs));
  const abort = new AbortController();
  const stats: Omit<RelayStats, 'leader' | 'epoch'> = { published: 0, failed: 0, lagMs: 0, pending: 0, leasesLost: 0 };
  let wake: (() => void) | undefined;
  let loop: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  /** The standby's connection: acquires the lease, and renews it while this replica leads. */
  let leaseDb: pg.Client | undefined;
  let term: Term | undefined;
  // Connections take turns over the cluster's nodes, and a refused round backs off before the next.
  const broker = createBrokerClient({ urls: options.amqpUrl, name: 'fogsched-relay', logger, backoff: { baseMs: 100, maxMs: options.retryMaxMs } });
  let connection: BrokerConnection | undefined;
  let channel: ConfirmingChannel | undefined;
  let closingAmqp: Promise<void> | undefined;
  let lastLagCheck = 0;
  /** Placement queues (by routing key) declared, and recorded in Redis, since this relay started. */
  const placementReady = new Map<string, number>();
  /**
   * Task routing keys whose queue nacked a publish (at its x-max-length with reject-publish, or
   * without a quorum leader). Claims pass over the key's rows until the hold ends, so they keep
   * their order and cost no write per refusal; other keys go on. See `holdKey`.
   */
  const holds = new Map<string, Hold>();
  let placementRedis: Redis | undefined;
  /** A NOTIFY came while a round ran (nobody was waiting to be woken): go again at once. */
  let notified = false;
  // /healthz: every turn of the loop beats (a round, a batch of a long round, a standby look, a backoff).
  let progress: LoopProgress = UNTRACKED;
  let opsDone: (() => void)[] = [];

  const waitForWork = (ms: number, ended: AbortSignal) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wake = undefined;
        abort.signal.removeEventListener('abort', done);
        ended.removeEventListener('abort', done);
        resolve();
      }
      wake = done;
      abort.signal.addEventListener('abort', done, { once: true });
      ended.addEventListener('abort', done, { once: true });
    });

  /**
   * Closes the broker connection: gracefully when the broker answers within CLOSE_WAIT_MS, else
   * by destroying its socket, which fails every confirm still awaited (those rows stay unmarked).
   */
  const closeAmqp = (): Promise<void> => {
    const conn = connection;
    connection = undefined;
    channel = undefined;
    if (!conn) return closingAmqp ?? Promise.resolve();
    closingAmqp = conn.close(CLOSE_WAIT_MS);
    return closingAmqp;
  };

  const openSession = async (purpose: string): Promise<pg.Client> => {
    const c = new pg.Client({
      connectionString: options.databaseUrl,
      connectionTimeoutMillis: 5000,
      application_name: `fogsched-relay-${purpose}`,
      // The client notices a dead server too (the lease deadline does not wait for it).
      keepAlive: true,
      keepAliveInitialDelayMillis: 1000,
    });
    c.on('error', (error) => logger.warn({ err: error.message, purpose }, 'relay database connection lost'));
    try {
      await c.connect();
      await c.query(sessionSettings(leaseMs));
      return c;
    } catch (error) {
      await closeClient(c);
      throw error;
    }
  };

  /**
   * A lease lost mid-round: closing the channel fails the confirms still awaited and closing the
   * term's connection fails its queued statements, so the round unwinds without waiting on a
   * broker or a database that may not answer; whatever it had claimed goes out again under the
   * next leader.
   */
  const dropTerm = (t: Term) => {
    clearTimeout(t.dropTimer);
    if (term === t) void closeAmqp();
    void closeClient(t.db);
  };

  /** Stands by until this replica holds the lease; then opens the term's connection. Undefined once stopped. */
  const acquire = async (): Promise<Term | undefined> => {
    const retry = createBackoff({ baseMs: 200, maxMs: Math.min(options.retryMaxMs, 1000) });
    while (!abort.signal.aborted) {
      try {
        leaseDb ??= await openSession('lease');
        const sentAt = performance.now();
        const epoch = await tryAcquireLease(leaseDb, spec);
        retry.reset();
        if (epoch !== undefined) {
          const t = await openTerm(leaseDb, epoch, sentAt);
          logger.info({ epoch }, 'relay is the publishing replica');
          return t;
        }
      } catch (error) {
        const delay = retry.next();
        if (retry.failures === 1 || retry.failures % 10 === 0) logger.warn({ err: (error as Error).message, retryInMs: delay }, 'relay cannot reach postgresql; retrying');
        await closeClient(leaseDb);
        leaseDb = undefined;
        progress.beat(delay);
        await sleep(delay, abort.signal);
        continue;
      }
      progress.beat(standbyPollMs);
      await sleep(standbyPollMs, abort.signal);
    }
    return undefined;
  };

  const openTerm = async (db: pg.Client, epoch: number, sentAt: number): Promise<Term> => {
    let t: Term | undefined;
    const lease = keepLease({
      db,
      spec,
      epoch,
      sentAt,
      logger,
      onEnd: (reason) => {
        wake?.();
        if (reason === 'ended' || !t) return;
        stats.leasesLost++;
        const lost = t;
        // Taken: every write of the term is refused from now on, so drop everything at once.
        // Expired (no renewal in time, maybe only a pause): nothing more is published, but the
        // batches in flight may settle for a moment; their marks are fenced, so they land only if
        // the database still has the lease as ours, and save sending those rows again.
        if (reason === 'taken') dropTerm(lost);
        else lost.dropTimer = setTimeout(() => dropTerm(lost), EXPIRED_SETTLE_MS);
      },
    });
    let work: pg.Client | undefined;
    try {
      work = await openSession('outbox');
      work.on('notification', () => {
        notified = true;
        wake?.();
      });
      await work.query('LISTEN fogsched_outbox');
    } catch (error) {
      lease.end('ended');
      await releaseLease(db, spec, epoch).catch(() => {});
      await closeClient(work);
      throw error;
    }
    let tail: Promise<unknown> = Promise.resolve();
    t = {
      lease,
      db: work,
      inTurn: <T>(f: () => Promise<T>): Promise<T> => {
        const p = tail.then(f, f);
        tail = p.catch(() => {});
        return p;
      },
    };
    term = t;
    return t;
  };

  /** Ends a term: closes its channel and connection, and gives the lease back if it still held it (a stop, a failed round). */
  const endTerm = async (t: Term) => {
    clearTimeout(t.dropTimer);
    const held = t.lease.holds();
    t.lease.end('ended');
    await closeAmqp();
    if (term === t) term = undefined;
    const quiet = await t.lease.quiet(leaseMs);
    if (held && quiet && leaseDb) await releaseLease(leaseDb, spec, t.lease.epoch).catch(() => {});
    await closeClient(t.db);
    // Renewals that ran out or hang may sit on a dead connection: the standby starts on a fresh one.
    if (!quiet || t.lease.reason() === 'expired') {
      await closeClient(leaseDb);
      leaseDb = undefined;
    }
  };

  /** The connection of this term, opened if there is none; bounded by CONNECT_ROUND_MS. */
  const ensureConnection = async (ended: AbortSignal): Promise<BrokerConnection | undefined> => {
    if (connection?.isOpen()) return connection;
    // Bounded: during a broker outage the round ends (rows stay due) instead of parking the
    // loop inside connect, so the lag is still measured and reported, and the next round retries.
    // (Not AbortSignal.any + AbortSignal.timeout: on Node 20 the timeout signal can be garbage
    // collected before it fires, nodejs/node#57736, and every round would leave a listener behind.)
    const round = new AbortController();
    const endRound = () => round.abort();
    const timer = setTimeout(endRound, CONNECT_ROUND_MS);
    abort.signal.addEventListener('abort', endRound, { once: true });
    ended.addEventListener('abort', endRound, { once: true });
    let conn: BrokerConnection | undefined;
    try {
      // Each round goes on from the node after the one tried last: a node that hangs (each
      // attempt at it times out) costs one round, not every round.
      conn = await broker.connect(round.signal);
    } finally {
      clearTimeout(timer);
      abort.signal.removeEventListener('abort', endRound);
      ended.removeEventListener('abort', endRound);
    }
    if (!conn) return undefined;
    if (ended.aborted) {
      await conn.close();
      return undefined;
    }
    connection = conn;
    void conn.closed.then(() => {
      if (connection === conn) {
        connection = undefined;
        channel = undefined;
      }
    });
    return conn;
  };

  const ensureChannel = async (ended: AbortSignal): Promise<ConfirmingChannel | undefined> => {
    if (channel?.isOpen()) return channel;
    const conn = await ensureConnection(ended);
    if (!conn) return undefined;
    const ch = await conn.confirmChannel('relay');
    void ch.closed.then(() => {
      if (channel === ch) channel = undefined;
    });
    await declareTopology(ch.raw, options.topology);
    if (connection !== conn) return undefined; // closed meanwhile (the lease ended)
    channel = ch;
    return ch;
  };

  /**
   * Declares the placement queues the rows go to (each once: cached by routing key) and records
   * them in Redis for the fog nodes whose labels match; returns the rows whose queue could not be
   * made ready, refused as transient (they back off and come again). A zone-only class does not
   * wait for Redis (the zone's nodes declare and consume its queues themselves); a label class does.
   */
  const preparePlacement = async (conn: BrokerConnection, rows: readonly ClaimedRow[]): Promise<FailedRow[]> => {
    const wanted = new Map<string, { cls: string; placement: string; rows: ClaimedRow[] }>();
    for (const row of rows) {
      const cls = row.headers[PLACEMENT_CLASS_HEADER];
      // Declared and recorded lately: nothing to do. Older than PLACEMENT_RECORD_REFRESH_MS: again, so a
      // registry lost in Redis (a restart without persistence, a failover, a flush) is written anew.
      const readyAt = placementReady.get(row.routing_key);
      if (typeof cls !== 'string' || (readyAt !== undefined && Date.now() - readyAt < PLACEMENT_RECORD_REFRESH_MS)) continue;
      const entry = wanted.get(row.routing_key) ?? { cls, placement: typeof row.headers[PLACEMENT_HEADER] === 'string' ? row.headers[PLACEMENT_HEADER] : 'null', rows: [] };
      entry.rows.push(row);
      wanted.set(row.routing_key, entry);
    }
    if (wanted.size === 0) return [];
    const failed: FailedRow[] = [];
    const refuse = (entry: { rows: ClaimedRow[] }, error: string) => {
      for (const r of entry.rows) failed.push({ id: r.id, attempts: r.attempts, error });
    };
    const settings = options.placement;
    if (!settings) {
      for (const entry of wanted.values()) refuse(entry, 'placement dispatch but this relay has no placement settings');
      return failed;
    }
    if (settings.redisUrl && !placementRedis) {
      placementRedis = createRedis(settings.redisUrl, { logger, name: 'fogsched-relay' });
      // The first time only: give the new client a moment, so a zone class is recorded at its first publish.
      await whenReady(placementRedis, 2000);
    }
    const keys = redisKeys(settings.redisPrefix ?? '');
    // Its own channel: a refused declare closes the channel it ran on, and must not take the publishing one.
    let declaring: Awaited<ReturnType<BrokerConnection['channel']>> | undefined;
    let redisFailed = false;
    try {
      for (const [routingKey, entry] of wanted) {
        const [, tier, priority] = routingKey.split('.');
        try {
          if (!declaring?.isOpen()) {
            await declaring?.close();
            declaring = await conn.channel('relay-declare');
          }
          await declarePlacement(declaring.raw, placementTopology(settings.topology, entry.cls, [tier ?? ''], [priority as Priority]));
        } catch (error) {
          refuse(entry, `cannot declare placement queue ${routingKey}: ${(error as Error).message}`);
          continue;
        }
        // A class found only through Redis: labels, or a fallback delay (`~`); a zone's nodes declare its plain class themselves.
        const labelClass = entry.cls.includes('~');
        if (placementRedis) {
          try {
            // Not ready, or it failed once this round: do not wait on it again for each class (a
            // hanging Redis would stall every tenant's dispatches); the rows come again after backoff.
            if (placementRedis.status !== 'ready' || redisFailed) throw new Error('redis not ready');
            await recordPlacementQueue(placementRedis, keys, routingKey, entry.placement);
          } catch (error) {
            redisFailed = true;
            if (labelClass) {
              refuse(entry, `cannot record placement class ${routingKey} in redis: ${(error as Error).message}`);
              continue;
            }
            // Zone class: publish anyway; recorded at a later publish (the cache stays unset).
            continue;
          }
        }
        const known = placementReady.has(routingKey);
        placementReady.set(routingKey, Date.now());
        if (known) continue;
        // Nodes that match look in Redis at once (their periodic rescan is the fallback if this is lost).
        const hint: SystemMessage = { kind: 'placement-class', routingKey, at: new Date().toISOString() };
        try {
          declaring.raw.publish(topologyNames(settings.topology.prefix).system, '', Buffer.from(JSON.stringify(hint)), { contentType: 'application/json' });
        } catch {
          // the hint only saves a rescan interval
        }
      }
    } finally {
      await declaring?.close();
    }
    return failed;
  };

  /**
   * Publishes one claimed batch on `ch` (in claim order) and resolves once every row is confirmed or
   * refused (nack, return as unroutable, channel loss). One callback per row, no promise per row.
   */
  const publishBatch = async (ch: ConfirmingChannel, rows: readonly ClaimedRow[]): Promise<BatchOutcome> => {
    const timestamp = Math.floor(Date.now() / 1000);
    // Tracing on: a `relay publish` span per row, child of the row's trace; the message carries the span's.
    const spans = tracingEnabled() ? rows.map(publishSpan) : undefined;
    const messages = rows.map(
      (row, i): OutgoingMessage => ({
        exchange: row.exchange,
        routingKey: row.routing_key,
        body: Buffer.from(row.body),
        options: {
          persistent: true,
          mandatory: mandatory.has(row.exchange),
          messageId: row.message_id,
          contentType: 'application/json',
          headers: traced(row.headers, spans?.[i]),
          timestamp,
        },
      }),
    );
    const outcomes = await ch.publishAll(messages);
    const ok: number[] = [];
    const failed: FailedRow[] = [];
    const taken = new Set<string>();
    rows.forEach((row, i) => {
      const error = outcomes[i];
      const dispatch = row.exchange === dispatchExchange;
      if (error === undefined) {
        ok.push(row.id);
        if (dispatch) taken.add(row.routing_key);
        spans?.[i]?.end();
      } else {
        failed.push({
          id: row.id,
          attempts: row.attempts,
          error,
          ...(typeof row.headers[PLACEMENT_CLASS_HEADER] === 'string' ? { routingKey: row.routing_key } : {}),
          ...(dispatch && NACKED.test(error) ? { holdKey: row.routing_key } : {}),
        });
        failSpan(spans?.[i], error);
      }
    });
    return { ok, failed, taken };
  };

  /** A fenced write found another epoch: this term is over, whatever its local deadline says. */
  const fencedOut = (t: Term): never => {
    t.lease.end('taken');
    throw new LeaseLostError('taken');
  };

  /**
   * Starts holding `key` unless it is held already; true when this started a hold. Holds in a
   * row back off like refused rows do (200 ms doubling up to RELAY_RETRY_MAX_MS, with jitter).
   */
  const hold = (key: string): boolean => {
    const now = Date.now();
    const h = holds.get(key);
    if (h !== undefined && h.until > now) return false;
    const refusals = (h?.refusals ?? 0) + 1;
    const ms = backoffMs(refusals, { baseMs: 200, maxMs: options.retryMaxMs });
    holds.set(key, { until: now + ms, refusals });
    // A queue that fills while it drains is backpressure, not trouble: a hold after one that let
    // something in is debug. A warning once the queue has taken nothing for three holds in a row
    // (its consumers stopped?); the outbox lag gauge and its alert cover a long stall.
    const level = refusals >= 3 ? 'warn' : 'debug';
    logger[level]({ routingKey: key, holdMs: ms, refusals }, 'task queue refused a dispatch (full?); holding its routing key');
    return true;
  };

  /** The routing keys held now (their holds have not ended). */
  const heldKeys = (): string[] => {
    const now = Date.now();
    const keys: string[] = [];
    for (const [key, h] of holds) if (h.until > now) keys.push(key);
    return keys;
  };

  /**
   * Settles refused rows. A nacked dispatch holds its routing key: its rows stay due where they
   * are (no write per row), and the oldest refused one records the refusal (attempts, last_error)
   * once per hold. Any other refusal (unroutable, channel lost, unknown exchange, placement queue
   * not ready) gives the row its own backoff: it stays unpublished and comes due again later.
   */
  const backOff = async (t: Term, failed: readonly FailedRow[]) => {
    // A placement queue that refused a row may have been deleted meanwhile: declare it again next time.
    for (const f of failed) if (f.routingKey !== undefined) placementReady.delete(f.routingKey);
    const heads = new Map<string, FailedRow>();
    const rows: { id: number; error: string; backoffMs: number | null }[] = [];
    for (const f of failed) {
      if (f.holdKey !== undefined) {
        const head = heads.get(f.holdKey);
        if (head === undefined || f.id < head.id) heads.set(f.holdKey, f);
        continue;
      }
      // `attempts` counts the refusals before this one.
      const ms = f.error.startsWith('unknown exchange') ? 3_600_000 : backoffMs(f.attempts + 1, { baseMs: 200, maxMs: options.retryMaxMs });
      rows.push({ id: f.id, error: f.error.slice(0, 500), backoffMs: ms });
    }
    for (const [key, head] of heads) if (hold(key)) rows.push({ id: head.id, error: head.error.slice(0, 500), backoffMs: null });
    stats.failed += failed.length;
    if (rows.length === 0) return;
    const r = await t.inTurn(() => backOffFenced(t.db, spec, t.lease.epoch, rows));
    if (!r.held) fencedOut(t);
    if (rows.length > heads.size) logger.warn({ failed: failed.length, firstError: failed[0]?.error }, 'outbox rows not confirmed; will retry');
  };

  /**
   * The first claim of a round: the rows longest due (ties in id order), in the order of the
   * partial index of unpublished rows, so the scan stops after `batchSize` rows. Ordered by id
   * instead, it read every entry of that index up to now() and sorted them, and an entry stays
   * there, dead, from its row's UPDATE to the next VACUUM: with autovacuum behind (or off), each
   * claim read every row published since (25,000 of them: ~24,000 entries and 10 ms a claim, now
   * 0.2 ms). An index scan in order also marks the dead entries it meets, so the next claims skip them.
   */
  const claimDue = async (t: Term): Promise<Claim> => {
    const r = await t.inTurn(() =>
      t.db.query<ClaimedRow>(
        `SELECT id, message_id, exchange, routing_key, headers, body::text AS body, attempts
           FROM outbox WHERE published_at IS NULL AND available_at <= now()
                         AND NOT (exchange = $2 AND routing_key = ANY($3::text[]))
          ORDER BY available_at, id LIMIT $1`,
        [options.batchSize, dispatchExchange, heldKeys()],
      ),
    );
    // The next claim of the round walks the primary key after every row claimed here.
    let lastId = 0;
    for (const row of r.rows) if (row.id > lastId) lastId = row.id;
    return { rows: r.rows, lastId, full: r.rows.length === options.batchSize, dense: true };
  };

  /**
   * The next claim while earlier batches are in flight: the next `batchSize` rows after `afterId`
   * in primary-key order, keeping the due, unpublished ones: over a backlog, the rows written
   * after the ones claimed. Rows in flight are at or below `afterId`, so none is claimed twice.
   */
  const claimAfter = async (t: Term, afterId: number): Promise<Claim> => {
    const r = await t.inTurn(() =>
      t.db.query<ClaimedRow & { due: boolean }>(
        `SELECT id, message_id, exchange, routing_key, headers, body::text AS body, attempts,
                published_at IS NULL AND available_at <= now() AND NOT (exchange = $3 AND routing_key = ANY($4::text[])) AS due
           FROM outbox WHERE id > $1 ORDER BY id LIMIT $2`,
        [afterId, options.batchSize, dispatchExchange, heldKeys()],
      ),
    );
    const rows = r.rows.filter((x) => x.due);
    const last = r.rows[r.rows.length - 1];
    return { rows, lastId: last?.id ?? afterId, full: r.rows.length === options.batchSize, dense: rows.length * 2 >= r.rows.length };
  };

  /**
   * One round: claims the rows longest due, then the rows after them in id order, and publishes
   * them on one channel, keeping up to `pipelineDepth` batches awaiting their confirms: the next
   * batch is claimed and published while the earlier ones wait for theirs, and confirmed rows
   * are marked published behind them.
   * It claims no further batch once a row was refused, the channel changed, the rows thin out
   * (the next round starts over from the index), the relay stops or the lease ends; it publishes
   * nothing once the lease no longer holds. On a stop every batch in flight gets its confirms and
   * every confirmed row its UPDATE before it returns; on a lost lease the channel and connection
   * are closed under it (at once when taken, after EXPIRED_SETTLE_MS when expired), so the batches
   * in flight settle and the rows not marked stay due.
   * True when more rows may be due right away.
   */
  const runOnce = async (t: Term): Promise<boolean> => {
    let claim = await claimDue(t);
    if (claim.rows.length === 0) {
      stats.lagMs = 0;
      return false;
    }
    const ch = await ensureChannel(t.lease.signal);
    if (!ch) return false;
    const conn = connection;
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
            // Fenced, not checked against the local deadline: a confirmed row marked under a lease
            // the database still holds for us is right, and one the database no longer does is refused.
            const r = await t.inTurn(() => markPublishedFenced(t.db, spec, t.lease.epoch, batch));
            if (!r.held) fencedOut(t);
            stats.published += r.rows;
            recordRelayPublished(r.rows);
          }
        } catch (error) {
          failure ??= error; // the rows not marked stay due and go out again: at least once
        } finally {
          marking = undefined;
        }
      })();
    };
    const stopping = () => refused || failure !== undefined || channel !== ch || !ch.isOpen() || abort.signal.aborted || !t.lease.holds();
    try {
      for (;;) {
        // Checked right before the publishes go out: a leader past its deadline sends nothing more.
        if (!t.lease.holds()) break;
        // A row for an exchange this relay does not declare (say, written under another AMQP_PREFIX)
        // would close the channel and fail its whole batch each round: set it aside instead.
        const publishable = claim.rows.filter((r) => knownExchanges.has(r.exchange));
        const strays: FailedRow[] = claim.rows
          .filter((r) => !knownExchanges.has(r.exchange))
          .map((r) => ({ id: r.id, attempts: r.attempts, error: `unknown exchange ${r.exchange}` }));
        // Placement queues are declared before the batch's first publish to them; rows whose queue
        // is not ready are refused like unconfirmed ones (they back off), the others go out.
        const unready = conn ? await preparePlacement(conn, publishable) : [];
        const unreadyIds = new Set(unready.map((f) => f.id));
        const ready = unready.length > 0 ? publishable.filter((r) => !unreadyIds.has(r.id)) : publishable;
        strays.push(...unready);
        const settled = publishBatch(ch, ready)
          .then(async (outcome) => {
            if (outcome.ok.length > 0) markPublished(outcome.ok);
            // A confirmed dispatch says its queue took something: a hold this batch starts (the queue
            // filled up again) is a short one, and holds grow only while nothing goes in.
            for (const key of outcome.taken) holds.delete(key);
            const failed = [...outcome.failed, ...strays];
            if (failed.length > 0) {
              refused = true;
              recordRelayRefused(failed.length);
              await backOff(t, failed);
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
        next = claimAfter(t, claim.lastId);
        next.catch(() => {}); // awaited below; until then a failure must not count as unhandled
        while (inFlight.size >= pipelineDepth) await Promise.race(inFlight);
        while (marking && toMark.length >= pipelineDepth * options.batchSize) await marking;
        claim = await next;
        next = undefined;
        progress.beat(); // a long round over a backlog is progress too
        if (claim.rows.length === 0 || stopping()) break;
        if (Date.now() - lastLagCheck > LAG_CHECK_MS) await measureLag(t);
      }
    } catch (error) {
      failure ??= error;
    } finally {
      // Claimed but not published: those rows simply stay due. Every batch in flight gets its
      // confirms (or fails with its channel), and every confirmed row its UPDATE, before the round ends.
      await next?.catch(() => {});
      await Promise.all(inFlight);
      while (marking) await marking;
    }
    if (failure !== undefined) throw coerceError(failure);
    return claim.full && !refused;
  };

  /** Sleep until the poll, or until a delayed row comes due if that is sooner (delays fire on time). */
  const idleWaitMs = async (t: Term): Promise<number> => {
    const r = await t.inTurn(() =>
      t.db.query<{ ms: number | null }>(
        `SELECT (extract(epoch FROM min(available_at) - now()) * 1000)::float8 AS ms FROM outbox WHERE published_at IS NULL AND available_at > now()`,
      ),
    );
    const due = r.rows[0]?.ms ?? options.pollIntervalMs;
    // A held routing key is tried again when its hold ends, notification or not.
    let holdEnd = Infinity;
    for (const h of holds.values()) if (h.until > Date.now()) holdEnd = Math.min(holdEnd, h.until - Date.now());
    return Math.max(1, Math.min(options.pollIntervalMs, Math.ceil(due), Math.ceil(holdEnd)));
  };

  const measureLag = async (t: Term) => {
    lastLagCheck = Date.now();
    const r = await t.inTurn(() =>
      t.db.query<{ lag_ms: number | null; pending: number }>(
        `SELECT (extract(epoch FROM now() - min(available_at)) * 1000)::float8 AS lag_ms, count(*)::int AS pending
           FROM outbox WHERE published_at IS NULL AND available_at <= now()`,
      ),
    );
    stats.lagMs = Math.max(0, r.rows[0]?.lag_ms ?? 0);
    stats.pending = r.rows[0]?.pending ?? 0;
    if (stats.pending > 0) logger.warn({ lagMs: Math.round(stats.lagMs), pending: stats.pending }, 'outbox lag');
  };

  /** Publishes round after round while the lease holds and the relay runs. */
  const lead = async (t: Term) => {
    while (!abort.signal.aborted && t.lease.holds()) {
      notified = false;
      const more = await runOnce(t);
      roundRetry.reset();
      progress.beat(options.pollIntervalMs);
      if (!t.lease.holds()) break;
      if (Date.now() - lastLagCheck > LAG_CHECK_MS) await measureLag(t);
      // Notified during the round: start the next at once, without the idle-wait query.
      if (!more && !notified) {
        const ms = await idleWaitMs(t);
        if (!notified) await waitForWork(ms, t.lease.signal);
      }
    }
  };

  /** Rounds failed in a row: the backoff before this replica tries to lead again. */
  const roundRetry = createBackoff({ baseMs: 200, maxMs: options.retryMaxMs });

  const run = async () => {
    while (!abort.signal.aborted) {
      const t = await acquire();
      if (!t) break;
      let error: unknown;
      try {
        await lead(t);
      } catch (e) {
        error = e;
      }
      // A lost lease explains whatever failed in the round it cut short (closed channel, closed connection).
      const lost = t.lease.reason() ?? (error instanceof LeaseLostError ? error.reason : undefined);
      await endTerm(t);
      if (lost === 'expired' || lost === 'taken') {
        logger.warn({ epoch: t.lease.epoch, reason: lost }, 'relay lease lost; standing by');
      } else if (error !== undefined) {
        const delay = roundRetry.next();
        logger.warn({ err: (error as Error).message, retryInMs: delay }, 'relay round failed');
        progress.beat(delay);
        // Start clean: the lease was given back, the connections closed; a standby may take over meanwhile.
        await sleep(delay, abort.signal);
      }
    }
  };

  return {
    name: 'relay',
    stats: () => {
      const t = term;
      const leading = t !== undefined && t.lease.holds();
      return { ...stats, leader: leading, epoch: leading ? t.lease.epoch : 0 };
    },
    async start() {
      opsDone = [
        registerRelayMetrics(() => term !== undefined && term.lease.holds()),
        registerOutboxGauges(options.databaseUrl),
      ];
      progress = processHealth.loop('relay', { intervalMs: options.pollIntervalMs });
      loop = run().catch((error: unknown) => logger.error({ err: error }, 'relay loop crashed'));
    },
    stop() {
      return (stopped ??= (async () => {
        abort.abort();
        await loop; // the batch in flight gets its confirms and its UPDATE; the lease is given back
        await closeAmqp();
        await closeClient(leaseDb);
        leaseDb = undefined;
        placementRedis?.disconnect();
        progress.dispose();
        for (const done of opsDone) done();
      })());
    },
  };
}

/** The `relay publish` span of an outbox row: a child of the trace its headers carry. */
function publishSpan(row: ClaimedRow): Span | undefined {
  const taskId = row.headers['x-task-id'];
  const attempt = row.headers['x-attempt'];
  return startSpan('relay publish', {
    kind: SpanKind.PRODUCER,
    ...(typeof row.headers.traceparent === 'string' ? { parent: row.headers.traceparent } : {}),
    attributes: {
      [ATTR.role]: 'relay',
      'messaging.system': 'rabbitmq',
      'messaging.operation.type': 'send',
      'messaging.destination.name': row.exchange,
      'messaging.rabbitmq.destination.routing_key': row.routing_key,
      'messaging.message.id': row.message_id,
      ...(typeof taskId === 'string' ? { [ATTR.taskId]: taskId, [ATTR.tier]: row.routing_key.split('.')[0] ?? '' } : {}),
      ...(typeof attempt === 'number' ? { [ATTR.attempt]: attempt } : {}),
    },
  });
}

function traced(headers: Record<string, unknown>, span: Span | undefined): Record<string, unknown> {
  return span ? { ...headers, traceparent: formatTraceparent(spanTraceContext(span)) } : headers;
}

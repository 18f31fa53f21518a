import { createHash, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { sql, type Kysely } from 'kysely';
import type { ConsumeMessage } from 'amqplib';
import {
  assertNever,
  invalidResultBatch,
  isUuid,
  PLACEMENT_CLASS_HEADER,
  RETURNS_HEADER,
  type BackoffOptions,
  type FailureReason,
  type NodeMetricSample,
  type ResultBatch,
  type ResultRecord,
  type TaskCommand,
  type TaskError,
  type TaskMessage,
} from '../domain/index.js';
import { createBackoff, createBrokerClient, declareTopology, type BrokerChannel, type BrokerConnection, type Topology, type TopologyNames } from '../broker/index.js';
import { MAX_INGEST_LANES } from '../infra/config.js';
import type { Logger } from '../infra/logger.js';
import { classifyPgError, PREPARE_MARK } from '../infra/postgres.js';
import { sleep, type Role } from '../infra/role.js';
import { ATTR, failSpan, formatTraceparent, parseTraceparent, SpanKind, spanTraceContext, startSpan, traceMetadata, tracingEnabled, type Span } from '../infra/tracing.js';
import { appendEvents, type Database, type Executor, type NewEvent } from '../store/index.js';
import { executeTaskCommands, type CommandItem } from '../tasks/index.js';
import { processHealth, UNTRACKED, type LoopProgress } from '../infra/health.js';
import { recordIngestBatch, recordTaskEvents, type TaskEventForMetrics } from '../infra/metrics.js';
import { isStorableText, storableBody, storableJson, storableText } from './storable.js';

export interface IngestOptions {
  readonly db: Kysely<Database>;
  readonly amqpUrl: string;
  readonly topology: Topology;
  readonly names: TopologyNames;
  readonly batchSize: number;
  readonly flushMs: number;
  readonly backoff: BackoffOptions;
  readonly metricsRetentionHours: number;
  readonly logger: Logger;
  /** Cap of the backoff between tries of a batch that failed on a transient database error; default 10,000 ms. */
  readonly retryMaxMs?: number;
  /** Consecutive failures of a batch on an unclassified error before it is isolated like a permanent one; default 5. */
  readonly unknownErrorLimit?: number;
  /**
   * Where ingest replicas meet to share the result lanes (topology.lanes): each live replica
   * announces itself in the sorted set `<prefix>ingest:replicas` and owns the lanes `i` with
   * `i mod replicas` its rank. Without it (or with Redis down) a replica keeps every lane it is
   * given: the broker's single active consumer keeps one owner per lane either way.
   */
  readonly membership?: { readonly redis: Redis; readonly prefix: string; readonly ttlMs?: number };
  /** This replica's name in the membership; default `<hostname>-<pid>-<random>`. */
  readonly replicaId?: string;
  /** How often ingest looks for lane queues past its own INGEST_LANES (declared by a role with more); default 60,000 ms (and at every connect). */
  readonly laneDiscoveryMs?: number;
}

type Source = 'results' | 'metrics' | 'dlq';

interface Pending {
  readonly msg: ConsumeMessage;
  readonly source: Source;
}

/** A fresh message (its inbox id was new) with its parsed body. */
interface Entry extends Pending {
  readonly id: string;
  readonly body: unknown;
}

export interface IngestStats {
  batches: number;
  messages: number;
  duplicates: number;
  /** Messages kept in the log as MessageDeadLettered instead of applied. */
  rejected: number;
  /** Tries of a batch that failed on a transient (or not yet classified) error; the batch was kept and tried again. */
  retries: number;
  /** Result records that could never be written, kept in the log as ResultRecordSetAside. */
  setAside: number;
  /** Succeeded records whose output PostgreSQL refused: their task failed `output-not-storable`. */
  notStorable: number;
  /** Lanes this replica handed over to the replica that owns them. */
  handovers: number;
  /** Messages settled per result lane by this replica (index: lane). */
  laneMessages: number[];
}

/** What one transaction did, added to the stats once it committed (a rolled-back try counts nothing). */
interface Tally {
  /** Task events appended (for metrics, counted once committed). */
  applied: TaskEventForMetrics[];
  /** Result records applied. */
  records: number;
  duplicates: number;
  rejected: number;
  setAside: number;
  notStorable: number;
}

/** Tracing on: the `ingest apply` spans of the batch being settled, by message id and record index. */
type BatchSpans = Map<string, { readonly span: Span; readonly taskId: string }>;

/** One try at a transaction: its executor, the ingest's clock for it, whether unclassified errors count as permanent. */
interface Try {
  readonly trx: Executor;
  readonly now: string;
  readonly strict: boolean;
  readonly tally: Tally;
  readonly spans: BatchSpans | undefined;
}

/**
 * A consumer of its own, on a channel of its own, applying its batches one at a time: `main`
 * takes the legacy results queue, metrics and the dlq; each result lane has one. Units run side
 * by side, so lanes commit in parallel. A task is in one lane only, so two lanes seldom touch the
 * same row; where they do (the dependents of a task in another lane, a dead letter on `main`)
 * row locks taken in task id order serialize them, and a deadlock is a transient error, retried.
 */
interface Unit {
  readonly label: string;
  /** The result lane, or null for `main`. */
  readonly lane: number | null;
  readonly consumes: readonly { readonly queue: string; readonly source: Source }[];
  channel?: BrokerChannel;
  consumerTags: string[];
  queue: Pending[];
  wake?: () => void;
  /** A lane that another live replica owns got a delivery here: hand it over. */
  yieldAsked: boolean;
  /** Its consumer is cancelled: what it holds is settled, then it consumes again, behind the owner. */
  cancelled: boolean;
  lastYield: number;
  /** It had a delivery since it (re)started consuming: the broker made this replica the lane's active consumer. */
  active: boolean;
}

/** Messages not settled (neither applied nor set aside) that go back to the front of the queue. */
class Unsettled extends Error {
  constructor(
    readonly rest: readonly Pending[],
    readonly error: unknown,
    readonly kind: 'transient' | 'permanent' | 'unknown',
  ) {
    super('batch not settled', { cause: error });
  }
}

/** The error code of a succeeded record whose output PostgreSQL cannot store (the task fails, no retry). */
export const OUTPUT_NOT_STORABLE = 'output-not-storable';

/**
 * Applies what fog nodes report: consumes `results`, `metrics.node` and `dlq`
 * in batches and, per batch, in ONE transaction records the message ids in
 * the inbox (a redelivered message is skipped), appends the result events
 * through the domain's decide (duplicates are no-ops), updates the read models
 * and writes follow-up outbox rows (retries); only then acks the whole batch.
 *
 * Errors (see classifyPgError): a transient one (timeout, lock, deadlock, too many clients,
 * disk full, read-only, connection) keeps the batch and tries it again with capped backoff;
 * nothing is dead-lettered for it. A permanent one bisects the batch down to the message
 * that causes it, then applies that message record by record: the others are applied, a
 * succeeded record whose output cannot be stored fails its task `output-not-storable`, and
 * a record that can never be written is set aside and recorded (ResultRecordSetAside).
 * A message that cannot be used at all is recorded as MessageDeadLettered, in a form that is
 * always storable. Nothing is ever nacked without requeue.
 */
export function createIngest(options: IngestOptions): Role & { stats(): IngestStats } {
  const logger = options.logger.child({ role: 'ingest' });
  const abort = new AbortController();
  const stats: IngestStats = { batches: 0, messages: 0, duplicates: 0, rejected: 0, retries: 0, setAside: 0, notStorable: 0, handovers: 0, laneMessages: Array.from({ length: options.topology.lanes ?? 0 }, () => 0) };
  const broker = createBrokerClient({ urls: options.amqpUrl, name: 'fogsched-ingest', logger });
  const unknownErrorLimit = options.unknownErrorLimit ?? 5;
  const n = options.names;
  const unit = (label: string, lane: number | null, consumes: Unit['consumes']): Unit => ({ label, lane, consumes, consumerTags: [], queue: [], yieldAsked: false, cancelled: false, lastYield: 0, active: false });
  const units: Unit[] = [
    unit('main', null, [{ queue: n.resultsQueue, source: 'results' }, { queue: n.metricsQueue, source: 'metrics' }, { queue: n.dlq, source: 'dlq' }]),
    ...Array.from({ length: options.topology.lanes ?? 0 }, (_, lane) => unit(`lane ${lane}`, lane, [{ queue: n.resultLane(lane), source: 'results' as const }])),
  ];
  const replicaId = options.replicaId ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  const membershipTtlMs = options.membership?.ttlMs ?? 5000;
  /** Live replicas, by rank, as last read from Redis; empty while unknown (every lane is then kept). */
  let replicas: string[] = [];
  let connection: BrokerConnection | undefined;
  let loops: Promise<void>[] = [];
  let lastDiscovery = 0;
  const crashed = (error: unknown) => logger.error({ err: error }, 'ingest loop crashed');
  let stopped: Promise<void> | undefined;
  let lastRetention = 0;
  // /healthz: each turn of a unit's loop beats (a batch applied or retried, an idle wait of at most a second, a reconnect).
  let progress: LoopProgress = UNTRACKED;

  /** A result batch whose records carry their `ingest apply` span's context instead of the run's (tracing on). */
  const traced = (spans: BatchSpans | undefined, id: string, batch: ResultBatch): ResultBatch => {
    if (!spans) return batch;
    const records = batch.records.map((r, i) => {
      const key = `${id}:${i}`;
      let span = spans.get(key)?.span;
      if (!span) {
        span = startSpan('ingest apply', {
          kind: SpanKind.CONSUMER,
          ...(r.traceparent ? { parent: r.traceparent } : {}),
          attributes: { [ATTR.role]: 'ingest', [ATTR.taskId]: r.taskId, [ATTR.attempt]: r.attempt, [ATTR.nodeId]: batch.nodeId, [ATTR.record]: r.kind, 'messaging.message.id': id },
        });
        if (!span) return r;
        spans.set(key, { span, taskId: r.taskId });
      }
      return { ...r, traceparent: formatTraceparent(spanTraceContext(span)) };
    });
    return { ...batch, records };
  };

  /** Anything wrong with a channel (an error closed it, the broker cancelled a consumer): start over on a new connection. */
  const restart = (why: string) => {
    const conn = connection;
    if (!conn || abort.signal.aborted) return;
    logger.warn({ why }, 'ingest restarting its broker connection');
    void conn.close();
  };

  /** The replica that owns `lane`, when the membership is known; undefined otherwise. */
  const ownerOf = (lane: number): string | undefined => (replicas.length > 0 ? replicas[lane % replicas.length] : undefined);

  const onMessage = (u: Unit, source: Source) => (msg: ConsumeMessage | null) => {
    if (!msg) return restart(`consumer of ${source} (${u.label}) cancelled by the broker`);
    u.queue.push({ msg, source });
    if (u.lane !== null && !u.active) {
      u.active = true;
      logger.info({ lane: u.lane, replica: replicaId }, 'applying a result lane');
    }
    if (u.lane !== null && !u.yieldAsked && !u.cancelled) {
      const owner = ownerOf(u.lane);
      if (owner !== undefined && owner !== replicaId && Date.now() - u.lastYield > membershipTtlMs) u.yieldAsked = true;
    }
    // The first message ends the idle wait (the batch then fills for flushMs); a full batch ends any wait.
    if (u.queue.length === 1 || u.queue.length >= options.batchSize) u.wake?.();
  };

  const waitForBatch = (u: Unit, ms: number) =>
    new Promise<void>((resolve) => {
      if (u.queue.length >= options.batchSize || abort.signal.aborted) return resolve();
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        u.wake = undefined;
        resolve();
      }
      u.wake = done;
    });

  const consume = async (u: Unit, ch: BrokerChannel) => {
    u.consumerTags = [];
    u.active = false;
    for (const c of u.consumes) u.consumerTags.push((await ch.raw.consume(c.queue, onMessage(u, c.source), { noAck: false })).consumerTag);
  };

  /** A unit's own channel on `conn`, consuming its queues (the first one declares the topology). */
  const openUnit = async (conn: BrokerConnection, u: Unit, declare: boolean): Promise<BrokerChannel> => {
    const ch = await conn.channel(`consume ${u.label}`);
    // A channel closed by the broker (e.g. an unknown delivery tag) leaves the connection up: reconnect.
    void ch.closed.then(() => restart(`channel of ${u.label} closed`));
    if (declare) await declareTopology(ch.raw, options.topology);
    await ch.raw.prefetch(options.batchSize * 2, false);
    await consume(u, ch);
    return ch;
  };

  const connect = async (): Promise<boolean> => {
    const conn = await broker.connect(abort.signal);
    if (!conn) return false;
    try {
      const opened: BrokerChannel[] = [];
      for (const u of units) opened.push(await openUnit(conn, u, opened.length === 0));
      connection = conn;
      for (const [i, u] of units.entries()) {
        u.channel = opened[i];
        u.yieldAsked = false;
        u.cancelled = false;
        u.wake?.();
      }
      void conn.closed.then(() => {
        if (connection !== conn) return;
        connection = undefined;
        for (const u of units) {
          u.channel = undefined;
          // Unacked deliveries of this channel go back to their queues by themselves.
          u.queue = [];
          u.wake?.();
        }
        if (!abort.signal.aborted) logger.warn('ingest lost the broker; reconnecting');
      });
      logger.info({ lanes: units.length - 1, replica: replicaId }, 'ingest consuming');
      return true;
    } catch (error) {
      logger.warn({ err: (error as Error).message }, 'ingest setup failed');
      // What the half-set-up channels delivered goes back to the queues with the connection.
      for (const u of units) u.queue = [];
      await conn.close();
      return false;
    }
  };

  /**
   * Announces this replica (only while it consumes) and reads who else is live. A replica
   * killed without a word drops out after membershipTtlMs; the broker has by then already
   * given its lanes to a waiting consumer of another replica.
   */
  const heartbeat = async () => {
    const m = options.membership;
    if (!m) return;
    const key = `${m.prefix}ingest:replicas`;
    const now = Date.now();
    try {
      if (!connection) {
        await m.redis.zrem(key, replicaId);
        replicas = [];
        return;
      }
      const [, , live] = (await m.redis.multi().zadd(key, now, replicaId).zremrangebyscore(key, '-inf', now - membershipTtlMs).zrange(key, 0, -1).exec()) ?? [];
      // By name, not by score (the time of the last beat): every replica must rank them alike.
      const ids = [...((live?.[1] as string[] | undefined) ?? [])].sort();
      if (ids.join() !== replicas.join()) logger.info({ replicas: ids, replica: replicaId }, 'ingest replicas changed; lanes are shared among them');
      replicas = ids;
    } catch {
      replicas = []; // Redis down: keep what the broker gives
    }
  };

  /**
   * Lane queues past this process's lanes that exist: a role with a larger INGEST_LANES (a fog
   * node, say) declared them and sends records there. Consumed too, with a unit each, so no lane
   * is left without a consumer while the roles disagree; each find is logged. Lanes are declared
   * from 0 up, so the look stops at the first lane queue that does not exist.
   */
  const discoverLanes = async (conn: BrokerConnection) => {
    lastDiscovery = Date.now();
    const known = new Set(units.flatMap((u) => (u.lane === null ? [] : [u.lane])));
    for (let lane = 0; lane < MAX_INGEST_LANES; lane++) {
      if (known.has(lane)) continue;
      // A passive declare of a missing queue closes its channel (404): a throwaway channel per look.
      const probe = await conn.model.createChannel();
      probe.on('error', () => {});
      try {
        await probe.checkQueue(n.resultLane(lane));
      } catch {
        return;
      } finally {
        await probe.close().catch(() => {});
      }
      const u = unit(`lane ${lane}`, lane, [{ queue: n.resultLane(lane), source: 'results' }]);
      u.channel = await openUnit(conn, u, false);
      units.push(u);
      stats.laneMessages[lane] ??= 0;
      loops.push(work(u).catch(crashed));
      logger.warn({ lane, lanes: options.topology.lanes ?? 0 }, 'a result lane past this INGEST_LANES exists (a role has a larger one): consuming it too; give every role the same INGEST_LANES');
    }
  };

  /** Keeps the connection up and the membership fresh; the units do the work. */
  const supervise = async () => {
    const setupRetry = createBackoff({ baseMs: 250, maxMs: 5000 });
    while (!abort.signal.aborted) {
      progress.beat();
      if (!connection) {
        if (await connect()) setupRetry.reset();
        else {
          const delay = setupRetry.next();
          progress.beat(delay);
          await sleep(delay, abort.signal);
          continue;
        }
      }
      await heartbeat();
      const conn = connection;
      if (conn && Date.now() - lastDiscovery >= (options.laneDiscoveryMs ?? 60_000)) {
        await discoverLanes(conn).catch((error: unknown) => logger.warn({ err: (error as Error).message }, 'looking for result lanes failed'));
      }
      await Promise.race([sleep(Math.min(1000, membershipTtlMs / 3), abort.signal), connection?.closed]);
    }
  };

  /** One unit's loop: wait for a batch, settle it, try again on failure. */
  const work = async (u: Unit) => {
    const retry = createBackoff({ baseMs: 100, maxMs: options.retryMaxMs ?? 10_000 });
    let unknownFailures = 0;
    while (!abort.signal.aborted) {
      progress.beat();
      const ch = u.channel;
      if (!ch) {
        await waitForBatch(u, 1000);
        continue;
      }
      if (u.yieldAsked && !u.cancelled) {
        // Stop taking deliveries; what arrived before the cancel's answer is settled below, then it queues up again.
        try {
          for (const tag of u.consumerTags) await ch.raw.cancel(tag);
          u.cancelled = true;
          logger.info({ lane: u.lane, owner: ownerOf(u.lane as number), replica: replicaId }, 'handing a result lane over to the replica that owns it');
        } catch (error) {
          logger.warn({ err: (error as Error).message, lane: u.lane }, 'lane hand-over failed');
        }
        u.yieldAsked = false;
        continue;
      }
      if (u.cancelled && u.queue.length === 0) {
        try {
          await consume(u, ch);
          stats.handovers++;
        } catch (error) {
          logger.warn({ err: (error as Error).message, lane: u.lane }, 'consuming a lane again failed');
          restart('lane consume failed');
        }
        u.cancelled = false;
        u.lastYield = Date.now();
        continue;
      }
      await waitForBatch(u, u.queue.length > 0 ? options.flushMs : 1000);
      if (u.channel !== ch || u.queue.length === 0) continue;
      const batch = u.queue.splice(0, options.batchSize);
      const spans: BatchSpans | undefined = tracingEnabled() ? new Map() : undefined;
      try {
        // An error nobody classified that keeps coming back is treated as permanent, so one
        // message cannot hold up the queue for ever: its batch is bisected and it is isolated.
        await settle(ch, batch, unknownFailures >= unknownErrorLimit, spans);
        if (u.lane !== null) stats.laneMessages[u.lane] = (stats.laneMessages[u.lane] ?? 0) + batch.length;
        for (const { span } of spans?.values() ?? []) span.end();
        retry.reset();
        unknownFailures = 0;
      } catch (error) {
        for (const { span } of spans?.values() ?? []) failSpan(span, 'batch not applied; it is tried again');
        const unsettled = error instanceof Unsettled ? error : new Unsettled(batch, error, 'unknown');
        // Keep what is not settled, in order, at the front; after a lost channel they come back as new deliveries instead.
        if (u.channel === ch) u.queue.unshift(...unsettled.rest);
        const delay = retry.next();
        unknownFailures = unsettled.kind === 'transient' ? 0 : unknownFailures + 1;
        stats.retries++;
        const cause = unsettled.error as { message?: string; code?: string };
        logger.warn(
          { err: cause?.message, code: cause?.code, kind: unsettled.kind, unit: u.label, retryInMs: delay, messages: unsettled.rest.length, failures: retry.failures },
          'ingest batch not applied; will retry',
        );
        progress.beat(delay);
        await sleep(delay, abort.signal);
        continue;
      }
      if (u.lane === null && Date.now() - lastRetention > 60_000) {
        lastRetention = Date.now();
        await sql`DELETE FROM node_metrics WHERE at < now() - ${options.metricsRetentionHours} * interval '1 hour'`.execute(options.db).catch(() => {});
      }
    }
  };

  /** Is `error` one to give up on for this message (as opposed to trying again later)? */
  const isPermanent = (error: unknown, strict: boolean) => {
    const kind = classifyPgError(error);
    return kind === 'permanent' || (kind === 'unknown' && strict);
  };

  /**
   * Applies a batch and acks it. A permanent error bisects it, down to the one message that
   * causes it, which is then applied record by record. Throws Unsettled with what is left
   * (in order) on a transient error.
   */
  const settle = async (ch: BrokerChannel, batch: readonly Pending[], strict: boolean, spans: BatchSpans | undefined): Promise<void> => {
    let tally = newTally();
    try {
      await options.db.transaction().execute((trx) => applyMessages({ trx, now: new Date().toISOString(), strict, tally, spans }, batch));
    } catch (error) {
      if (!isPermanent(error, strict)) throw new Unsettled(batch, error, classifyPgError(error));
      if (batch.length > 1) {
        const mid = Math.ceil(batch.length / 2);
        const second = batch.slice(mid);
        try {
          await settle(ch, batch.slice(0, mid), strict, spans);
        } catch (e) {
          if (e instanceof Unsettled) throw new Unsettled([...e.rest, ...second], e.error, e.kind);
          throw e;
        }
        await settle(ch, second, strict, spans);
        return;
      }
      const only = batch[0] as Pending;
      logger.warn({ err: (error as Error).message, code: (error as { code?: string }).code, messageId: only.msg.properties.messageId }, 'message cannot be applied as a whole; applying it record by record');
      tally = newTally();
      try {
        await options.db.transaction().execute((trx) => isolate({ trx, now: new Date().toISOString(), strict, tally, spans }, only));
      } catch (e) {
        // Even the record of what could not be applied failed: keep the message and try again.
        const kind = classifyPgError(e);
        if (kind === 'permanent') logger.error({ err: (e as Error).message, messageId: only.msg.properties.messageId }, 'message could not be set aside; keeping it');
        throw new Unsettled(batch, e, kind === 'transient' ? 'transient' : 'unknown');
      }
    }
    // Every delivery up to `last` on this channel is in this or an earlier, already settled batch.
    const last = batch.reduce((max, p) => Math.max(max, p.msg.fields.deliveryTag), 0);
    // On a channel that has gone meanwhile it is dropped: the broker redelivers them, and the inbox skips them.
    ch.settle({ fields: { deliveryTag: last } } as ConsumeMessage, 'ack-up-to');
    recordTaskEvents(tally.applied);
    if (tally.records > 0) recordIngestBatch(tally.records); // a batch of metric samples only is not a result batch
    stats.batches++;
    stats.messages += batch.length;
    stats.duplicates += tally.duplicates;
    stats.rejected += tally.rejected;
    stats.setAside += tally.setAside;
    stats.notStorable += tally.notStorable;
  };

  /** Records the batch's message ids in the inbox; returns the messages seen for the first time, parsed. */
  const freshEntries = async ({ trx, tally }: Try, batch: readonly Pending[]): Promise<Entry[]> => {
    const ids = batch.map((p) => messageIdOf(p.msg));
    const fresh = await sql<{ message_id: string }>`${sql.raw(PREPARE_MARK)}
      INSERT INTO inbox (message_id, source)
      SELECT * FROM unnest(${ids}::text[], ${batch.map((p) => p.source)}::text[])
      ON CONFLICT DO NOTHING RETURNING message_id`.execute(trx);
    const isFresh = new Set(fresh.rows.map((r) => r.message_id));
    tally.duplicates += batch.length - isFresh.size;
    const seen = new Set<string>();
    const entries: Entry[] = [];
    batch.forEach((p, i) => {
      const id = ids[i] as string;
      if (!isFresh.has(id) || seen.has(id)) return;
      seen.add(id);
      // A result message the broker dead-lettered (RabbitMQ 4.x counts returns toward a quorum
      // queue's default delivery limit of 20; 3.10 has none) is still the node's report: apply it.
      const source = p.source === 'dlq' && isResultQueue(String(p.msg.properties.headers?.['x-first-death-queue'] ?? ''), options.names) ? 'results' : p.source;
      entries.push({ ...p, source, id, body: parseJson(p.msg) });
    });
    return entries;
  };

  const applyMessages = async (t: Try, batch: readonly Pending[]) => {
    await applyEntries(t, await freshEntries(t, batch));
  };

  /** What the messages say, in one statement per kind: task commands, metric samples, messages kept as dead letters. */
  const applyEntries = async (t: Try, entries: readonly Entry[]) => {
    const { trx, now } = t;
    const items: CommandItem[] = [];
    const metrics: NodeMetricSample[] = [];
    const deadLetters: DeadLetter[] = [];
    for (const e of entries) {
      if (e.source === 'results') {
        const problem = invalidResultBatch(e.body);
        if (problem) deadLetters.push({ id: e.id, msg: e.msg, reason: `malformed result message: ${problem}` });
        else items.push(...resultCommands(traced(t.spans, e.id, e.body as ResultBatch), { backoff: options.backoff, now }));
      } else if (e.source === 'metrics') {
        if (isMetricSample(e.body)) metrics.push(e.body);
      } else {
        const item = deadLetterCommand(e.msg, e.body, options.names, now);
        if (item) items.push(item);
        else deadLetters.push({ id: e.id, msg: e.msg, reason: 'dead-lettered message is not a task message' });
      }
    }
    const outcome = await executeTaskCommands(trx, items, options.names);
    for (const a of outcome.applied) t.tally.applied.push(a);
    t.tally.records += items.length;
    for (const { span, taskId } of t.spans?.values() ?? []) {
      const tier = outcome.states.get(taskId)?.spec?.tier;
      if (tier) span.setAttribute(ATTR.tier, tier);
    }
    if (metrics.length > 0) {
      await sql`
        INSERT INTO node_metrics (node_id, at, tier, cpu, rss_mb, in_flight, completed, failed)
        SELECT * FROM unnest(${metrics.map((m) => m.nodeId)}::text[], ${metrics.map((m) => m.at)}::timestamptz[], ${metrics.map((m) => m.tier)}::text[],
          ${metrics.map((m) => m.cpu)}::float8[], ${metrics.map((m) => m.rssMb)}::float8[], ${metrics.map((m) => m.inFlight)}::int[],
          ${metrics.map((m) => m.completed)}::bigint[], ${metrics.map((m) => m.failed)}::bigint[])
        ON CONFLICT DO NOTHING`.execute(trx);
    }
    await recordDeadLetters(t, deadLetters);
  };

  /** Nothing vanishes: an unusable message is kept in the log, with why and where it came from, in a form PostgreSQL always stores. */
  const recordDeadLetters = async ({ trx, now, tally }: Try, deadLetters: readonly DeadLetter[]) => {
    if (deadLetters.length === 0) return;
    await appendEvents(trx, deadLetters.map((d) => deadLetterEvent(d, now)));
    tally.rejected += deadLetters.length;
  };

  /**
   * One message that fails its batch, alone: a result message record by record (each under a
   * savepoint), anything else as a whole; what can never be written is recorded instead.
   */
  const isolate = async (t: Try, p: Pending) => {
    const [entry] = await freshEntries(t, [p]);
    if (!entry) return; // a redelivery of a message already settled
    if (entry.source === 'results' && invalidResultBatch(entry.body) === null) {
      await applyRecordByRecord(t, entry, traced(t.spans, entry.id, entry.body as ResultBatch));
      return;
    }
    const failure = await underSavepoint(t, () => applyEntries(t, [entry]));
    if (failure !== undefined) {
      logger.error({ err: (failure as Error).message, messageId: entry.id, source: entry.source }, 'message cannot be applied; keeping it as MessageDeadLettered');
      await recordDeadLetters(t, [{ id: entry.id, msg: entry.msg, reason: errorText(failure) }]);
    }
  };

  /** One record's command, its events kept for the metrics. */
  const execute = async (t: Try, item: CommandItem) => {
    for (const a of (await executeTaskCommands(t.trx, [item], options.names)).applied) t.tally.applied.push(a);
    t.tally.records++;
  };

  const applyRecordByRecord = async (t: Try, entry: Entry, batch: ResultBatch) => {
    const { trx, now } = t;
    const setAside: { index: number; record: ResultRecord; error: unknown }[] = [];
    for (const [index, record] of batch.records.entries()) {
      const [item] = resultCommands({ ...batch, records: [record] }, { backoff: options.backoff, now });
      let failure = await underSavepoint(t, () => execute(t, item as CommandItem));
      if (failure === undefined) continue;
      if (record.kind === 'succeeded') {
        // The output is what PostgreSQL refuses (a `\u0000`, a value jsonb cannot hold): the
        // run is over and cannot be reported, so the task fails for good with the reason.
        const fallback = outputNotStorable(batch.nodeId, record, failure, now, options.backoff);
        const second = await underSavepoint(t, () => execute(t, fallback));
        if (second === undefined) {
          t.tally.notStorable++;
          logger.warn({ ...recordLogFields(record), attempt: record.attempt, messageId: entry.id, err: (failure as Error).message }, 'task output cannot be stored; task failed output-not-storable');
          continue;
        }
        failure = second;
      } else if (record.kind === 'failed') {
        // The handler's error text is what PostgreSQL refuses (a `\u0000` in its message): the
        // failure itself is real, so it is applied with the text made storable.
        const [readable] = resultCommands({ ...batch, records: [{ ...record, error: storableJson(record.error) as TaskError }] }, { backoff: options.backoff, now });
        const second = await underSavepoint(t, () => execute(t, readable as CommandItem));
        if (second === undefined) {
          logger.warn({ ...recordLogFields(record), attempt: record.attempt, messageId: entry.id, err: (failure as Error).message }, 'task error text not storable; applied with it made storable');
          continue;
        }
        failure = second;
      }
      setAside.push({ index, record, error: failure });
    }
    if (setAside.length === 0) return;
    logger.error({ messageId: entry.id, records: setAside.map((s) => ({ ...recordLogFields(s.record), kind: s.record.kind, err: errorText(s.error) })) }, 'result records cannot be written; set aside');
    await appendEvents(
      trx,
      setAside.map((s, i) => ({
        streamId: `message:${entry.id}`,
        streamType: 'message',
        streamVersion: i + 1,
        eventId: uuidFrom(`set-aside:${entry.id}:${s.index}`),
        type: 'ResultRecordSetAside',
        data: storableJson({
          messageId: entry.id,
          nodeId: batch.nodeId,
          recordIndex: s.index,
          taskId: s.record.taskId,
          kind: s.record.kind,
          attempt: s.record.attempt,
          reportedAt: s.record.at,
          error: errorText(s.error),
          errorCode: sqlState(s.error),
          at: now,
        }),
        metadata: { actor: 'ingest' },
      })),
    );
    t.tally.setAside += setAside.length;
  };

  return {
    name: 'ingest',
    stats: () => ({ ...stats, laneMessages: [...stats.laneMessages] }),
    async start() {
      progress = processHealth.loop('ingest', { intervalMs: 1000 });
      loops = [supervise().catch(crashed), ...units.map((u) => work(u).catch(crashed))];
    },
    stop() {
      return (stopped ??= (async () => {
        abort.abort();
        for (const u of units) u.wake?.();
        await Promise.all(loops); // the batches in flight commit and are acked
        if (options.membership) await options.membership.redis.zrem(`${options.membership.prefix}ingest:replicas`, replicaId).catch(() => 0);
        await connection?.close();
        progress.dispose();
      })());
    },
  };
}

/**
 * Runs `fn` under a savepoint. A permanent error (see classifyPgError; an unclassified one too
 * when `strict`) rolls back to the savepoint and is returned; anything else is thrown, which
 * fails the whole transaction (to be tried again).
 */
async function underSavepoint({ trx, strict, tally }: Try, fn: () => Promise<unknown>): Promise<unknown> {
  await sql`SAVEPOINT ingest_item`.execute(trx);
  const mark = { applied: tally.applied.length, records: tally.records };
  try {
    await fn();
  } catch (error) {
    const kind = classifyPgError(error);
    if (kind === 'transient' || (kind === 'unknown' && !strict)) throw error;
    await sql`ROLLBACK TO SAVEPOINT ingest_item`.execute(trx);
    tally.applied.length = mark.applied; // rolled back: not appended
    tally.records = mark.records;
    await sql`RELEASE SAVEPOINT ingest_item`.execute(trx);
    return error ?? new Error('undefined thrown');
  }
  await sql`RELEASE SAVEPOINT ingest_item`.execute(trx);
  return undefined;
}

function newTally(): Tally {
  return { applied: [], records: 0, duplicates: 0, rejected: 0, setAside: 0, notStorable: 0 };
}

interface DeadLetter {
  readonly id: string;
  readonly msg: ConsumeMessage;
  readonly reason: string;
}

function deadLetterEvent(d: DeadLetter, now: string): NewEvent {
  const { msg } = d;
  return {
    streamId: `message:${d.id}`,
    streamType: 'message',
    streamVersion: 1,
    eventId: uuidFrom(`dead-letter:${d.id}`),
    type: 'MessageDeadLettered',
    data: {
      messageId: d.id,
      exchange: storableText(msg.fields.exchange),
      routingKey: storableText(msg.fields.routingKey),
      headers: storableJson(msg.properties.headers ?? {}),
      // A body that is not storable text (`\u0000`, invalid UTF-8) is kept as base64 besides a readable copy.
      ...storableBody(msg.content),
      reason: storableText(d.reason, 2000),
      at: now,
    },
    metadata: { actor: 'ingest' },
  };
}

/** The FailTask that ends a task whose reported output PostgreSQL refused. */
function outputNotStorable(nodeId: string, record: Extract<ResultRecord, { kind: 'succeeded' }>, error: unknown, now: string, backoff: BackoffOptions): CommandItem {
  return {
    taskId: record.taskId,
    command: {
      type: 'FailTask',
      data: {
        attempt: record.attempt,
        nodeId,
        error: { message: `the task's output cannot be stored: ${errorText(error)}`, code: OUTPUT_NOT_STORABLE, retryable: false },
        startedAt: record.startedAt,
        backoff,
        random: 0,
        now,
        reportedAt: record.at,
      },
    },
    metadata: { actor: `node:${nodeId}`, ...traceMetadata(parseTraceparent(record.traceparent)) },
  };
}

/** An error's message (and SQLSTATE detail), storable and short. */
function errorText(error: unknown): string {
  const e = error as { message?: unknown; detail?: unknown } | null;
  const message = typeof e?.message === 'string' ? e.message : String(error);
  const detail = typeof e?.detail === 'string' ? ` (${e.detail})` : '';
  return storableText(message + detail, 1000);
}

function sqlState(error: unknown): string | null {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? storableText(code, 20) : null;
}

/**
 * Turns a result batch into task commands, in record order. `now` is the ingest's clock: it
 * decides (a retry's due time, the `at` of what ingest concludes); the node's times stay as
 * data (TaskStarted.at is the node's start, `reportedAt` its time of the result).
 */
export function resultCommands(batch: ResultBatch, opts: { backoff: BackoffOptions; now: string; random?: () => number }): CommandItem[] {
  const actor = `node:${batch.nodeId}`;
  const { backoff, now } = opts;
  const random = opts.random ?? Math.random;
  return batch.records.map((r): CommandItem => {
    let command: TaskCommand;
    switch (r.kind) {
      case 'started':
        command = { type: 'StartTask', data: { attempt: r.attempt, nodeId: batch.nodeId, startedAt: r.at, now } };
        break;
      case 'progress':
        command = { type: 'ReportProgress', data: { attempt: r.attempt, nodeId: batch.nodeId, fraction: r.fraction, message: r.message ?? null, reportedAt: r.at, now } };
        break;
      case 'succeeded':
        command = {
          type: 'SucceedTask',
          data: { attempt: r.attempt, nodeId: batch.nodeId, output: r.output ?? null, durationMs: r.durationMs, startedAt: r.startedAt, now, reportedAt: r.at },
        };
        break;
      case 'failed':
        command = {
          type: 'FailTask',
          data: { attempt: r.attempt, nodeId: batch.nodeId, error: r.error, startedAt: r.startedAt, backoff, random: random(), now, reportedAt: r.at },
        };
        break;
      case 'returned':
        command = { type: 'ReturnTask', data: { attempt: r.attempt, nodeId: batch.nodeId, reason: r.reason, returns: 0, now } };
        break;
      default:
        return assertNever(r);
    }
    // The record's trace (its run's, or its ingest span's): result events and retries continue it.
    return { taskId: r.taskId, command, metadata: { actor, ...traceMetadata(parseTraceparent(r.traceparent)) } };
  });
}

const DEATH_REASONS: Record<string, FailureReason> = { delivery_limit: 'delivery-limit', rejected: 'rejected', expired: 'expired', maxlen: 'rejected' };

/**
 * A dead-lettered task message becomes DeadLetterTask with the broker's reason and the
 * message's RETURNS_HEADER (how often its attempt came back already); a placement dispatch that
 * expired (its fallbackAfterMs passed in its class's queue) becomes FallBackPlacement instead.
 * Anything else returns null.
 */
export function deadLetterCommand(msg: ConsumeMessage, body: unknown, names: TopologyNames, now: string): CommandItem | null {
  const headers = msg.properties.headers ?? {};
  const queue = String(headers['x-first-death-queue'] ?? '');
  const task = body as Partial<TaskMessage> | null;
  if (!queue.startsWith(names.tasks + '.') || !task || !isUuid(task.taskId) || !Number.isInteger(task.attempt)) return null;
  const reason = DEATH_REASONS[String(headers['x-first-death-reason'] ?? '')] ?? 'rejected';
  // A placement dispatch whose fallback delay (its message TTL) ran out: any node of its tier may run it now.
  if (reason === 'expired' && typeof headers[PLACEMENT_CLASS_HEADER] === 'string') {
    return {
      taskId: task.taskId,
      command: { type: 'FallBackPlacement', data: { attempt: task.attempt as number, now } },
      metadata: { actor: 'broker', ...traceMetadata(parseTraceparent(headers.traceparent)) },
    };
  }
  return {
    taskId: task.taskId,
    command: { type: 'DeadLetterTask', data: { attempt: task.attempt as number, reason, queue, now, returns: returnsOf(headers[RETURNS_HEADER]) } },
    // A dead-lettered task message keeps its headers, its trace among them.
    metadata: { actor: 'broker', ...traceMetadata(parseTraceparent(headers.traceparent)) },
  };
}

/** The results queue or one of its lanes. */
function isResultQueue(queue: string, names: TopologyNames): boolean {
  return queue === names.resultsQueue || queue.startsWith(`${names.resultsQueue}.lane.`);
}

function returnsOf(header: unknown): number {
  const n = Number(header ?? 0);
  return Number.isInteger(n) && n >= 0 ? n : 0;
}

function isMetricSample(v: unknown): v is NodeMetricSample {
  const m = v as Partial<NodeMetricSample> | null;
  return !!m && typeof m.nodeId === 'string' && typeof m.at === 'string' && !Number.isNaN(Date.parse(m.at)) && typeof m.cpu === 'number' && typeof m.rssMb === 'number';
}

function parseJson(msg: ConsumeMessage): unknown {
  try {
    return JSON.parse(msg.content.toString('utf8'));
  } catch {
    return null;
  }
}

/**
 * The message id, or a hash of the content when the publisher set none (still deduplicates
 * redeliveries) or one PostgreSQL cannot store as text.
 */
function messageIdOf(msg: ConsumeMessage): string {
  const id = msg.properties.messageId as unknown;
  if (typeof id === 'string' && id.length > 0 && id.length <= 200 && isStorableText(id)) {
    // A dead-lettered copy keeps the task message's id; its inbox entry must not collide with it.
    return msg.fields.exchange.endsWith('dlx') || msg.properties.headers?.['x-first-death-queue'] ? `dlq:${id}` : id;
  }
  const hash = createHash('sha256');
  if (typeof id === 'string') hash.update(`${id}\n`);
  return `sha256:${hash.update(msg.content).digest('hex')}`;
}

function uuidFrom(text: string): string {
  const h = createHash('sha256').update(text).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** A record's task and trace, as log fields. */
function recordLogFields(record: ResultRecord): { taskId: string; task_id: string; trace_id?: string } {
  const trace = parseTraceparent(record.traceparent);
  return { taskId: record.taskId, task_id: record.taskId, ...(trace ? { trace_id: trace.traceId } : {}) };
}

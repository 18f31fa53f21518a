import { createHash } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import {
  invalidResultBatch,
  isUuid,
  type BackoffOptions,
  type FailureReason,
  type NodeMetricSample,
  type ResultBatch,
  type TaskCommand,
  type TaskMessage,
} from '../domain/index.js';
import { connectAmqp } from '../infra/amqp.js';
import type { Logger } from '../infra/logger.js';
import { isConnectionError, PREPARE_MARK } from '../infra/postgres.js';
import { sleep, type Role } from '../infra/role.js';
import { declareTopology, type Topology, type TopologyNames } from '../outbox/index.js';
import { appendEvents, type Database, type Executor } from '../store/index.js';
import { executeTaskCommands, type CommandItem } from '../tasks/index.js';

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
}

type Source = 'results' | 'metrics' | 'dlq';

interface Pending {
  readonly msg: ConsumeMessage;
  readonly source: Source;
}

export interface IngestStats {
  batches: number;
  messages: number;
  duplicates: number;
  rejected: number;
}

/**
 * Applies what fog nodes report: consumes `results`, `metrics.node` and `dlq`
 * in batches and, per batch, in ONE transaction records the message ids in
 * the inbox (a redelivered message is skipped), appends the result events
 * through the domain's decide (duplicates are no-ops), updates the read models
 * and writes follow-up outbox rows (retries); only then acks the whole batch.
 */
export function createIngest(options: IngestOptions): Role & { stats(): IngestStats } {
  const logger = options.logger.child({ role: 'ingest' });
  const abort = new AbortController();
  const stats: IngestStats = { batches: 0, messages: 0, duplicates: 0, rejected: 0 };
  let queue: Pending[] = [];
  let wake: (() => void) | undefined;
  let connection: ChannelModel | undefined;
  let channel: Channel | undefined;
  let loop: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  let lastRetention = 0;

  /** Anything wrong with the channel (an error closed it, the broker cancelled a consumer): start over on a new connection. */
  const restart = (why: string) => {
    const conn = connection;
    if (!conn || abort.signal.aborted) return;
    logger.warn({ why }, 'ingest restarting its broker connection');
    void conn.close().catch(() => {});
  };

  const onMessage = (source: Source) => (msg: ConsumeMessage | null) => {
    if (!msg) return restart(`consumer of ${source} cancelled by the broker`);
    queue.push({ msg, source });
    // The first message ends the idle wait (the batch then fills for flushMs); a full batch ends any wait.
    if (queue.length === 1 || queue.length >= options.batchSize) wake?.();
  };

  const waitForBatch = (ms: number) =>
    new Promise<void>((resolve) => {
      if (queue.length >= options.batchSize || abort.signal.aborted) return resolve();
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wake = undefined;
        resolve();
      }
      wake = done;
    });

  const connect = async (): Promise<boolean> => {
    const conn = await connectAmqp(options.amqpUrl, { logger, signal: abort.signal, name: 'fogsched-ingest' });
    if (!conn) return false;
    try {
      const ch = await conn.createChannel();
      ch.on('error', (error: unknown) => logger.warn({ err: error }, 'ingest channel error'));
      // A channel closed by the broker (e.g. an unknown delivery tag) leaves the connection up: reconnect.
      ch.on('close', () => restart('channel closed'));
      await declareTopology(ch, options.topology);
      await ch.prefetch(options.batchSize * 2, false);
      const n = options.names;
      await ch.consume(n.resultsQueue, onMessage('results'), { noAck: false });
      await ch.consume(n.metricsQueue, onMessage('metrics'), { noAck: false });
      await ch.consume(n.dlq, onMessage('dlq'), { noAck: false });
      connection = conn;
      channel = ch;
      conn.once('close', () => {
        if (connection !== conn) return;
        connection = undefined;
        channel = undefined;
        // Unacked deliveries of this channel go back to their queues by themselves.
        queue = [];
        if (!abort.signal.aborted) logger.warn('ingest lost the broker; reconnecting');
        wake?.();
      });
      logger.info('ingest consuming');
      return true;
    } catch (error) {
      logger.warn({ err: (error as Error).message }, 'ingest setup failed');
      await conn.close().catch(() => {});
      return false;
    }
  };

  const run = async () => {
    let failures = 0;
    while (!abort.signal.aborted) {
      if (!channel && !(await connect())) {
        await sleep(500, abort.signal);
        continue;
      }
      await waitForBatch(queue.length > 0 ? options.flushMs : 1000);
      const ch = channel;
      if (!ch || queue.length === 0) continue;
      const batch = queue.splice(0, options.batchSize);
      try {
        await applyBatch(ch, batch);
        failures = 0;
      } catch (error) {
        // PostgreSQL down (or the batch could not be applied): keep the messages, retry later.
        // After a lost channel they come back as new deliveries instead.
        if (channel === ch) queue.unshift(...batch);
        failures++;
        const delay = Math.min(10_000, 100 * 2 ** Math.min(failures, 7));
        logger.warn({ err: (error as Error).message, retryInMs: delay, messages: batch.length }, 'ingest batch failed; will retry');
        await sleep(delay, abort.signal);
      }
    }
  };

  /** Applies one batch and acks it; a message that alone makes the transaction fail is dead-lettered. */
  const applyBatch = async (ch: Channel, batch: Pending[]) => {
    try {
      await options.db.transaction().execute((trx) => applyMessages(trx, batch));
    } catch (error) {
      if (isConnectionError(error) || batch.length === 1) {
        if (batch.length === 1 && !isConnectionError(error)) {
          logger.error({ err: (error as Error).message, messageId: batch[0]?.msg.properties.messageId }, 'message cannot be applied; dead-lettering it');
          stats.rejected++;
          ch.nack((batch[0] as Pending).msg, false, false);
          return;
        }
        throw error;
      }
      // Find the poison: apply one by one.
      for (const p of batch) await applyBatch(ch, [p]);
      return;
    }
    const last = batch.reduce((max, p) => Math.max(max, p.msg.fields.deliveryTag), 0);
    // Every delivery up to `last` on this channel is in this or an earlier, already applied batch.
    ch.ack({ fields: { deliveryTag: last } } as ConsumeMessage, true);
    stats.batches++;
    stats.messages += batch.length;
    if (Date.now() - lastRetention > 60_000) {
      lastRetention = Date.now();
      await sql`DELETE FROM node_metrics WHERE at < now() - ${options.metricsRetentionHours} * interval '1 hour'`.execute(options.db).catch(() => {});
    }
  };

  const applyMessages = async (trx: Executor, batch: Pending[]) => {
    const ids = batch.map((p) => messageIdOf(p.msg));
    const fresh = await sql<{ message_id: string }>`${sql.raw(PREPARE_MARK)}
      INSERT INTO inbox (message_id, source)
      SELECT * FROM unnest(${ids}::text[], ${batch.map((p) => p.source)}::text[])
      ON CONFLICT DO NOTHING RETURNING message_id`.execute(trx);
    const isFresh = new Set(fresh.rows.map((r) => r.message_id));
    stats.duplicates += batch.length - isFresh.size;
    const seen = new Set<string>();
    const items: CommandItem[] = [];
    const metrics: NodeMetricSample[] = [];
    const deadLetters: { id: string; msg: ConsumeMessage }[] = [];
    batch.forEach((p, i) => {
      const id = ids[i] as string;
      if (!isFresh.has(id) || seen.has(id)) return;
      seen.add(id);
      const body = parseJson(p.msg);
      if (p.source === 'results') {
        const problem = invalidResultBatch(body);
        if (problem) {
          deadLetters.push({ id, msg: p.msg });
          return;
        }
        items.push(...resultCommands(body as ResultBatch, options.backoff));
      } else if (p.source === 'metrics') {
        if (isMetricSample(body)) metrics.push(body);
      } else {
        const item = deadLetterCommand(p.msg, body, options.names);
        if (item) items.push(item);
        else deadLetters.push({ id, msg: p.msg });
      }
    });
    await executeTaskCommands(trx, items, options.names);
    if (metrics.length > 0) {
      await sql`
        INSERT INTO node_metrics (node_id, at, tier, cpu, rss_mb, in_flight, completed, failed)
        SELECT * FROM unnest(${metrics.map((m) => m.nodeId)}::text[], ${metrics.map((m) => m.at)}::timestamptz[], ${metrics.map((m) => m.tier)}::text[],
          ${metrics.map((m) => m.cpu)}::float8[], ${metrics.map((m) => m.rssMb)}::float8[], ${metrics.map((m) => m.inFlight)}::int[],
          ${metrics.map((m) => m.completed)}::bigint[], ${metrics.map((m) => m.failed)}::bigint[])
        ON CONFLICT DO NOTHING`.execute(trx);
    }
    if (deadLetters.length > 0) {
      // Nothing vanishes: an unusable message is kept in the log, with why and where it came from.
      stats.rejected += deadLetters.length;
      await appendEvents(
        trx,
        deadLetters.map(({ id, msg }) => ({
          streamId: `message:${id}`,
          streamType: 'message',
          streamVersion: 1,
          eventId: uuidFrom(`dead-letter:${id}`),
          type: 'MessageDeadLettered',
          data: {
            messageId: id,
            exchange: msg.fields.exchange,
            routingKey: msg.fields.routingKey,
            headers: msg.properties.headers ?? {},
            body: msg.content.toString('utf8').slice(0, 100_000),
            at: new Date().toISOString(),
          },
          metadata: { actor: 'ingest' },
        })),
      );
    }
  };

  return {
    name: 'ingest',
    stats: () => ({ ...stats }),
    async start() {
      loop = run().catch((error: unknown) => logger.error({ err: error }, 'ingest loop crashed'));
    },
    stop() {
      return (stopped ??= (async () => {
        abort.abort();
        wake?.();
        await loop; // the batch in flight commits and is acked
        await connection?.close().catch(() => {});
      })());
    },
  };
}

/** Turns a result batch into task commands, in record order. */
export function resultCommands(batch: ResultBatch, backoff: BackoffOptions, random: () => number = Math.random): CommandItem[] {
  const metadata = { actor: `node:${batch.nodeId}` };
  // `returned` records (a node stopped past its grace) become ReturnTask with the domain's TaskReturned (issue 15, ingest side); until then they are skipped.
  return batch.records.flatMap((r): CommandItem[] => {
    if (r.kind === 'returned') return [];
    let command: TaskCommand;
    switch (r.kind) {
      case 'started':
        command = { type: 'StartTask', data: { attempt: r.attempt, nodeId: batch.nodeId, now: r.at } };
        break;
      case 'succeeded':
        command = { type: 'SucceedTask', data: { attempt: r.attempt, nodeId: batch.nodeId, output: r.output ?? null, durationMs: r.durationMs, startedAt: r.startedAt, now: r.at } };
        break;
      case 'failed':
        command = {
          type: 'FailTask',
          data: { attempt: r.attempt, nodeId: batch.nodeId, error: r.error, startedAt: r.startedAt, backoff, random: random(), now: r.at },
        };
        break;
    }
    return [{ taskId: r.taskId, command, metadata }];
  });
}

const DEATH_REASONS: Record<string, FailureReason> = { delivery_limit: 'delivery-limit', rejected: 'rejected', expired: 'expired', maxlen: 'rejected' };

/** A dead-lettered task message becomes DeadLetterTask with the broker's reason; anything else returns null. */
function deadLetterCommand(msg: ConsumeMessage, body: unknown, names: TopologyNames): CommandItem | null {
  const headers = msg.properties.headers ?? {};
  const queue = String(headers['x-first-death-queue'] ?? '');
  const task = body as Partial<TaskMessage> | null;
  if (!queue.startsWith(names.tasks + '.') || !task || !isUuid(task.taskId) || !Number.isInteger(task.attempt)) return null;
  const reason = DEATH_REASONS[String(headers['x-first-death-reason'] ?? '')] ?? 'rejected';
  return {
    taskId: task.taskId,
    command: { type: 'DeadLetterTask', data: { attempt: task.attempt as number, reason, queue, now: new Date().toISOString() } },
    metadata: { actor: 'broker' },
  };
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

/** The message id, or a hash of the content when the publisher set none (still deduplicates redeliveries). */
function messageIdOf(msg: ConsumeMessage): string {
  const id = msg.properties.messageId as unknown;
  if (typeof id === 'string' && id.length > 0) {
    // A dead-lettered copy keeps the task message's id; its inbox entry must not collide with it.
    return msg.fields.exchange.endsWith('dlx') || msg.properties.headers?.['x-first-death-queue'] ? `dlq:${id}` : id;
  }
  return `sha256:${createHash('sha256').update(msg.content).digest('hex')}`;
}

function uuidFrom(text: string): string {
  const h = createHash('sha256').update(text).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

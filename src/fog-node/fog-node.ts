import { randomUUID } from 'node:crypto';
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import { PRIORITIES, type NodeMetricSample, type Priority, type ResultRecord, type SystemMessage, type TaskError, type TaskMessage } from '../domain/index.js';
import { connectAmqp } from '../infra/amqp.js';
import type { Logger } from '../infra/logger.js';
import { sleep, type Role } from '../infra/role.js';
import { declareTopology, type Topology, type TopologyNames } from '../outbox/topology.js';
import { loadHandlers, type Handler } from './handlers.js';
import { createThreadPool, HandlerError, WorkerCrashedError, type ThreadPool } from './thread-pool.js';
import { createFogHeartbeat, type FogHeartbeat } from './heartbeat.js';
import type { Redis } from 'ioredis';
import { createRedis, readCancelled, redisKeys, whenReady } from '../infra/redis.js';

export interface FogNodeOptions {
  readonly amqpUrl: string;
  readonly topology: Topology;
  readonly names: TopologyNames;
  readonly nodeId: string;
  readonly tier: string;
  /** Tiers served: own first, then lighter ones. */
  readonly servedTiers: readonly string[];
  readonly slots: number;
  readonly prefetch: number;
  readonly graceMs: number;
  readonly resultFlushMs: number;
  readonly metricsIntervalMs: number;
  readonly agingMs: number;
  readonly handlersModule: string;
  readonly workerMemoryMb: number;
  readonly logger: Logger;
  /** Redis membership (fog:nodes, fog:node:{id}); Redis being down never stops task flow. */
  readonly heartbeat?: { readonly redisUrl: string; readonly prefix: string; readonly intervalMs: number; readonly ttlMs: number; readonly version: string };
}

interface Delivery {
  readonly msg: ConsumeMessage;
  readonly task: TaskMessage;
  readonly priority: Priority;
  /** 0 for the node's own tier, higher for lighter tiers it also serves. */
  readonly tierRank: number;
  readonly receivedAt: number;
  /** Channel generation: an ack for an older channel is dropped (the broker redelivers). */
  readonly generation: number;
}

export interface FogNodeStats {
  inFlight: number;
  buffered: number;
  completed: number;
  failed: number;
  crashed: number;
}

const MAX_RECORDS_PER_MESSAGE = 500;
const MAX_REMEMBERED_CANCELS = 100_000;

/** A task's run was stopped because the task was cancelled. */
class CancelledError extends Error {}

/**
 * A fog node: consumes its tier's task queues (and lighter tiers' when its own
 * are empty), runs each task's handler, and reports started/succeeded/failed
 * records to `results`, many per message. A task message is acked only after
 * the broker confirmed the message carrying its final record, so a crash at any
 * point leaves the task on its queue. It never talks to PostgreSQL.
 */
export function createFogNode(options: FogNodeOptions): Role & { stats(): FogNodeStats } {
  const logger = options.logger.child({ role: 'fog-node', nodeId: options.nodeId, tier: options.tier });
  const abort = new AbortController();
  const stats: FogNodeStats = { inFlight: 0, buffered: 0, completed: 0, failed: 0, crashed: 0 };
  const buffers = new Map<Priority, Delivery[]>(PRIORITIES.map((p) => [p, []]));
  const running = new Map<Delivery, AbortController>();
  let records: ResultRecord[] = [];
  let acks: Delivery[] = [];
  let flushing: Promise<void> | undefined;
  let flushTimer: NodeJS.Timeout | undefined;
  let metricsTimer: NodeJS.Timeout | undefined;
  let connection: ChannelModel | undefined;
  let consumeChannel: Channel | undefined;
  let publishChannel: ConfirmChannel | undefined;
  let consumerTags: string[] = [];
  let generation = 0;
  let draining = false;
  let handlers = new Map<string, Handler>();
  let threads: ThreadPool | undefined;
  let connectLoop: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  const cancelled = new Set<string>();
  let heartbeat: FogHeartbeat | undefined;

  // --- picking what runs next -------------------------------------------------

  /** High before normal before low, own tier before lighter ones; anything waiting past agingMs goes first. */
  const pick = (): Delivery | undefined => {
    const now = Date.now();
    let aged: { list: Delivery[]; index: number; waited: number } | undefined;
    for (const p of PRIORITIES) {
      const list = buffers.get(p) as Delivery[];
      const head = list[0];
      if (head && now - head.receivedAt > options.agingMs && (!aged || now - head.receivedAt > aged.waited)) aged = { list, index: 0, waited: now - head.receivedAt };
    }
    if (aged) return aged.list.splice(aged.index, 1)[0];
    for (const p of PRIORITIES) {
      const list = buffers.get(p) as Delivery[];
      if (list.length === 0) continue;
      let best = 0;
      for (let i = 1; i < list.length && (list[best] as Delivery).tierRank > 0; i++) {
        if ((list[i] as Delivery).tierRank < (list[best] as Delivery).tierRank) best = i;
      }
      return list.splice(best, 1)[0];
    }
    return undefined;
  };

  const pump = () => {
    while (!draining && running.size < options.slots) {
      const next = pick();
      if (!next) break;
      stats.buffered--;
      void execute(next);
    }
    stats.inFlight = running.size;
  };

  // --- running one task --------------------------------------------------------

  const runHandler = async (task: TaskMessage, signal: AbortSignal): Promise<unknown> => {
    const handler = handlers.get(task.type);
    if (!handler) throw new HandlerError({ message: `no handler for task type ${task.type} on node ${options.nodeId}`, code: 'unknown_handler', retryable: false });
    if (handler.kind === 'inline') return handler.run(task.payload, signal, { taskId: task.taskId, attempt: task.attempt });
    threads ??= createThreadPool({ memoryMb: options.workerMemoryMb, keepIdle: 2, idleMs: 30_000 });
    return threads.run(handler.module, handler.exportName, task.payload, signal);
  };

  const execute = async (d: Delivery) => {
    const controller = new AbortController();
    running.set(d, controller);
    const { task } = d;
    const startedAt = new Date().toISOString();
    const t0 = performance.now();
    let timeout: NodeJS.Timeout | undefined;
    try {
      if (task.deadline && Date.parse(task.deadline) < Date.now()) {
        throw new HandlerError({ message: `deadline ${task.deadline} passed before the task started`, code: 'expired', retryable: false });
      }
      addRecord({ kind: 'started', taskId: task.taskId, attempt: task.attempt, at: startedAt });
      if (task.timeoutMs) {
        timeout = setTimeout(() => controller.abort(new HandlerError({ message: `timed out after ${task.timeoutMs} ms`, code: 'timeout', retryable: true })), task.timeoutMs);
      }
      const output = await runHandler(task, controller.signal);
      stats.completed++;
      addRecord(
        { kind: 'succeeded', taskId: task.taskId, attempt: task.attempt, startedAt, at: new Date().toISOString(), durationMs: performance.now() - t0, output: output ?? null },
        d,
      );
    } catch (error) {
      if (error instanceof WorkerCrashedError) {
        // The handler took its thread down: we cannot tell a bad task from a bad
        // node, so the message goes back; the delivery limit dead-letters a task
        // that keeps doing it.
        stats.crashed++;
        logger.warn({ taskId: task.taskId, attempt: task.attempt, err: error.message }, 'worker thread crashed; returning the task');
        if (d.generation === generation) consumeChannel?.nack(d.msg, false, true);
      } else if (controller.signal.reason instanceof CancelledError) {
        // The cancellation is already in the log; nothing to report.
        if (d.generation === generation) consumeChannel?.ack(d.msg);
      } else if (draining && controller.signal.aborted && !(controller.signal.reason instanceof HandlerError)) {
        // Stopped by shutdown, not by its timeout: let another node run it.
        if (d.generation === generation) consumeChannel?.nack(d.msg, false, true);
      } else {
        stats.failed++;
        addRecord(
          { kind: 'failed', taskId: task.taskId, attempt: task.attempt, startedAt, at: new Date().toISOString(), durationMs: performance.now() - t0, error: toTaskError(error, controller.signal) },
          d,
        );
      }
    } finally {
      clearTimeout(timeout);
      running.delete(d);
      pump();
    }
  };

  // --- results: many records per message, acks after the confirm -----------------

  const addRecord = (record: ResultRecord, ackAfter?: Delivery) => {
    records.push(record);
    if (ackAfter) acks.push(ackAfter);
    if (records.length >= MAX_RECORDS_PER_MESSAGE) void flush();
    else flushTimer ??= setTimeout(() => void flush(), options.resultFlushMs);
  };

  const flush = (): Promise<void> => {
    clearTimeout(flushTimer);
    flushTimer = undefined;
    if (flushing) return flushing.then(() => (records.length > 0 ? flush() : undefined));
    if (records.length === 0) return Promise.resolve();
    const batchRecords = records.splice(0, MAX_RECORDS_PER_MESSAGE);
    const finished = new Set(batchRecords.filter((r) => r.kind !== 'started').map((r) => `${r.taskId}:${r.attempt}`));
    const batchAcks = acks.filter((d) => finished.has(`${d.task.taskId}:${d.task.attempt}`));
    acks = acks.filter((d) => !finished.has(`${d.task.taskId}:${d.task.attempt}`));
    flushing = (async () => {
      for (let attempt = 0; ; attempt++) {
        const ch = publishChannel;
        if (ch) {
          try {
            await publishConfirmed(ch, options.names.results, `task.batch.${options.nodeId}`, {
              nodeId: options.nodeId,
              tier: options.tier,
              records: batchRecords,
            });
            for (const d of batchAcks) if (d.generation === generation) consumeChannel?.ack(d.msg);
            return;
          } catch (error) {
            if (attempt % 20 === 0) logger.warn({ err: (error as Error).message, records: batchRecords.length }, 'result publish failed; retrying');
          }
        }
        // Keep the records: they are facts, and the tasks' acks wait for them.
        if (abort.signal.aborted && !connection) return;
        await sleep(Math.min(2000, 50 * 2 ** Math.min(attempt, 6)));
      }
    })().finally(() => {
      flushing = undefined;
      if (records.length >= MAX_RECORDS_PER_MESSAGE) void flush();
      else if (records.length > 0) flushTimer ??= setTimeout(() => void flush(), options.resultFlushMs);
    });
    return flushing;
  };

  const publishConfirmed = (ch: ConfirmChannel, exchange: string, routingKey: string, body: unknown) =>
    new Promise<void>((resolve, reject) => {
      ch.publish(exchange, routingKey, Buffer.from(JSON.stringify(body)), { persistent: true, messageId: randomUUID(), contentType: 'application/json' }, (error: unknown) =>
        error ? reject(error instanceof Error ? error : new Error('nacked')) : resolve(),
      );
    });

  // --- metrics ---------------------------------------------------------------------

  /** CPU use of this process since the previous call, in cores. */
  const cpuMeter = () => {
    let last = process.cpuUsage();
    let lastAt = Date.now();
    return () => {
      const now = Date.now();
      const used = process.cpuUsage(last);
      const cores = (used.user + used.system) / 1000 / Math.max(1, now - lastAt);
      last = process.cpuUsage();
      lastAt = now;
      return cores;
    };
  };
  const metricsCpu = cpuMeter();
  const heartbeatCpu = cpuMeter();

  const sampleMetrics = () => {
    const ch = publishChannel;
    if (!ch) return;
    const now = Date.now();
    const cpuCores = metricsCpu();
    const sample: NodeMetricSample = {
      nodeId: options.nodeId,
      tier: options.tier,
      at: new Date(now).toISOString(),
      cpu: Math.round(cpuCores * 1000) / 1000,
      rssMb: Math.round((process.memoryUsage.rss() / 1048576) * 10) / 10,
      inFlight: running.size,
      completed: stats.completed,
      failed: stats.failed,
    };
    // Metrics may be lost (the queue drops its head when full); no need to wait for the confirm.
    ch.publish(options.names.metrics, `metrics.node.${options.nodeId}`, Buffer.from(JSON.stringify(sample)), { contentType: 'application/json' }, () => {});
  };

  // --- connection ------------------------------------------------------------------

  const onDelivery = (tierRank: number, priority: Priority, gen: number) => (msg: ConsumeMessage | null) => {
    if (!msg) return; // consumer cancelled by the broker (queue deleted): the connection loop handles it
    let task: TaskMessage;
    try {
      task = JSON.parse(msg.content.toString('utf8')) as TaskMessage;
      if (typeof task?.taskId !== 'string' || !Number.isInteger(task.attempt) || typeof task.type !== 'string') throw new Error('not a task message');
    } catch (error) {
      logger.error({ err: (error as Error).message, messageId: msg.properties.messageId }, 'unreadable task message; dead-lettering it');
      consumeChannel?.nack(msg, false, false);
      return;
    }
    if (draining || gen !== generation) return; // the channel closes soon and returns it
    if (cancelled.has(task.taskId)) {
      consumeChannel?.ack(msg); // cancelled before it got here
      return;
    }
    (buffers.get(priority) as Delivery[]).push({ msg, task, priority, tierRank, receivedAt: Date.now(), generation: gen });
    stats.buffered++;
    pump();
  };

  let redis: Redis | undefined;
  /** Task ids cancelled in the last day, from Redis; empty (and no wait past a second) when Redis is down. */
  const earlierCancels = async (): Promise<string[]> => {
    const hb = options.heartbeat;
    if (!hb) return [];
    redis ??= createRedis(hb.redisUrl, { logger, name: `fogsched-fog-node-${options.nodeId}`, lazyConnect: true });
    const client = redis;
    if (client.status === 'wait') client.connect().catch(() => {});
    if (!(await whenReady(client, 1000))) return [];
    return readCancelled(client, redisKeys(hb.prefix)).catch(() => []);
  };

  /** A cancel broadcast: drop the task if it waits here, abort it if it runs here. */
  const onSystem = (msg: ConsumeMessage | null) => {
    if (!msg) return;
    let body: SystemMessage | undefined;
    try {
      body = JSON.parse(msg.content.toString('utf8')) as SystemMessage;
    } catch {
      return;
    }
    if (body?.kind !== 'cancel' || typeof body.taskId !== 'string') return;
    cancelled.add(body.taskId);
    if (cancelled.size > MAX_REMEMBERED_CANCELS) cancelled.delete(cancelled.values().next().value as string);
    for (const list of buffers.values()) {
      for (let i = list.length - 1; i >= 0; i--) {
        const d = list[i] as Delivery;
        if (d.task.taskId !== body.taskId) continue;
        list.splice(i, 1);
        stats.buffered--;
        if (d.generation === generation) consumeChannel?.ack(d.msg);
      }
    }
    for (const [d, controller] of running) if (d.task.taskId === body.taskId) controller.abort(new CancelledError(`task ${body.taskId} cancelled`));
  };

  const connect = async () => {
    while (!abort.signal.aborted) {
      const conn = await connectAmqp(options.amqpUrl, { logger, signal: abort.signal, name: `fogsched-fog-node-${options.nodeId}` });
      if (!conn) return;
      // A stop (or SIGTERM) while this connection is still being set up closes it too: stop()
      // only knows the connection once it consumes, and the setup below would otherwise wait
      // on `closed` forever.
      const closed = new Promise<void>((resolve) => conn.once('close', () => resolve()));
      const closeOnStop = () => void conn.close().catch(() => {});
      if (abort.signal.aborted) closeOnStop();
      else abort.signal.addEventListener('abort', closeOnStop, { once: true });
      try {
        const gen = ++generation;
        const pub = await conn.createConfirmChannel();
        const con = await conn.createChannel();
        for (const ch of [pub, con]) ch.on('error', (error: unknown) => logger.warn({ err: error }, 'channel error'));
        await declareTopology(pub, options.topology);
        await con.prefetch(options.prefetch, false);
        connection = conn;
        publishChannel = pub;
        consumeChannel = con;
        // Before any task arrives: our own queue on the `system` fanout (it lives as long as this connection) on the `system` fanout: it lives as long as this connection.
        const system = await con.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
        await con.bindQueue(system.queue, options.names.system, '');
        await con.consume(system.queue, onSystem, { noAck: true });
        // Cancels broadcast before this node was listening are kept in Redis.
        for (const taskId of await earlierCancels()) cancelled.add(taskId);
        consumerTags = [];
        for (const [rank, tier] of options.servedTiers.entries()) {
          for (const priority of PRIORITIES) {
            const { consumerTag } = await con.consume(options.names.taskQueue(tier, priority), onDelivery(rank, priority, gen), { noAck: false });
            consumerTags.push(consumerTag);
          }
        }
        logger.info({ served: options.servedTiers, slots: options.slots, prefetch: options.prefetch }, 'fog node consuming');
        await closed;
      } catch (error) {
        if (!abort.signal.aborted) logger.warn({ err: (error as Error).message }, 'fog node connection failed');
        await conn.close().catch(() => {});
      } finally {
        abort.signal.removeEventListener('abort', closeOnStop);
      }
      if (abort.signal.aborted) return;
      // Lost the broker: deliveries of the old channel come back to the queues by themselves.
      generation++;
      connection = undefined;
      publishChannel = undefined;
      consumeChannel = undefined;
      for (const list of buffers.values()) list.length = 0;
      stats.buffered = 0;
      logger.warn('fog node lost the broker; reconnecting');
      await sleep(200, abort.signal);
    }
  };

  return {
    name: `fog-node:${options.nodeId}`,
    stats: () => ({ ...stats, inFlight: running.size }),
    async start() {
      handlers = await loadHandlers(options.handlersModule);
      connectLoop = connect();
      metricsTimer = setInterval(sampleMetrics, options.metricsIntervalMs);
      metricsTimer.unref();
      if (options.heartbeat) {
        heartbeat = createFogHeartbeat({
          ...options.heartbeat,
          nodeId: options.nodeId,
          tier: options.tier,
          slots: options.slots,
          logger,
          stats: () => ({
            inFlight: running.size,
            cpu: Math.round(heartbeatCpu() * 1000) / 1000,
            rssMb: Math.round((process.memoryUsage.rss() / 1048576) * 10) / 10,
            inFlightTaskIds: [...running.keys()].map((d) => d.task.taskId),
          }),
        });
        heartbeat.start();
      }
    },
    stop() {
      return (stopped ??= (async () => {
        // Stop taking work, give buffered tasks back at once, let running ones finish.
        draining = true;
        const con = consumeChannel;
        for (const tag of consumerTags) await con?.cancel(tag).catch(() => {});
        for (const list of buffers.values()) {
          for (const d of list.splice(0)) if (d.generation === generation) con?.nack(d.msg, false, true);
        }
        stats.buffered = 0;
        const deadline = Date.now() + options.graceMs;
        while (running.size > 0 && Date.now() < deadline) await sleep(20);
        for (const c of running.values()) c.abort(new Error('fog node shutting down'));
        while (running.size > 0) await sleep(10);
        // With the broker down the records cannot go out; their tasks were not acked, so they return.
        await Promise.race([flush(), sleep(Math.max(1000, options.graceMs))]);
        clearInterval(metricsTimer);
        await heartbeat?.stop();
        abort.abort();
        await connection?.close().catch(() => {});
        await connectLoop;
        await threads?.close();
        redis?.disconnect();
        logger.info({ completed: stats.completed, failed: stats.failed }, 'fog node stopped');
      })());
    },
  };
}

function toTaskError(error: unknown, signal: AbortSignal): TaskError {
  if (error instanceof HandlerError) return error.taskError;
  if (signal.aborted && signal.reason instanceof HandlerError) return signal.reason.taskError;
  const e = error as { message?: unknown; code?: unknown; retryable?: unknown };
  return {
    message: String(e?.message ?? error).slice(0, 2000),
    code: typeof e?.code === 'string' ? e.code : 'handler_error',
    retryable: typeof e?.retryable === 'boolean' ? e.retryable : true,
  };
}

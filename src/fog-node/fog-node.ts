import { randomUUID } from 'node:crypto';
import type { ConsumeMessage } from 'amqplib';
import { fallbackOfClass, laneOf, MAX_PROGRESS_MESSAGE_CHARS, OUT_OF_MEMORY, placementClass, placementMatches, PRIORITIES, TOO_LARGE_FOR_TIER, type Placement, type NodeMetricSample, type Priority, type ResultRecord, type SystemMessage, type TaskError, type TaskMessage } from '../domain/index.js';
import {
  createBackoff,
  createBrokerClient,
  createChannelSlot,
  declarePlacement,
  declareTopology,
  placementTopologyOf,
  type BrokerChannel,
  type BrokerConnection,
  type ConfirmingChannel,
  type Topology,
  type TopologyNames,
} from '../broker/index.js';
import { withLogFields, type Logger } from '../infra/logger.js';
import { sleep, type Role } from '../infra/role.js';
import { ATTR, formatTraceparent, parseTraceparent, SpanKind, SpanStatusCode, spanTraceContext, startSpan, withActiveSpan, type Span } from '../infra/tracing.js';
import { loadHandlers, type Handler } from './handlers.js';
import { createThreadPool, HandlerError, MIN_THREAD_HEAP_MB, WorkerCrashedError, type ThreadPool } from './thread-pool.js';
import { createProgressCoalescer, type ProgressCoalescer } from './progress-coalescer.js';
import { createFogHeartbeat, type FogHeartbeat } from './heartbeat.js';
import { processHealth } from '../infra/health.js';
import { registerFogNodeSlots } from '../infra/metrics.js';
import { createLocalQueue, type Queued } from './local-queue.js';
import { checkOutput, storableTaskError, storableText, MAX_ERROR_MESSAGE_CHARS } from './output-check.js';
import { createRecentMap } from './recent-map.js';
import type { Redis } from 'ioredis';
import { createRedis, readCancelled, readPlacementQueues, redisKeys, whenReady } from '../infra/redis.js';

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
  /** Heap limit of a thread whose task message does not say its memoryMb (messages of older versions), and of the thread that lists the handlers module's types. */
  readonly workerMemoryMb: number;
  /**
   * Memory of the node's tier (its maxMemoryMb): a task asking more is refused
   * (`too-large-for-tier`), and the heaps of the thread tasks running at once stay within it.
   * Default: no limit.
   */
  readonly tierMemoryMb?: number;
  /** PROGRESS_MIN_INTERVAL_MS: at most one progress record per run per this many ms (the last is always sent); default 1000. */
  readonly progressMinIntervalMs?: number;
  /** Level of the handlers' ctx.log (their lines are written to the node's log); default 'info'. */
  readonly handlerLogLevel?: string;
  /** FOG_NODE_MAX_OUTPUT_BYTES: a larger output (as JSON) is reported as failed `output-not-storable`. */
  readonly maxOutputBytes: number;
  readonly logger: Logger;
  /** FOG_NODE_ZONE: the node consumes its zone's placement queues (declared when it joins); default none. */
  readonly zone?: string | null;
  /** FOG_NODE_LABELS: the node consumes the label classes in Redis whose placement it matches; default none. */
  readonly labels?: Readonly<Record<string, string>>;
  /** FOG_NODE_PLACEMENT_RESCAN_MS: how often a node with labels looks for new label classes in Redis (default 10000). */
  readonly placementRescanMs?: number;
  /** Redis membership (fog:nodes, fog:node:{id}); Redis being down never stops task flow. */
  readonly heartbeat?: { readonly redisUrl: string; readonly prefix: string; readonly intervalMs: number; readonly ttlMs: number; readonly version: string };
}

interface Delivery extends Queued {
  readonly msg: ConsumeMessage;
  readonly task: TaskMessage;
  /** Consume channel generation: a delivery is settled only on the channel that delivered it. */
  readonly generation: number;
  /** Acked or nacked once: a second settle of one tag would make the broker close the channel. */
  settled: boolean;
}

/**
 * One attempt (taskId, attempt) as this node runs or ran it. Every delivery of
 * the attempt is settled through it: acked once the broker confirmed any record
 * of the run (from then on the records, not the delivery, carry its fate).
 */
interface Attempt {
  durable: boolean;
  /** Deliveries of this attempt waiting for that confirm. */
  readonly unacked: Delivery[];
}

interface Run {
  readonly task: TaskMessage;
  readonly controller: AbortController;
  readonly attempt: Attempt;
  /** Memory this run holds of the tier's (its thread's heap; 0 for an inline handler). */
  readonly memoryMb: number;
  readonly progress: ProgressCoalescer;
  /** Trace id of the delivery (W3C traceparent or x-trace-id header), for the handler's log lines. */
  readonly traceId: string | null;
  /** The run's trace context, carried by each of its records (docs/tracing.md). */
  readonly traceparent: string | undefined;
  readonly span: Span | undefined;
}

interface PendingRecord {
  readonly record: ResultRecord;
  readonly attempt: Attempt;
  /** Rough size in the message, to keep a result message far below the broker's limit. */
  readonly bytes: number;
}

export interface FogNodeStats {
  inFlight: number;
  buffered: number;
  completed: number;
  failed: number;
  /** Runs whose worker thread died (also counted in `failed`). */
  crashed: number;
  /** Runs given back at shutdown with a `returned` record. */
  returned: number;
  /** Task-queue consumers open now; 0 while the node has none (it is consuming again within seconds). */
  consumers: number;
  /** Times the consume channel was lost (closed or a consumer cancelled by the broker) and opened again. */
  consumerRestarts: number;
}

const MAX_RECORDS_PER_MESSAGE = 500;
/** A result message stays far below RabbitMQ's max_message_size (128 MiB by default). */
const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
const RECORD_OVERHEAD_BYTES = 400;
const MAX_REMEMBERED_CANCELS = 100_000;
/** Finished attempts remembered, so a late redelivery of one is acked without a second run. */
const RECENT_ATTEMPTS = { max: 10_000, ttlMs: 10 * 60_000 };

/** A task's run was stopped because the task was cancelled. */
class CancelledError extends Error {}
/** The consume channel of one generation: its consumers' tags and the placement queues it consumes. */
interface ConsumeChannel {
  readonly channel: BrokerChannel;
  readonly tags: string[];
  readonly queues: Set<string>;
}

/** A run was stopped because the node stops and FOG_NODE_GRACE_MS passed. */
class ShutdownError extends Error {}

/**
 * A fog node: consumes its tier's task queues (and lighter tiers' when its own
 * are empty), runs each task's handler, and reports started/succeeded/failed/
 * returned records to `results`, many per message. A task message is acked as
 * soon as the broker confirmed the message carrying its `started` record (or a
 * later one): a crash before that leaves the task on its queue; after it the
 * records that follow are retried until confirmed, and the scheduler's running
 * lease covers a node that dies before it can send them. It never talks to
 * PostgreSQL.
 */
export function createFogNode(options: FogNodeOptions): Role & { stats(): FogNodeStats } {
  const logger = options.logger.child({ role: 'fog-node', nodeId: options.nodeId, tier: options.tier });
  const abort = new AbortController();
  const stats: FogNodeStats = { inFlight: 0, buffered: 0, completed: 0, failed: 0, crashed: 0, returned: 0, consumers: 0, consumerRestarts: 0 };
  const queue = createLocalQueue<Delivery>(options.agingMs);
  const running = new Map<string, Run>();
  const recent = createRecentMap<string, Attempt>(RECENT_ATTEMPTS);
  const pending: PendingRecord[] = [];
  let pendingBytes = 0;
  let flushing: Promise<void> | undefined;
  let flushTimer: NodeJS.Timeout | undefined;
  let metricsTimer: NodeJS.Timeout | undefined;
  const broker = createBrokerClient({ urls: options.amqpUrl, name: `fogsched-fog-node-${options.nodeId}`, logger });
  let connection: BrokerConnection | undefined;
  let publishChannel: ConfirmingChannel | undefined;
  /** The consume channel now; deliveries of any other generation are never settled (their channel is gone). */
  const consume = createChannelSlot<ConsumeChannel>();
  const place = { zone: options.zone || null, labels: options.labels ?? {} };
  /** A node with a zone or labels consumes placement queues beside its tier's. */
  const placed = place.zone !== null || Object.keys(place.labels).length > 0;
  let draining = false;
  let handlers = new Map<string, Handler>();
  const threads: ThreadPool = createThreadPool({ keepIdle: 2, idleMs: 30_000 });
  const tierMemoryMb = options.tierMemoryMb ?? Infinity;
  /** Memory held by the thread runs in progress (their heaps), kept within tierMemoryMb. */
  let reservedMb = 0;
  /** A delivery picked while the memory it needs was held by others: it goes first once enough is free. */
  let held: Delivery | undefined;
  let connectLoop: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  const cancelled = new Set<string>();
  let heartbeat: FogHeartbeat | undefined;
  /** Its /healthz loop and slot gauge, removed on stop. */
  const untrack: (() => void)[] = [];

  const keyOf = (task: TaskMessage) => `${task.taskId}:${task.attempt}`;

  // --- settling deliveries ----------------------------------------------------------

  /** Acks or nacks on the channel that delivered it; on a dead channel it is dropped (the broker returned it). Never throws. */
  const settle = (d: Delivery, how: 'ack' | 'requeue' | 'reject'): void => {
    if (d.settled) return;
    d.settled = true;
    // A closed channel drops it too: the broker returns the delivery by itself.
    consume.of(d.generation)?.channel.settle(d.msg, how);
  };

  const markDurable = (attempt: Attempt) => {
    attempt.durable = true;
    for (const d of attempt.unacked.splice(0)) settle(d, 'ack');
  };

  /** Another delivery of an attempt this node runs or ran: it does not run again; acked with the attempt. */
  const join = (attempt: Attempt, d: Delivery) => {
    logger.info({ taskId: d.task.taskId, attempt: d.task.attempt }, 'delivery of an attempt this node runs or ran; not running it again');
    if (attempt.durable) settle(d, 'ack');
    else attempt.unacked.push(d);
  };

  const known = (task: TaskMessage): Attempt | undefined => running.get(keyOf(task))?.attempt ?? recent.get(keyOf(task), Date.now());

  // --- picking what runs next -------------------------------------------------------

  /** Heap of the thread a task runs in: its resources.memoryMb (FOG_NODE_WORKER_MEMORY_MB for a message without it). */
  const heapOf = (task: TaskMessage) => Math.max(MIN_THREAD_HEAP_MB, Math.ceil(typeof task.memoryMb === 'number' && task.memoryMb > 0 ? task.memoryMb : options.workerMemoryMb));
  /** What a task holds of the tier's memory while it runs: its heap when it runs in a thread, nothing inline. */
  const memoryOf = (task: TaskMessage) => (handlers.get(task.type)?.kind === 'thread' ? heapOf(task) : 0);

  const pump = () => {
    while (!draining && running.size < options.slots) {
      const next = held ?? queue.pick(Date.now());
      held = undefined;
      if (!next) break;
      if (!consume.isCurrent(next.generation)) continue; // its channel is gone: the broker returned it
      const attempt = known(next.task);
      if (attempt) {
        join(attempt, next);
        continue;
      }
      const need = memoryOf(next.task);
      // Waits for memory when others hold it (never when nothing runs: then it runs, or is refused as too large).
      if (need > 0 && need <= tierMemoryMb && running.size > 0 && reservedMb + need > tierMemoryMb) {
        held = next;
        break;
      }
      void execute(next);
    }
    stats.buffered = queue.size;
    stats.inFlight = running.size;
  };

  // --- running one task --------------------------------------------------------------

  /** A handler's ctx.log line (pino JSON from its thread), written to the node's log at its level. */
  const logLine = (line: string) => {
    try {
      const { level, msg, time: _time, ...fields } = JSON.parse(line) as { level?: number; msg?: string; time?: number } & Record<string, unknown>;
      const label = (typeof level === 'number' ? logger.levels.labels[level] : undefined) ?? 'info';
      const write = (logger as unknown as Record<string, (o: object, m?: string) => void>)[label] ?? logger.info.bind(logger);
      write.call(logger, { source: 'handler', ...fields }, msg);
    } catch {
      logger.info({ source: 'handler', line }, 'handler log line');
    }
  };

  const runHandler = async (run: Run, signal: AbortSignal): Promise<unknown> => {
    const { task } = run;
    const handler = handlers.get(task.type);
    if (!handler) throw new HandlerError({ message: `no handler for task type ${task.type} on node ${options.nodeId}`, code: 'unknown_handler', retryable: false });
    if (handler.kind === 'inline') {
      return handler.run(task.payload, signal, { taskId: task.taskId, attempt: task.attempt, dependencies: task.dependencies ?? {}, dependenciesTruncated: task.dependenciesTruncated === true });
    }
    const info = {
      taskId: task.taskId,
      attempt: task.attempt,
      maxAttempts: task.maxAttempts ?? task.attempt,
      tenant: task.tenant,
      type: task.type,
      tier: task.tier,
      deadline: task.deadline,
      traceId: run.traceId,
      dependencies: task.dependencies ?? {},
      dependenciesTruncated: task.dependenciesTruncated === true,
    };
    return threads.run(
      { module: handler.module, exportName: handler.exportName, payload: task.payload, info, heapMb: heapOf(task), logLevel: options.handlerLogLevel ?? 'info' },
      signal,
      { onProgress: (fraction, message, at) => run.progress.report({ fraction, message, at }), onLog: logLine },
    );
  };

  /**
   * Runs one delivery's task (see run) with its trace: a `fog-node run` span, child of the
   * message's `traceparent`, when tracing is on; its trace id and task id on every log line.
   */
  const execute = (d: Delivery): Promise<void> => {
    const parent = parseTraceparent(d.msg.properties.headers?.traceparent);
    const span = startSpan('fog-node run', {
      kind: SpanKind.CONSUMER,
      ...(parent ? { parent } : {}),
      attributes: { [ATTR.role]: 'fog-node', [ATTR.taskId]: d.task.taskId, [ATTR.attempt]: d.task.attempt, [ATTR.tier]: d.task.tier, [ATTR.taskType]: d.task.type, [ATTR.nodeId]: options.nodeId },
    });
    const trace = span ? spanTraceContext(span) : parent;
    return withLogFields({ ...(trace ? { trace_id: trace.traceId } : {}), task_id: d.task.taskId }, () =>
      withActiveSpan(span, () => runDelivery(d, trace ? formatTraceparent(trace) : undefined, span)),
    );
  };

  /** Runs one delivery's task to a record (or a give-back). Never rejects. */
  const runDelivery = async (d: Delivery, traceparent: string | undefined, span: Span | undefined) => {
    const { task } = d;
    const key = keyOf(task);
    const attempt: Attempt = { durable: false, unacked: [d] };
    const memoryMb = memoryOf(task) <= tierMemoryMb ? memoryOf(task) : 0;
    const progress = createProgressCoalescer(options.progressMinIntervalMs ?? 1000, (p) =>
      // The message as PostgreSQL's jsonb stores it (a U+0000 would make ingest set the record aside).
      report({ kind: 'progress', taskId: task.taskId, attempt: task.attempt, at: p.at, fraction: p.fraction, message: p.message === null ? null : storableText(p.message, MAX_PROGRESS_MESSAGE_CHARS) }, attempt),
    );
    const run: Run = { task, controller: new AbortController(), attempt, memoryMb, progress, traceId: traceparent ? (parseTraceparent(traceparent)?.traceId ?? null) : traceIdOf(d.msg), traceparent, span };
    running.set(key, run);
    reservedMb += memoryMb;
    const { signal } = run.controller;
    const startedAt = new Date().toISOString();
    const t0 = performance.now();
    const ended = () => ({ taskId: task.taskId, attempt: task.attempt, startedAt, at: new Date().toISOString(), durationMs: performance.now() - t0 });
    let timeout: NodeJS.Timeout | undefined;
    try {
      try {
        if (task.deadline && Date.parse(task.deadline) < Date.now()) {
          throw new HandlerError({ message: `deadline ${task.deadline} passed before the task started`, code: 'expired', retryable: false });
        }
        if (typeof task.memoryMb === 'number' && task.memoryMb > tierMemoryMb) {
          // Tasks are routed by tier: no other node of this queue has more, so this is final, with the reason.
          throw new HandlerError({
            message: `task asks ${task.memoryMb} MB (resources.memoryMb) but tier ${options.tier} of node ${options.nodeId} has ${tierMemoryMb} MB`,
            code: TOO_LARGE_FOR_TIER,
            retryable: false,
          });
        }
        report({ kind: 'started', taskId: task.taskId, attempt: task.attempt, at: startedAt }, run.attempt);
        if (task.timeoutMs) {
          timeout = setTimeout(() => run.controller.abort(new HandlerError({ message: `timed out after ${task.timeoutMs} ms`, code: 'timeout', retryable: true })), task.timeoutMs);
        }
        const output = await untilAborted(runHandler(run, signal), signal);
        // The last progress goes out before the outcome (same message queue: ingest sees them in order).
        progress.flush();
        const check = checkOutput(output, options.maxOutputBytes);
        if (check.ok) {
          stats.completed++;
          report({ kind: 'succeeded', ...ended(), output: output ?? null }, run.attempt, check.bytes);
        } else {
          // Checked here, not in ingest: a node never publishes an output PostgreSQL refuses.
          stats.failed++;
          report({ kind: 'failed', ...ended(), error: { message: check.message, code: 'output-not-storable', retryable: false } }, run.attempt);
        }
      } catch (error) {
        progress.flush();
        if (signal.aborted && signal.reason instanceof CancelledError) {
          // The cancellation is already in the log; nothing to report.
          markDurable(run.attempt);
        } else if (signal.aborted && signal.reason instanceof ShutdownError) {
          giveBack(run);
        } else if (error instanceof WorkerCrashedError) {
          // The handler took its thread down. A failed attempt like any other (retried within
          // maxAttempts), not a requeue: the broker's delivery count cannot tell poison from
          // graceful returns on every version, the attempt budget can.
          // Out of memory is not retried: the same payload on the same heap limit would most likely
          // run out again; the task fails `out-of-memory` and is resubmitted with more memoryMb.
          stats.crashed++;
          stats.failed++;
          const oom = error.reason === 'out-of-memory';
          logger.warn({ taskId: task.taskId, attempt: task.attempt, err: error.message, reason: error.reason }, 'worker thread crashed under a task');
          report({ kind: 'failed', ...ended(), error: { message: error.message, code: oom ? OUT_OF_MEMORY : 'crashed', retryable: !oom } }, run.attempt);
        } else {
          stats.failed++;
          report({ kind: 'failed', ...ended(), error: toTaskError(error, signal) }, run.attempt);
        }
      }
    } catch (error) {
      logger.error({ err: error, taskId: task.taskId }, 'fog node run ended unexpectedly');
    } finally {
      clearTimeout(timeout);
      progress.flush();
      reservedMb -= memoryMb;
      span?.end();
      running.delete(key);
      recent.set(key, run.attempt, Date.now());
      pump();
    }
  };

  /** A run stopped by shutdown: an acked one is given back by a record, an unacked one by a requeue. */
  const giveBack = (run: Run) => {
    const { task } = run;
    if (run.attempt.durable) {
      stats.returned++;
      report({ kind: 'returned', taskId: task.taskId, attempt: task.attempt, at: new Date().toISOString(), reason: 'node-shutdown' }, run.attempt);
    } else {
      for (const d of run.attempt.unacked.splice(0)) settle(d, 'requeue');
    }
  };

  // --- results: many records per message; acks follow the confirm, apart from it ------

  const report = (reported: ResultRecord, attempt: Attempt, outputBytes = 0) => {
    // The record carries its run's trace (the run is still in `running` when it reports).
    const run = running.get(`${reported.taskId}:${reported.attempt}`);
    const traceparent = run?.traceparent;
    const record = traceparent ? { ...reported, traceparent } : reported;
    if (record.kind === 'failed') run?.span?.setStatus({ code: SpanStatusCode.ERROR, message: record.error.code ?? 'failed' });
    else run?.span?.setAttribute(ATTR.record, record.kind);
    const r = record.kind === 'failed' ? { ...record, error: storableTaskError(record.error) } : record;
    const bytes = RECORD_OVERHEAD_BYTES + outputBytes + (r.kind === 'failed' ? r.error.message.length * 3 : 0);
    pending.push({ record: r, attempt, bytes });
    pendingBytes += bytes;
    if (pending.length >= MAX_RECORDS_PER_MESSAGE || pendingBytes >= MAX_MESSAGE_BYTES) void flush();
    else flushTimer ??= setTimeout(() => void flush(), options.resultFlushMs);
  };

  const takeBatch = (): PendingRecord[] => {
    let n = 0;
    let bytes = 0;
    while (n < pending.length && n < MAX_RECORDS_PER_MESSAGE && (n === 0 || bytes + (pending[n] as PendingRecord).bytes <= MAX_MESSAGE_BYTES)) {
      bytes += (pending[n] as PendingRecord).bytes;
      n++;
    }
    pendingBytes -= bytes;
    return pending.splice(0, n);
  };

  /** Publishes what is pending, one message at a time (so a task's records stay in order). Never rejects. */
  const flush = (): Promise<void> => {
    clearTimeout(flushTimer);
    flushTimer = undefined;
    if (flushing) return flushing.then(() => (pending.length > 0 ? flush() : undefined));
    if (pending.length === 0) return Promise.resolve();
    const taken = takeBatch();
    // With INGEST_LANES, one message per lane (a task's records all go to its lane), published side by side.
    const lanes = options.topology.lanes ?? 0;
    const byLane = new Map<number, PendingRecord[]>();
    for (const p of taken) {
      const lane = lanes > 0 ? laneOf(p.record.taskId, lanes) : -1;
      const group = byLane.get(lane);
      if (group) group.push(p);
      else byLane.set(lane, [p]);
    }
    flushing = Promise.all(
      [...byLane].map(async ([lane, batch]) => {
        const body = Buffer.from(JSON.stringify({ nodeId: options.nodeId, tier: options.tier, records: batch.map((p) => p.record) }));
        const routingKey = lane < 0 ? `task.batch.${options.nodeId}` : options.names.resultLaneKey(lane);
        // One id for every try: ingest's inbox drops a copy the broker took in on a try whose confirm was lost.
        const confirmed = await publishUntilConfirmed(body, routingKey, randomUUID(), batch.length);
        // The ack is apart from the publish: a dead consume channel drops the ack, never repeats the publish.
        if (confirmed) for (const attempt of new Set(batch.map((p) => p.attempt))) markDurable(attempt);
      }),
    )
      .then(() => undefined)
      .catch((error: unknown) => logger.error({ err: error }, 'result flush failed'))
      .finally(() => {
        flushing = undefined;
        if (pending.length === 0) return;
        if (pending.length >= MAX_RECORDS_PER_MESSAGE || pendingBytes >= MAX_MESSAGE_BYTES) void flush();
        else flushTimer ??= setTimeout(() => void flush(), options.resultFlushMs);
      });
    return flushing;
  };

  /** Resolves true once the broker confirmed the message; false only when the node stopped first (the records are lost then, the running lease recovers their tasks). */
  const publishUntilConfirmed = async (body: Buffer, routingKey: string, messageId: string, records: number): Promise<boolean> => {
    const retry = createBackoff({ baseMs: 50, maxMs: 2000 });
    for (let attempt = 0; ; attempt++) {
      const ch = publishChannel;
      if (ch) {
        try {
          await ch.publishConfirmed({ exchange: options.names.results, routingKey, body, options: { persistent: true, messageId, contentType: 'application/json' } });
          return true;
        } catch (error) {
          if (attempt % 20 === 0) logger.warn({ err: (error as Error).message, records }, 'result publish failed; retrying');
        }
      }
      // Keep the records: they are facts.
      if (abort.signal.aborted) return false;
      await sleep(retry.next(), abort.signal);
    }
  };

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
    // A channel that just closed drops it; the next sample goes on the next one.
    ch.publish({ exchange: options.names.metrics, routingKey: `metrics.node.${options.nodeId}`, body: Buffer.from(JSON.stringify(sample)), options: { contentType: 'application/json' } }, () => {});
  };

  // --- consuming -------------------------------------------------------------------

  /** Resolves the wait of the consume channel of that generation: the broker cancelled one of its consumers. */
  let consumerLost: ((generation: number) => void) | undefined;

  const onDelivery = (tierRank: number, priority: Priority, gen: number) => (msg: ConsumeMessage | null) => {
    if (!msg) {
      consumerLost?.(gen); // cancelled by the broker (queue deleted, ...): consume again on a new channel
      return;
    }
    let task: TaskMessage;
    try {
      task = JSON.parse(msg.content.toString('utf8')) as TaskMessage;
      if (typeof task?.taskId !== 'string' || !Number.isInteger(task.attempt) || typeof task.type !== 'string') throw new Error('not a task message');
    } catch (error) {
      logger.error({ err: (error as Error).message, messageId: msg.properties.messageId }, 'unreadable task message; dead-lettering it');
      settle({ msg, task: undefined as unknown as TaskMessage, priority, tierRank, receivedAt: Date.now(), generation: gen, settled: false }, 'reject');
      return;
    }
    const d: Delivery = { msg, task, priority, tierRank, receivedAt: Date.now(), generation: gen, settled: false };
    if (!consume.isCurrent(gen)) return; // its channel is gone: the broker returned it
    if (draining) return settle(d, 'requeue');
    if (cancelled.has(task.taskId)) return settle(d, 'ack'); // cancelled before it got here
    const attempt = known(task);
    if (attempt) return join(attempt, d);
    queue.push(d);
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
  const onSystem = (gen: number) => (msg: ConsumeMessage | null) => {
    if (!msg) {
      consumerLost?.(gen);
      return;
    }
    let body: SystemMessage | undefined;
    try {
      body = JSON.parse(msg.content.toString('utf8')) as SystemMessage;
    } catch {
      return;
    }
    if (body?.kind === 'placement-class') {
      // The relay made a placement queue: look for classes this node matches now.
      const current = consume.of(gen);
      if (current) void rescanPlacement(current, gen).catch((error: unknown) => logger.warn({ err: (error as Error).message }, 'fog node placement rescan failed'));
      return;
    }
    if (body?.kind !== 'cancel' || typeof body.taskId !== 'string') return;
    const taskId = body.taskId;
    cancelled.add(taskId);
    if (cancelled.size > MAX_REMEMBERED_CANCELS) cancelled.delete(cancelled.values().next().value as string);
    for (const d of queue.remove((w) => w.task.taskId === taskId)) settle(d, 'ack');
    if (held?.task.taskId === taskId) {
      settle(held, 'ack');
      held = undefined;
    }
    stats.buffered = queue.size;
    for (const run of running.values()) if (run.task.taskId === taskId) run.controller.abort(new CancelledError(`task ${taskId} cancelled`));
  };

  /**
   * Consumes one placement queue on the consume channel of generation `gen` (declaring it first:
   * idempotent, and it may not exist yet); skipped when that channel is no longer current or the
   * queue is consumed already. Its deliveries rank like those of the tier's general queue.
   */
  const consumePlacement = async (
    current: ConsumeChannel,
    gen: number,
    cls: string,
    tier: string,
    priority: Priority,
  ): Promise<void> => {
    const rank = options.servedTiers.indexOf(tier);
    const queueName = options.names.placementQueue(cls, tier, priority);
    if (rank < 0 || draining || !consume.isCurrent(gen) || current.queues.has(queueName)) return;
    current.queues.add(queueName);
    await declarePlacement(current.channel.raw, placementTopologyOf(options.topology, options.names, cls, [tier], [priority]));
    const { consumerTag } = await current.channel.raw.consume(queueName, onDelivery(rank, priority, gen), { noAck: false });
    current.tags.push(consumerTag);
    if (draining) await current.channel.raw.cancel(consumerTag).catch(() => {});
    else logger.info({ queue: queueName, generation: gen }, 'fog node consuming a placement queue');
  };

  /**
   * Label classes the relay recorded in Redis (`fog:placement-classes`) whose placement this
   * node matches, for the tiers it serves: consumed on the current channel. Redis down: tried
   * again at the next rescan.
   */
  const rescanPlacement = async (current: ConsumeChannel, gen: number): Promise<void> => {
    const hb = options.heartbeat;
    if (!hb || !placed) return;
    redis ??= createRedis(hb.redisUrl, { logger, name: `fogsched-fog-node-${options.nodeId}`, lazyConnect: true });
    const client = redis;
    if (client.status === 'wait') client.connect().catch(() => {});
    if (!(await whenReady(client, 1000))) return;
    let recorded: Record<string, string>;
    try {
      recorded = await readPlacementQueues(client, redisKeys(hb.prefix));
    } catch (error) {
      logger.warn({ err: (error as Error).message }, 'cannot read placement classes from redis; trying again later');
      return;
    }
    for (const [routingKey, json] of Object.entries(recorded)) {
      const [cls, tier, priority] = routingKey.split('.');
      if (!cls || !tier || !(PRIORITIES as readonly string[]).includes(priority ?? '')) continue;
      let placement: Placement | null;
      try {
        placement = JSON.parse(json) as Placement | null;
      } catch {
        continue;
      }
      // The class must be the placement's (a hash collision or a forged entry would route others' tasks here).
      if (placementClass(placement, fallbackOfClass(cls)) !== cls || !placementMatches(placement, place)) continue;
      if (!consume.isCurrent(gen) || draining) return;
      await consumePlacement(current, gen, cls, tier, priority as Priority);
    }
    stats.consumers = draining ? 0 : current.tags.length;
  };

  /**
   * Keeps a consume channel with its consumers while the connection lives. A
   * channel the broker closes (consumer_timeout, a precondition failure) or a
   * consumer it cancels makes a new channel of a new generation: the deliveries
   * the old one held return to their queues by themselves, so the buffered ones
   * are dropped here and acks meant for it are dropped; running tasks run on.
   */
  const keepConsuming = async (conn: BrokerConnection) => {
    const retry = createBackoff({ baseMs: 100, maxMs: 5000 });
    while (!abort.signal.aborted && !draining && conn.isOpen()) {
      let channel: BrokerChannel | undefined;
      let gen = 0;
      let why = 'setup failed';
      try {
        const ch = await conn.channel('consume');
        channel = ch;
        gen = ch.generation;
        // From the moment it is lost nothing is settled on it, nor started from it.
        const lost = () => consume.lose(gen);
        const channelClosed = ch.closed.then(() => {
          lost();
          return 'channel closed';
        });
        const cancelledByBroker = new Promise<string>((resolve) => {
          consumerLost = (g) => {
            if (g !== gen) return;
            lost();
            resolve('consumer cancelled by the broker');
          };
        });
        // The queues may be gone (a consumer cancelled because its queue was deleted): declare them again.
        await declareTopology(ch.raw, options.topology);
        await ch.raw.prefetch(options.prefetch, false);
        const current = { channel: ch, tags: [] as string[], queues: new Set<string>() };
        consume.use(gen, current);
        // Before any task arrives: our own queue on the `system` fanout; it lives as long as this channel's consumer.
        const system = await ch.raw.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
        await ch.raw.bindQueue(system.queue, options.names.system, '');
        await ch.raw.consume(system.queue, onSystem(gen), { noAck: true });
        // Cancels broadcast while this node was not listening are kept in Redis.
        for (const taskId of await earlierCancels()) cancelled.add(taskId);
        for (const [rank, tier] of options.servedTiers.entries()) {
          for (const priority of PRIORITIES) {
            if (draining) break;
            const { consumerTag } = await ch.raw.consume(options.names.taskQueue(tier, priority), onDelivery(rank, priority, gen), { noAck: false });
            current.tags.push(consumerTag);
            // stop() may have cancelled the others while this consume was on its way.
            if (draining) await ch.raw.cancel(consumerTag).catch(() => {});
          }
        }
        // Its zone's queues: declared here, so a zone's first node creates them.
        if (place.zone) {
          for (const tier of options.servedTiers) for (const priority of PRIORITIES) await consumePlacement(current, gen, place.zone, tier, priority);
        }
        await rescanPlacement(current, gen);
        stats.consumers = draining ? 0 : current.tags.length;
        retry.reset();
        logger.info({ served: options.servedTiers, zone: place.zone, labels: place.labels, slots: options.slots, prefetch: options.prefetch, generation: gen }, 'fog node consuming');
        const ended = Promise.race([channelClosed, cancelledByBroker, conn.closed.then(() => 'connection closed')]);
        if (options.heartbeat && placed) {
          // Label classes, and a zone's queues of each fallback delay, appear as the relay first
          // publishes to them: look again every rescan interval.
          const rescanEnd = new AbortController();
          void ended.then(() => rescanEnd.abort());
          let over: string | undefined;
          while (over === undefined) {
            over = await Promise.race([ended, sleep(options.placementRescanMs ?? 10_000, rescanEnd.signal).then(() => undefined)]);
            if (over === undefined && !draining && !abort.signal.aborted) {
              await rescanPlacement(current, gen).catch((error: unknown) => logger.warn({ err: (error as Error).message }, 'fog node placement rescan failed'));
            }
          }
          why = over;
        } else {
          why = await ended;
        }
      } catch (error) {
        if (!abort.signal.aborted) logger.warn({ err: (error as Error).message }, 'fog node consume setup failed');
      }
      consumerLost = undefined;
      stats.consumers = 0;
      consume.lose(gen);
      // Its unacked deliveries go back to their queues; those of running tasks come back and join their run.
      queue.remove((d) => d.generation === gen);
      if (held?.generation === gen) held = undefined;
      stats.buffered = queue.size;
      await channel?.close();
      if (abort.signal.aborted || draining || !conn.isOpen()) return;
      stats.consumerRestarts++;
      const delay = retry.next();
      logger.warn({ reason: why, retryInMs: delay }, 'fog node lost its consume channel; consuming again');
      await sleep(delay, abort.signal);
    }
  };

  /** Keeps a confirm channel for results and metrics while the connection lives; one the broker closes is replaced. */
  const keepPublishing = async (conn: BrokerConnection) => {
    const retry = createBackoff({ baseMs: 100, maxMs: 5000 });
    while (!abort.signal.aborted && conn.isOpen()) {
      let channel: ConfirmingChannel | undefined;
      try {
        const ch = await conn.confirmChannel('publish');
        channel = ch;
        await declareTopology(ch.raw, options.topology);
        publishChannel = ch;
        retry.reset();
        await Promise.race([ch.closed, conn.closed]);
      } catch (error) {
        if (!abort.signal.aborted) logger.warn({ err: (error as Error).message }, 'fog node publish channel setup failed');
      }
      if (publishChannel === channel) publishChannel = undefined;
      await channel?.close();
      if (abort.signal.aborted || !conn.isOpen()) return;
      const delay = retry.next();
      logger.warn({ retryInMs: delay }, 'fog node lost its publish channel; opening another');
      await sleep(delay, abort.signal);
    }
  };

  const connect = async () => {
    while (!abort.signal.aborted) {
      const conn = await broker.connect(abort.signal);
      if (!conn) return;
      // A stop (or SIGTERM) while this connection is still being set up closes it too.
      const closeOnStop = () => void conn.close();
      if (abort.signal.aborted) closeOnStop();
      else abort.signal.addEventListener('abort', closeOnStop, { once: true });
      connection = conn;
      try {
        await Promise.all([keepPublishing(conn), keepConsuming(conn)]);
        // Draining: the consume side is done; stay connected (acks and records still go out) until stop closes it.
        await conn.closed;
      } finally {
        abort.signal.removeEventListener('abort', closeOnStop);
      }
      connection = undefined;
      if (abort.signal.aborted) return;
      // Lost the broker: deliveries of the old channels come back to the queues by themselves; running tasks run on.
      // The next connection goes to the next node of the list (broker.connect takes them in turn).
      logger.warn('fog node lost the broker; reconnecting');
      await sleep(200, abort.signal);
    }
  };

  return {
    name: `fog-node:${options.nodeId}`,
    stats: () => ({ ...stats, inFlight: running.size, buffered: queue.size }),
    async start() {
      // The handlers module is imported in a worker thread only; one lists its task types here.
      handlers = await loadHandlers(options.handlersModule, (href) => threads.describe(href, options.workerMemoryMb));
      logger.info({ types: [...handlers.keys()], tierMemoryMb: options.tierMemoryMb ?? null, slots: options.slots }, 'fog node handlers loaded');
      connectLoop = connect().catch((error: unknown) => logger.error({ err: error }, 'fog node connection loop crashed'));
      metricsTimer = setInterval(sampleMetrics, options.metricsIntervalMs);
      metricsTimer.unref();
      untrack.push(registerFogNodeSlots({ tier: options.tier, slots: () => ({ busy: running.size, free: Math.max(0, options.slots - running.size) }) }));
      if (options.heartbeat) {
        // /healthz: every heartbeat, written or failed, beats (one that hangs is a stalled node).
        const progress = processHealth.loop(`fog-node:${options.nodeId}`, { intervalMs: options.heartbeat.intervalMs });
        untrack.push(() => progress.dispose());
        heartbeat = createFogHeartbeat({
          ...options.heartbeat,
          onBeat: () => progress.beat(),
          nodeId: options.nodeId,
          tier: options.tier,
          slots: options.slots,
          zone: place.zone,
          labels: place.labels,
          logger,
          stats: () => ({
            inFlight: running.size,
            cpu: Math.round(heartbeatCpu() * 1000) / 1000,
            rssMb: Math.round((process.memoryUsage.rss() / 1048576) * 10) / 10,
            inFlightTaskIds: [...running.values()].map((r) => r.task.taskId),
            consumers: stats.consumers,
          }),
        });
        heartbeat.start();
      }
    },
    stop() {
      return (stopped ??= (async () => {
        // Stop taking work, give buffered tasks back at once, let running ones finish.
        draining = true;
        const c = consume.current?.channel;
        for (const tag of c?.tags ?? []) await c?.channel.raw.cancel(tag).catch(() => {});
        stats.consumers = 0;
        for (const d of queue.remove()) settle(d, 'requeue');
        if (held) settle(held, 'requeue');
        held = undefined;
        stats.buffered = 0;
        const deadline = Date.now() + options.graceMs;
        while (running.size > 0 && Date.now() < deadline) await sleep(20);
        if (running.size > 0) {
          // Whether a start is confirmed decides how a stopped run goes back: by a record or by a requeue.
          await Promise.race([flush(), sleep(1000)]);
          for (const run of running.values()) run.controller.abort(new ShutdownError('fog node shutting down'));
          while (running.size > 0) await sleep(10);
        }
        // With the broker down the records cannot go out: unacked tasks return by themselves, the
        // running lease recovers acked ones.
        await Promise.race([flush(), sleep(Math.max(1000, options.graceMs))]);
        clearInterval(metricsTimer);
        await heartbeat?.stop();
        abort.abort();
        await connection?.close();
        await connectLoop;
        await threads.close();
        redis?.disconnect();
        for (const done of untrack) done();
        logger.info({ completed: stats.completed, failed: stats.failed, returned: stats.returned }, 'fog node stopped');
      })());
    },
  };
}

/** Settles like `work`, or rejects with the abort reason as soon as `signal` aborts (a handler deaf to its signal is left behind). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  work.catch(() => {}); // settling after the abort is nobody's concern
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/** The trace id a task message carries: the trace-id of a W3C `traceparent` header, or `x-trace-id`. */
function traceIdOf(msg: ConsumeMessage): string | null {
  const headers = (msg.properties.headers ?? {}) as Record<string, unknown>;
  const parent = headers.traceparent;
  if (typeof parent === 'string') {
    const id = parent.split('-')[1];
    if (id) return id;
  }
  return typeof headers['x-trace-id'] === 'string' ? headers['x-trace-id'] : null;
}

function toTaskError(error: unknown, signal: AbortSignal): TaskError {
  if (error instanceof HandlerError) return error.taskError;
  if (signal.aborted && signal.reason instanceof HandlerError) return signal.reason.taskError;
  const e = error as { message?: unknown; code?: unknown; retryable?: unknown };
  return {
    message: String(e?.message ?? error).slice(0, MAX_ERROR_MESSAGE_CHARS),
    code: typeof e?.code === 'string' ? e.code : 'handler_error',
    retryable: typeof e?.retryable === 'boolean' ? e.retryable : true,
  };
}

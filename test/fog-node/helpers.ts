import { randomUUID } from 'node:crypto';
import amqp, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import { afterAll, expect } from 'vitest';
import type { ResultBatch, ResultRecord, TaskMessage } from '../../src/domain/index.js';
import { createFogNode, type FogNodeOptions } from '../../src/fog-node/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { topology, topologyNames, type Topology, type TopologyNames } from '../../src/outbox/index.js';

export const logger = createLogger(process.env.TEST_LOG_LEVEL ?? 'silent');

/**
 * Fails the file when any promise rejection goes unhandled while its tests run
 * (a fog node must handle every branch; Node would crash a real process on one).
 */
export function failOnUnhandledRejections(): { readonly seen: unknown[] } {
  const seen: unknown[] = [];
  const onRejection = (reason: unknown) => seen.push(reason);
  process.on('unhandledRejection', onRejection);
  afterAll(() => {
    process.off('unhandledRejection', onRejection);
    expect(seen.map((r) => String((r as Error)?.stack ?? r))).toEqual([]);
  });
  return { seen };
}

/** A one-tier topology (6 quorum queues) under its own prefix. */
export function lightTopology(prefix: string, deliveryLimit = 3): { topology: Topology; names: TopologyNames } {
  return {
    topology: topology({ prefix, tiers: ['light'], taskQueueMaxLength: 10_000, deliveryLimit, metricsQueueMaxLength: 1000 }),
    names: topologyNames(prefix),
  };
}

export function aTaskMessage(overrides: Partial<TaskMessage> = {}): TaskMessage {
  return {
    taskId: randomUUID(),
    attempt: 1,
    type: 'noop',
    payload: null,
    tenant: 'default',
    tier: 'light',
    priority: 'normal',
    timeoutMs: null,
    deadline: null,
    availableAt: new Date().toISOString(),
    ...overrides,
  };
}

/** Publishes task messages as the relay does (persistent, confirmed). */
export async function publishTasks(channel: ConfirmChannel, names: TopologyNames, tasks: readonly TaskMessage[]): Promise<void> {
  for (const task of tasks) {
    channel.publish(names.tasks, `${task.tier}.${task.priority}`, Buffer.from(JSON.stringify(task)), {
      persistent: true,
      messageId: randomUUID(),
      contentType: 'application/json',
    });
  }
  await channel.waitForConfirms();
}

/** Every record the nodes published to `results`, read straight off the queue (the record protocol, no ingest). */
export interface ResultLog {
  readonly records: ResultRecord[];
  readonly batches: ResultBatch[];
  of(taskId: string): ResultRecord[];
  kinds(taskId: string): string[];
  close(): Promise<void>;
}

export async function collectResults(url: string, names: TopologyNames): Promise<ResultLog> {
  const connection: ChannelModel = await amqp.connect(url);
  connection.on('error', () => {});
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  const records: ResultRecord[] = [];
  const batches: ResultBatch[] = [];
  await channel.consume(
    names.resultsQueue,
    (msg) => {
      if (!msg) return;
      const batch = JSON.parse(msg.content.toString('utf8')) as ResultBatch;
      batches.push(batch);
      records.push(...batch.records);
    },
    { noAck: true },
  );
  return {
    records,
    batches,
    of: (taskId) => records.filter((r) => r.taskId === taskId),
    kinds: (taskId) => records.filter((r) => r.taskId === taskId).map((r) => r.kind),
    close: async () => {
      await connection.close().catch(() => {});
    },
  };
}

type NodeOptions = Omit<FogNodeOptions, 'topology' | 'names' | 'amqpUrl'> & { maxOutputBytes?: number };

/** A fog node in this process with test defaults; stop it (or let `stopAll` do it). */
export function testFogNode(
  base: { amqpUrl: string; topology: Topology; names: TopologyNames },
  overrides: Partial<NodeOptions> = {},
): ReturnType<typeof createFogNode> {
  const node = createFogNode({
    ...base,
    nodeId: `node-${randomUUID().slice(0, 8)}`,
    tier: 'light',
    servedTiers: ['light'],
    slots: 4,
    prefetch: 4,
    graceMs: 1000,
    resultFlushMs: 2,
    metricsIntervalMs: 60_000,
    agingMs: 2000,
    handlersModule: '',
    workerMemoryMb: 64,
    maxOutputBytes: 1024 * 1024,
    logger,
    ...overrides,
  });
  live.add(node);
  return node;
}

const live = new Set<{ stop(): Promise<void> }>();

/** Stops every node the file started (stop is idempotent); use in afterEach. */
export async function stopAllNodes(): Promise<void> {
  const nodes = [...live];
  live.clear();
  await Promise.all(nodes.map((n) => n.stop()));
}

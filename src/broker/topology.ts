import type { Channel } from 'amqplib';
import { PRIORITIES, type Priority } from '../domain/index.js';

/** Settings the topology depends on (from the config). */
export interface TopologyOptions {
  readonly prefix: string;
  readonly tiers: readonly string[];
  readonly taskQueueMaxLength: number;
  readonly deliveryLimit: number;
  readonly metricsQueueMaxLength: number;
}

export interface TopologyNames {
  readonly tasks: string;
  readonly results: string;
  readonly metrics: string;
  readonly system: string;
  readonly dlx: string;
  readonly resultsQueue: string;
  readonly metricsQueue: string;
  readonly dlq: string;
  taskQueue(tier: string, priority: Priority): string;
}

export function topologyNames(prefix: string): TopologyNames {
  return {
    tasks: `${prefix}tasks`,
    results: `${prefix}results`,
    metrics: `${prefix}metrics.topic`,
    system: `${prefix}system`,
    dlx: `${prefix}dlx`,
    resultsQueue: `${prefix}results`,
    metricsQueue: `${prefix}metrics.node`,
    dlq: `${prefix}dlq`,
    taskQueue: (tier, priority) => `${prefix}tasks.${tier}.${priority}`,
  };
}

export interface ExchangeSpec {
  readonly name: string;
  readonly type: 'direct' | 'topic' | 'fanout';
}
export interface QueueSpec {
  readonly name: string;
  readonly arguments: Readonly<Record<string, string | number>>;
}
export interface BindingSpec {
  readonly exchange: string;
  readonly queue: string;
  readonly routingKey: string;
}
export interface Topology {
  readonly exchanges: readonly ExchangeSpec[];
  readonly queues: readonly QueueSpec[];
  readonly bindings: readonly BindingSpec[];
}

/**
 * The whole broker topology as data: declared by every role that needs it and
 * exported as RabbitMQ definitions for deployment, so the two never drift.
 */
export function topology(options: TopologyOptions): Topology {
  const n = topologyNames(options.prefix);
  const taskQueues: QueueSpec[] = options.tiers.flatMap((tier) =>
    PRIORITIES.map((priority) => ({
      name: n.taskQueue(tier, priority),
      arguments: {
        'x-queue-type': 'quorum',
        'x-max-length': options.taskQueueMaxLength,
        'x-overflow': 'reject-publish',
        'x-delivery-limit': options.deliveryLimit,
        'x-dead-letter-exchange': n.dlx,
        'x-dead-letter-routing-key': 'task.failed',
        // Without this a quorum queue dead-letters at most once: a message could vanish on its way to dlq.
        'x-dead-letter-strategy': 'at-least-once',
      },
    })),
  );
  return {
    exchanges: [
      { name: n.tasks, type: 'direct' },
      { name: n.results, type: 'topic' },
      { name: n.metrics, type: 'topic' },
      { name: n.system, type: 'fanout' },
      { name: n.dlx, type: 'topic' },
    ],
    queues: [
      ...taskQueues,
      {
        name: n.resultsQueue,
        arguments: {
          'x-queue-type': 'quorum',
          'x-overflow': 'reject-publish',
          'x-dead-letter-exchange': n.dlx,
          'x-dead-letter-routing-key': 'result.rejected',
          'x-dead-letter-strategy': 'at-least-once',
        },
      },
      {
        name: n.metricsQueue,
        arguments: { 'x-queue-type': 'quorum', 'x-max-length': options.metricsQueueMaxLength, 'x-overflow': 'drop-head' },
      },
      { name: n.dlq, arguments: { 'x-queue-type': 'quorum' } },
    ],
    bindings: [
      ...options.tiers.flatMap((tier) =>
        PRIORITIES.map((priority) => ({ exchange: n.tasks, queue: n.taskQueue(tier, priority), routingKey: `${tier}.${priority}` })),
      ),
      { exchange: n.results, queue: n.resultsQueue, routingKey: 'task.#' },
      { exchange: n.metrics, queue: n.metricsQueue, routingKey: 'metrics.node.*' },
      { exchange: n.dlx, queue: n.dlq, routingKey: '#' },
    ],
  };
}

/** Declares exchanges, queues and bindings; idempotent, safe from every role at every start. */
export async function declareTopology(channel: Channel, t: Topology): Promise<void> {
  for (const e of t.exchanges) await channel.assertExchange(e.name, e.type, { durable: true });
  for (const q of t.queues) await channel.assertQueue(q.name, { durable: true, arguments: { ...q.arguments } });
  for (const b of t.bindings) await channel.bindQueue(b.queue, b.exchange, b.routingKey);
}

import type { Channel } from 'amqplib';
import { fallbackOfClass, PRIORITIES, type Priority } from '../domain/index.js';

/** Settings the topology depends on (from the config). */
export interface TopologyOptions {
  readonly prefix: string;
  readonly tiers: readonly string[];
  readonly taskQueueMaxLength: number;
  readonly deliveryLimit: number;
  readonly metricsQueueMaxLength: number;
  /** FOG_ZONES: zones whose placement queues (one per tier and priority) are declared up front; default none. */
  readonly zones?: readonly string[];
  /**
   * INGEST_LANES: result lanes, quorum queues `<prefix>results.lane.<i>` with a single active
   * consumer each; a fog node sends a task's records to lane laneOf(taskId). 0 (the default here)
   * keeps the one `results` queue; `npm start` defaults to 4.
   */
  readonly ingestLanes?: number;
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
  /** Queue of result lane `lane` (INGEST_LANES). */
  resultLane(lane: number): string;
  /** Routing key, on the results exchange, of result lane `lane`. */
  resultLaneKey(lane: number): string;
  taskQueue(tier: string, priority: Priority): string;
  /** Queue of a placement class (see placementClass in the domain): `<prefix>tasks.<class>.<tier>.<priority>`. */
  placementQueue(placementClass: string, tier: string, priority: Priority): string;
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
    resultLane: (lane) => `${prefix}results.lane.${lane}`,
    resultLaneKey: (lane) => `lane.${lane}`,
    taskQueue: (tier, priority) => `${prefix}tasks.${tier}.${priority}`,
    placementQueue: (placementClass, tier, priority) => `${prefix}tasks.${placementClass}.${tier}.${priority}`,
  };
}

export interface ExchangeSpec {
  readonly name: string;
  readonly type: 'direct' | 'topic' | 'fanout';
}
export interface QueueSpec {
  readonly name: string;
  readonly arguments: Readonly<Record<string, string | number | boolean>>;
}
export interface BindingSpec {
  readonly exchange: string;
  readonly queue: string;
  readonly routingKey: string;
}
export interface Topology {
  /** Result lanes (INGEST_LANES); 0: fog nodes publish to the one results queue. */
  readonly lanes?: number;
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
    PRIORITIES.map((priority) => ({ name: n.taskQueue(tier, priority), arguments: taskQueueArguments(options) })),
  );
  const zones = (options.zones ?? []).map((zone) => placementTopology(options, zone, options.tiers));
  const lanes = Array.from({ length: options.ingestLanes ?? 0 }, (_, lane) => lane);
  const resultArguments = {
    'x-queue-type': 'quorum',
    'x-overflow': 'reject-publish',
    'x-dead-letter-exchange': n.dlx,
    'x-dead-letter-routing-key': 'result.rejected',
    'x-dead-letter-strategy': 'at-least-once',
  };
  return {
    lanes: lanes.length,
    exchanges: [
      { name: n.tasks, type: 'direct' },
      { name: n.results, type: 'topic' },
      { name: n.metrics, type: 'topic' },
      { name: n.system, type: 'fanout' },
      { name: n.dlx, type: 'topic' },
    ],
    queues: [
      ...taskQueues,
      ...zones.flatMap((z) => z.queues),
      // Kept with lanes too: it holds what nodes of a version before lanes still send.
      { name: n.resultsQueue, arguments: resultArguments },
      // One consumer at a time per lane (the others wait), so one task's records are applied in order.
      ...lanes.map((lane) => ({ name: n.resultLane(lane), arguments: { ...resultArguments, 'x-single-active-consumer': true } })),
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
      ...zones.flatMap((z) => z.bindings),
      { exchange: n.results, queue: n.resultsQueue, routingKey: 'task.#' },
      ...lanes.map((lane) => ({ exchange: n.results, queue: n.resultLane(lane), routingKey: n.resultLaneKey(lane) })),
      { exchange: n.metrics, queue: n.metricsQueue, routingKey: 'metrics.node.*' },
      { exchange: n.dlx, queue: n.dlq, routingKey: '#' },
    ],
  };
}

/**
 * Arguments of every task queue, tier or placement class: quorum, bounded (a full queue refuses
 * the publish, so the relay retries instead of losing it), dead-lettered at least once to `dlx`
 * (a delivery-limit reached, or a placement dispatch's per-message TTL, its fallback, run out).
 */
function taskQueueArguments(options: TopologyOptions): Readonly<Record<string, string | number>> {
  return {
    'x-queue-type': 'quorum',
    'x-max-length': options.taskQueueMaxLength,
    'x-overflow': 'reject-publish',
    'x-delivery-limit': options.deliveryLimit,
    'x-dead-letter-exchange': topologyNames(options.prefix).dlx,
    'x-dead-letter-routing-key': 'task.failed',
    // Without this a quorum queue dead-letters at most once: a message could vanish on its way to dlq.
    // (at-least-once needs x-overflow reject-publish.)
    'x-dead-letter-strategy': 'at-least-once',
  };
}

/**
 * The queues and bindings of one placement class (`placementClass` in the domain) for some tiers,
 * every priority: `<prefix>tasks.<class>.<tier>.<priority>`, bound to `tasks` with
 * `<class>.<tier>.<priority>`, with the tier queues' arguments. Declared by the relay before its
 * first publish to the class, by a fog node for its own zone, and up front for FOG_ZONES.
 */
export function placementTopology(options: TopologyOptions, placementClass: string, tiers: readonly string[], priorities: readonly Priority[] = PRIORITIES): Pick<Topology, 'queues' | 'bindings'> {
  const n = topologyNames(options.prefix);
  const pairs = tiers.flatMap((tier) => priorities.map((priority) => ({ tier, priority })));
  return {
    queues: pairs.map(({ tier, priority }) => ({ name: n.placementQueue(placementClass, tier, priority), arguments: withFallback(taskQueueArguments(options), placementClass) })),
    bindings: pairs.map(({ tier, priority }) => ({ exchange: n.tasks, queue: n.placementQueue(placementClass, tier, priority), routingKey: `${placementClass}.${tier}.${priority}` })),
  };
}

/**
 * placementTopology for a role that has the topology rather than its settings (a fog node): the
 * class queues take the arguments of the tier queues of the same tier and priority.
 */
export function placementTopologyOf(t: Topology, names: TopologyNames, placementClass: string, tiers: readonly string[], priorities: readonly Priority[] = PRIORITIES): Pick<Topology, 'queues' | 'bindings'> {
  const args = new Map(t.queues.map((q) => [q.name, q.arguments]));
  const pairs = tiers.flatMap((tier) => priorities.map((priority) => ({ tier, priority })));
  return {
    queues: pairs.map(({ tier, priority }) => {
      const base = args.get(names.taskQueue(tier, priority));
      if (!base) throw new Error(`no task queue of tier ${tier} in the topology`);
      return { name: names.placementQueue(placementClass, tier, priority), arguments: withFallback(base, placementClass) };
    }),
    bindings: pairs.map(({ tier, priority }) => ({ exchange: names.tasks, queue: names.placementQueue(placementClass, tier, priority), routingKey: `${placementClass}.${tier}.${priority}` })),
  };
}

/**
 * A class with a fallback delay (`~fb<ms>`): its queues dead-letter a message that waited that long
 * (reason expired), which ingest turns into the task's fallback to the tier's general queue.
 */
function withFallback(args: Readonly<Record<string, string | number | boolean>>, placementClass: string): Readonly<Record<string, string | number | boolean>> {
  const ttl = fallbackOfClass(placementClass);
  return ttl === null ? args : { ...args, 'x-message-ttl': ttl };
}

/** Declares a placement class's queues and bindings (the `tasks` exchange exists already); idempotent. */
export async function declarePlacement(channel: Channel, t: Pick<Topology, 'queues' | 'bindings'>): Promise<void> {
  for (const q of t.queues) await channel.assertQueue(q.name, { durable: true, arguments: { ...q.arguments } });
  for (const b of t.bindings) await channel.bindQueue(b.queue, b.exchange, b.routingKey);
}

/** Declares exchanges, queues and bindings; idempotent, safe from every role at every start. */
export async function declareTopology(channel: Channel, t: Topology): Promise<void> {
  for (const e of t.exchanges) await channel.assertExchange(e.name, e.type, { durable: true });
  for (const q of t.queues) await channel.assertQueue(q.name, { durable: true, arguments: { ...q.arguments } });
  for (const b of t.bindings) await channel.bindQueue(b.queue, b.exchange, b.routingKey);
}

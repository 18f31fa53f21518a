import { randomBytes } from 'node:crypto';
import amqp, { type Channel, type ChannelModel, type ConfirmChannel, type GetMessage } from 'amqplib';
import { inject } from 'vitest';
import { topology, topologyNames, type Topology, type TopologyNames, type TopologyOptions } from '../../src/outbox/index.js';

/** A name prefix no other test file (or run) uses on the shared broker. */
export function uniquePrefix(): string {
  return `t${randomBytes(3).toString('hex')}_`;
}

export const TIERS = ['light', 'medium', 'heavy'] as const;

/**
 * The test topology of a prefix (deliveryLimit 3 unless told). Mind the count:
 * on RabbitMQ 3.10 every quorum queue holds ~3 of the broker's file handles
 * (about 927 with the default 1024 fd limit), and when they run out the broker
 * stops accepting connections. Delete what a test declares.
 */
export function testTopology(prefix: string, overrides: Partial<TopologyOptions> = {}): { topology: Topology; names: TopologyNames } {
  return {
    topology: topology({ prefix, tiers: TIERS, taskQueueMaxLength: 10_000, deliveryLimit: 3, metricsQueueMaxLength: 1000, ...overrides }),
    names: topologyNames(prefix),
  };
}

/**
 * One connection to the shared broker for a test file. Every topology passed
 * to `track` is deleted (queues and exchanges) by `cleanup`.
 */
export interface TestBroker {
  readonly url: string;
  readonly connection: ChannelModel;
  /** A long-lived channel; do not use it for an operation that may fail (use `scratch`). */
  readonly channel: Channel;
  confirmChannel(): Promise<ConfirmChannel>;
  /** A throwaway channel whose server-side close does not crash the process. */
  scratch(): Promise<Channel>;
  track(t: Topology): Topology;
  /** Deletes a topology's queues and exchanges now (each quorum queue holds broker file handles). */
  drop(t: Topology): Promise<void>;
  /** Takes every message off `queue` now (acked), in order. */
  drain(queue: string): Promise<GetMessage[]>;
  messageCount(queue: string): Promise<number>;
  cleanup(): Promise<void>;
}

export async function openTestBroker(): Promise<TestBroker> {
  const url = inject('amqpUrl');
  const connection = await amqp.connect(url);
  connection.on('error', () => {});
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  const tracked: Topology[] = [];
  const broker: TestBroker = {
    url,
    connection,
    channel,
    async confirmChannel() {
      const ch = await connection.createConfirmChannel();
      ch.on('error', () => {});
      return ch;
    },
    async scratch() {
      const ch = await connection.createChannel();
      ch.on('error', () => {});
      return ch;
    },
    track(t) {
      tracked.push(t);
      return t;
    },
    async drop(topo) {
      const ch = await connection.createChannel();
      ch.on('error', () => {});
      try {
        for (const q of topo.queues) await ch.deleteQueue(q.name);
        for (const e of topo.exchanges) await ch.deleteExchange(e.name);
      } finally {
        await ch.close().catch(() => {});
      }
      const i = tracked.indexOf(topo);
      if (i >= 0) tracked.splice(i, 1);
    },
    async drain(queue) {
      const out: GetMessage[] = [];
      for (;;) {
        const msg = await channel.get(queue, { noAck: true });
        if (msg === false) return out;
        out.push(msg);
      }
    },
    async messageCount(queue) {
      return (await channel.checkQueue(queue)).messageCount;
    },
    async cleanup() {
      // A fresh connection: the file's own one may be closed already.
      const conn = await amqp.connect(url);
      conn.on('error', () => {});
      try {
        const ch = await conn.createChannel();
        ch.on('error', () => {});
        for (const t of tracked) {
          for (const q of t.queues) await ch.deleteQueue(q.name);
          for (const e of t.exchanges) await ch.deleteExchange(e.name);
        }
      } finally {
        await conn.close().catch(() => {});
        await connection.close().catch(() => {});
      }
    },
  };
  return broker;
}

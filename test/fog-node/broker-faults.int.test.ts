import amqp, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { redisKeys } from '../../src/infra/redis.js';
import { declareTopology, type Topology, type TopologyNames } from '../../src/outbox/index.js';
import { eventually } from '../helpers/database.js';
import { uniquePrefix } from '../helpers/broker.js';
import { rabbitClusterUnavailable, startRabbitCluster, type RabbitCluster } from '../helpers/rabbit-cluster.js';
import { aTaskMessage, collectResults, failOnUnhandledRejections, lightTopology, publishTasks, stopAllNodes, testFogNode, type ResultLog } from './helpers.js';

// A broker node of this file's own (never the machine's shared one) with a consumer_timeout of
// 3 s, checked every 500 ms, so the broker closes a channel that holds a delivery unacked
// longer than that, as a production broker does after 30 min.

const unavailable = rabbitClusterUnavailable();
if (unavailable) console.warn(`skipping fog node broker-fault tests: ${unavailable}`);

const CONSUMER_TIMEOUT_MS = 3000;

failOnUnhandledRejections();

let cluster: RabbitCluster | undefined;
let url: string;
let connection: ChannelModel;
let publisher: ConfirmChannel;

beforeAll(async () => {
  if (unavailable) return;
  cluster = await startRabbitCluster({
    size: 1,
    extraConf: [`consumer_timeout = ${CONSUMER_TIMEOUT_MS}`],
    advancedConfig: '[{rabbit, [{channel_tick_interval, 500}]}].',
  });
  url = cluster.urls[0] as string;
  connection = await amqp.connect(url);
  connection.on('error', () => {});
  publisher = await connection.createConfirmChannel();
  publisher.on('error', () => {});
}, 180_000);
afterEach(stopAllNodes);
afterAll(async () => {
  await stopAllNodes();
  await connection?.close().catch(() => {});
  await cluster?.stop();
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function env(deliveryLimit = 3): Promise<{ topology: Topology; names: TopologyNames; base: { amqpUrl: string; topology: Topology; names: TopologyNames }; results: ResultLog }> {
  const { topology, names } = lightTopology(uniquePrefix(), deliveryLimit);
  const ch = await connection.createChannel();
  await declareTopology(ch, topology);
  await ch.close();
  const results = await collectResults(url, names);
  cleanups.push(() => results.close());
  return { topology, names, base: { amqpUrl: url, topology, names }, results };
}

/** Ready and unacked messages of a queue, as the broker counts them. */
async function queueCounts(queue: string): Promise<{ ready: number; unacked: number }> {
  const rows = JSON.parse(await (cluster as RabbitCluster).ctl(0, 'list_queues', '-q', '--formatter', 'json', 'name', 'messages_ready', 'messages_unacknowledged')) as {
    name: string;
    messages_ready: number;
    messages_unacknowledged: number;
  }[];
  const row = rows.find((r) => r.name === queue);
  if (!row) throw new Error(`no queue ${queue}`);
  return { ready: row.messages_ready, unacked: row.messages_unacknowledged };
}

describe.skipIf(unavailable !== null)('fog node against a broker that closes channels and cancels consumers', () => {
  it('acks a task message once its started record is confirmed, while the task still runs', async () => {
    const e = await env();
    const queue = e.names.taskQueue('light', 'normal');
    // Long enough that the checks below (rabbitmqctl is slow on a loaded machine) end while it runs.
    const task = aTaskMessage({ type: 'sleep', payload: { ms: 15_000 } });
    await publishTasks(publisher, e.names, [task]);
    const node = testFogNode(e.base);
    await node.start();
    await eventually(() => e.results.kinds(task.taskId).includes('started'), { timeoutMs: 10_000 });
    await eventually(async () => {
      const counts = await queueCounts(queue);
      return counts.ready === 0 && counts.unacked === 0;
    }, { timeoutMs: 8000, message: 'the task message was still unacked while its task ran' });
    expect(node.stats().inFlight).toBe(1); // still running: the ack did not wait for the result
    await eventually(() => e.results.kinds(task.taskId).includes('succeeded'), { timeoutMs: 30_000 });
    expect(e.results.kinds(task.taskId)).toEqual(['started', 'succeeded']);
  });

  it('finishes a task that runs longer than consumer_timeout exactly once', async () => {
    const e = await env();
    const queue = e.names.taskQueue('light', 'normal');
    const task = aTaskMessage({ type: 'sleep', payload: { ms: 3 * CONSUMER_TIMEOUT_MS } });
    await publishTasks(publisher, e.names, [task]);
    const node = testFogNode(e.base, { slots: 1, prefetch: 1 });
    await node.start();
    await eventually(() => e.results.kinds(task.taskId).includes('succeeded'), { timeoutMs: 30_000 });
    // A later task goes through the same consumer: anything redelivered would have run by then.
    const marker = aTaskMessage({ type: 'noop' });
    await publishTasks(publisher, e.names, [marker]);
    await eventually(() => e.results.kinds(marker.taskId).includes('succeeded'), { timeoutMs: 15_000 });
    expect(e.results.kinds(task.taskId)).toEqual(['started', 'succeeded']);
    expect(await queueCounts(queue)).toEqual({ ready: 0, unacked: 0 });
    expect(node.stats().consumerRestarts).toBe(0); // its channel was never closed: nothing held past the timeout
  });

  it('re-consumes when the broker closes its consume channel mid-run (buffered deliveries past consumer_timeout); the running task finishes once', async () => {
    // A high delivery limit: this test is about the channel, not about how often the broker may return a message.
    const e = await env(50);
    const queue = e.names.taskQueue('light', 'normal');
    const long = aTaskMessage({ type: 'sleep', payload: { ms: 2.5 * CONSUMER_TIMEOUT_MS } });
    const waiting = [aTaskMessage({ type: 'noop' }), aTaskMessage({ type: 'noop' })];
    await publishTasks(publisher, e.names, [long, ...waiting]);
    // One slot: the two others wait in the node's buffer, unacked, past the consumer timeout.
    const node = testFogNode(e.base, { slots: 1, prefetch: 3 });
    await node.start();
    await eventually(() => node.stats().consumerRestarts >= 1, { timeoutMs: 15_000, message: 'the broker never closed the channel' });
    await eventually(() => [long, ...waiting].every((t) => e.results.kinds(t.taskId).includes('succeeded')), { timeoutMs: 30_000 });
    for (const t of [long, ...waiting]) expect(e.results.kinds(t.taskId)).toEqual(['started', 'succeeded']);
    await eventually(async () => {
      const counts = await queueCounts(queue);
      return counts.ready === 0 && counts.unacked === 0;
    }, { timeoutMs: 5000 });
    expect(node.stats().consumers).toBe(3);
  });

  it('re-consumes when the broker cancels its consumer (queue deleted), and says so in its heartbeat', async () => {
    const e = await env();
    const prefix = uniquePrefix();
    const redis = new Redis(inject('redisUrl'));
    cleanups.push(async () => {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
      redis.disconnect();
    });
    const node = testFogNode(e.base, {
      nodeId: 'cancelled',
      heartbeat: { redisUrl: inject('redisUrl'), prefix, intervalMs: 100, ttlMs: 5000, version: 'test' },
    });
    await node.start();
    await eventually(() => node.stats().consumers === 3, { timeoutMs: 10_000 });
    const hashKey = redisKeys(prefix).fogNode('cancelled');
    await eventually(async () => (await redis.hget(hashKey, 'consumers')) === '3', { timeoutMs: 5000 });

    const ch = await connection.createChannel();
    await ch.deleteQueue(e.names.taskQueue('light', 'high'));
    await ch.close();
    await eventually(() => node.stats().consumerRestarts >= 1 && node.stats().consumers === 3, { timeoutMs: 10_000, message: 'the node did not consume again' });

    const task = aTaskMessage({ type: 'noop', priority: 'high' });
    await publishTasks(publisher, e.names, [task]);
    await eventually(() => e.results.kinds(task.taskId).includes('succeeded'), { timeoutMs: 10_000 });
    expect(e.results.kinds(task.taskId)).toEqual(['started', 'succeeded']);
    await eventually(async () => (await redis.hget(hashKey, 'consumers')) === '3', { timeoutMs: 5000 });
  });

  it('keeps a running task running when the broker closes its connection; it finishes once, with no second run', async () => {
    const e = await env();
    const queue = e.names.taskQueue('light', 'normal');
    // Long enough that the checks below (rabbitmqctl is slow on a loaded machine) end while it runs.
    const task = aTaskMessage({ type: 'sleep', payload: { ms: 15_000 } });
    await publishTasks(publisher, e.names, [task]);
    const node = testFogNode(e.base, { nodeId: 'closed-by-broker' });
    await node.start();
    await eventually(() => e.results.kinds(task.taskId).includes('started'), { timeoutMs: 10_000 });
    await eventually(async () => (await queueCounts(queue)).unacked === 0, { timeoutMs: 3000 });
    // One line per connection: its pid (as close_connection takes it), then client_properties with the node's connection_name.
    const lines = (await (cluster as RabbitCluster).ctl(0, 'list_connections', '-q', '--no-table-headers', 'pid', 'client_properties')).split('\n');
    const ours = lines.filter((l) => l.includes('fogsched-fog-node-closed-by-broker'));
    expect(ours).toHaveLength(1);
    await (cluster as RabbitCluster).ctl(0, 'close_connection', (ours[0] as string).split(/\s/)[0] as string, 'test closes the fog node connection');
    await eventually(() => e.results.kinds(task.taskId).includes('succeeded'), { timeoutMs: 20_000 });
    const marker = aTaskMessage({ type: 'noop' });
    await publishTasks(publisher, e.names, [marker]);
    await eventually(() => e.results.kinds(marker.taskId).includes('succeeded'), { timeoutMs: 15_000 });
    expect(e.results.kinds(task.taskId)).toEqual(['started', 'succeeded']);
    expect(await queueCounts(queue)).toEqual({ ready: 0, unacked: 0 });
  });
});

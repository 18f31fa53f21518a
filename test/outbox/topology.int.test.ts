import { randomUUID } from 'node:crypto';
import type { Channel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PRIORITIES } from '../../src/domain/index.js';
import { declarePlacement, declareTopology, placementTopology, topology } from '../../src/outbox/index.js';
import { eventually } from '../helpers/database.js';
import { openTestBroker, testTopology, TIERS, uniquePrefix, type TestBroker } from '../helpers/broker.js';

const prefix = uniquePrefix();
const { topology: t, names } = testTopology(prefix);
let broker: TestBroker;

beforeAll(async () => {
  broker = await openTestBroker();
  broker.track(t);
});
afterAll(async () => {
  await broker?.cleanup();
});

/** Resolves with the error that closes the channel (or rejects the call). */
async function failureOf(run: (ch: Channel) => Promise<unknown>): Promise<Error & { code?: number }> {
  const ch = await broker.scratch();
  try {
    await run(ch);
  } catch (error) {
    return error as Error & { code?: number };
  }
  await ch.close().catch(() => {});
  throw new Error('expected the broker to refuse the operation');
}

describe('broker topology', () => {
  it('declares every exchange, queue and binding, and declaring again is a no-op', async () => {
    const ch = await broker.scratch();
    try {
      await declareTopology(ch, t);
      await declareTopology(ch, t); // same arguments: accepted, nothing changes
      expect(t.queues).toHaveLength(TIERS.length * PRIORITIES.length + 3);
      for (const q of t.queues) {
        const ok = await ch.checkQueue(q.name);
        expect(ok.queue).toBe(q.name);
        expect(ok.messageCount).toBe(0);
      }
      for (const e of t.exchanges) await ch.checkExchange(e.name);
      expect(t.queues.map((q) => q.name)).toEqual(expect.arrayContaining([names.taskQueue('light', 'normal'), names.resultsQueue, names.metricsQueue, names.dlq]));
    } finally {
      await ch.close().catch(() => {});
    }
  });

  it('INGEST_LANES: lane queues bound by lane.<i>, one active consumer each (a second consumer waits and takes over when the first goes)', async () => {
    const lanes = testTopology(`${prefix}lanes_`, { ingestLanes: 3 });
    broker.track(lanes.topology);
    expect(lanes.topology.lanes).toBe(3);
    const ch = await broker.scratch();
    const first = await broker.scratch();
    const second = await broker.scratch();
    try {
      await declareTopology(ch, lanes.topology);
      const q = lanes.names.resultLane(1);
      expect(lanes.topology.queues.find((x) => x.name === q)?.arguments).toMatchObject({ 'x-queue-type': 'quorum', 'x-single-active-consumer': true });
      const got: string[] = [];
      await first.consume(q, (m) => m && got.push(`first:${m.content.toString()}`), { noAck: true });
      const waiting = await second.consume(q, (m) => m && got.push(`second:${m.content.toString()}`), { noAck: true });
      ch.publish(lanes.names.results, lanes.names.resultLaneKey(1), Buffer.from('a'));
      await eventually(async () => (got.length === 1 ? true : null));
      await first.close();
      ch.publish(lanes.names.results, lanes.names.resultLaneKey(1), Buffer.from('b'));
      await eventually(async () => (got.length === 2 ? true : null));
      expect(got).toEqual(['first:a', 'second:b']);
      await second.cancel(waiting.consumerTag);
      // The legacy `task.#` key does not reach a lane: the results queue keeps what old nodes send.
      ch.publish(lanes.names.results, 'task.batch.old-node', Buffer.from('c'));
      await eventually(async () => ((await ch.checkQueue(lanes.names.resultsQueue)).messageCount === 1 ? true : null));
      expect((await ch.checkQueue(q)).messageCount).toBe(0);
    } finally {
      for (const c of [ch, first, second]) await c.close().catch(() => {});
    }
  });

  it('the queues are quorum queues with the declared arguments (a conflicting re-declare is refused)', async () => {
    const q = t.queues.find((x) => x.name === names.taskQueue('light', 'normal'));
    expect(q?.arguments).toMatchObject({ 'x-queue-type': 'quorum', 'x-max-length': 10_000, 'x-overflow': 'reject-publish', 'x-delivery-limit': 3 });
    // Same name, another max length: the broker holds the declared one and refuses.
    const maxLength = await failureOf((ch) => ch.assertQueue(names.taskQueue('light', 'normal'), { durable: true, arguments: { ...q?.arguments, 'x-max-length': 7 } }));
    expect(maxLength.message).toMatch(/PRECONDITION_FAILED/);
    expect(maxLength.message).toMatch(/x-max-length/);
    // A classic queue of that name cannot be declared either: it is a quorum queue.
    const type = await failureOf((ch) => ch.assertQueue(names.dlq, { durable: true, arguments: { 'x-queue-type': 'classic' } }));
    expect(type.message).toMatch(/PRECONDITION_FAILED/);
    expect(type.message).toMatch(/x-queue-type/);
    // A quorum queue must be durable.
    const transient = await failureOf((ch) => ch.assertQueue(names.resultsQueue, { durable: false, arguments: { 'x-queue-type': 'quorum' } }));
    expect(transient.message).toMatch(/PRECONDITION_FAILED/);
    // The refusals changed nothing: the original declaration still stands.
    const ch = await broker.scratch();
    await declareTopology(ch, t);
    await ch.close();
  });

  it('routes a task message by tier.priority to its queue', async () => {
    const ch = await broker.confirmChannel();
    const messageId = randomUUID();
    try {
      ch.publish(names.tasks, 'light.normal', Buffer.from(JSON.stringify({ taskId: messageId })), { persistent: true, messageId, mandatory: true });
      await ch.waitForConfirms();
    } finally {
      await ch.close().catch(() => {});
    }
    const got = await broker.drain(names.taskQueue('light', 'normal'));
    expect(got.map((m) => m.properties.messageId)).toEqual([messageId]);
    expect(JSON.parse(got[0]?.content.toString() ?? '{}')).toEqual({ taskId: messageId });
    // No other task queue got a copy.
    for (const tier of TIERS) for (const p of PRIORITIES) expect(await broker.messageCount(names.taskQueue(tier, p))).toBe(0);
  });

  it('dead-letters a message requeued past the delivery limit to dlq (reason delivery_limit)', async () => {
    const queue = names.taskQueue('medium', 'high');
    const messageId = randomUUID();
    const pub = await broker.confirmChannel();
    pub.publish(names.tasks, 'medium.high', Buffer.from('{"poison":true}'), { persistent: true, messageId, headers: { 'x-task-id': 'poison' } });
    await pub.waitForConfirms();
    await pub.close();

    const ch = await broker.scratch();
    let deliveries = 0;
    try {
      // Take it and hand it back (requeue) until the broker stops giving it out.
      await eventually(
        async () => {
          const msg = await ch.get(queue, { noAck: false });
          if (msg === false) return (await ch.checkQueue(queue)).messageCount === 0 && deliveries > 0;
          deliveries++;
          ch.nack(msg, false, true);
          return false;
        },
        { timeoutMs: 15_000, intervalMs: 20 },
      );
    } finally {
      await ch.close().catch(() => {});
    }
    expect(deliveries).toBe(3 + 1); // the limit allows 3 returns; the 4th return dead-letters it
    const dead = await eventually(async () => {
      const got = await broker.drain(names.dlq);
      return got.length > 0 ? got : null;
    });
    expect(dead).toHaveLength(1);
    const msg = dead[0];
    expect(msg?.properties.messageId).toBe(messageId);
    expect(msg?.content.toString()).toBe('{"poison":true}');
    expect(msg?.properties.headers?.['x-first-death-reason']).toBe('delivery_limit');
    expect(msg?.properties.headers?.['x-first-death-queue']).toBe(queue);
    expect(msg?.properties.headers?.['x-first-death-exchange']).toBe(names.tasks);
    expect(msg?.properties.headers?.['x-task-id']).toBe('poison');
    expect(msg?.fields.exchange).toBe(names.dlx);
    expect(msg?.fields.routingKey).toBe('task.failed');
  });

  it('a full task queue nacks further publishes (reject-publish) on a confirm channel', async () => {
    const small = testTopology(`${prefix}full_`, { taskQueueMaxLength: 5, tiers: ['heavy'] });
    broker.track(small.topology);
    const setup = await broker.scratch();
    await declareTopology(setup, small.topology);
    await setup.close();
    const queue = small.names.taskQueue('heavy', 'low');
    const ch = await broker.confirmChannel();
    const publish = (body: string) =>
      new Promise<'ack' | 'nack'>((resolve) => {
        ch.publish(small.names.tasks, 'heavy.low', Buffer.from(body), { persistent: true, messageId: body }, (error: unknown) => resolve(error ? 'nack' : 'ack'));
      });
    try {
      // One at a time, each confirmed before the next. A quorum queue enforces the
      // limit once it is reached: it takes the message that reaches it, then refuses.
      // (Publishes already in flight when it fills are still taken: the bound is not exact.)
      const outcomes: string[] = [];
      for (let i = 0; i < 9; i++) outcomes.push(await publish(String(i)));
      expect(outcomes.slice(0, 5)).toEqual(['ack', 'ack', 'ack', 'ack', 'ack']);
      expect(outcomes.slice(-3)).toEqual(['nack', 'nack', 'nack']);
      const accepted = outcomes.filter((o) => o === 'ack').length;
      expect(accepted).toBeLessThanOrEqual(6);
      expect(await broker.messageCount(queue)).toBe(accepted);
      // The channel survives the nacks: once there is room again, a publish is confirmed.
      await broker.channel.purgeQueue(queue);
      expect(await eventually(() => publish('late').then((o) => o === 'ack'), { timeoutMs: 5000 })).toBe(true);
    } finally {
      await ch.close().catch(() => {});
    }
    const rest = await broker.drain(queue);
    expect(rest.map((m) => m.content.toString())).toEqual(['late']);
    await broker.drop(small.topology);
  });

  it('FOG_ZONES: the zone queues tasks.<zone>.<tier>.<priority> are part of the topology, with the tier queues\' arguments, bound by <zone>.<tier>.<priority>', () => {
    const withZones = topology({ prefix, tiers: ['light'], taskQueueMaxLength: 10_000, deliveryLimit: 3, metricsQueueMaxLength: 1000, zones: ['site-a', 'site-b'] });
    const tierArgs = withZones.queues.find((q) => q.name === names.taskQueue('light', 'normal'))?.arguments;
    for (const zone of ['site-a', 'site-b']) {
      for (const p of PRIORITIES) {
        const q = withZones.queues.find((x) => x.name === `${prefix}tasks.${zone}.light.${p}`);
        expect(q?.arguments).toEqual(tierArgs);
        expect(withZones.bindings).toContainEqual({ exchange: names.tasks, queue: q?.name, routingKey: `${zone}.light.${p}` });
      }
    }
    expect(withZones.queues).toHaveLength(PRIORITIES.length * 3 + 3);
  });

  it('a placement class with a fallback delay has queues with that TTL: with no consumer each message is dead-lettered, reason expired, at least once', async () => {
    const options = { prefix, tiers: ['light'], taskQueueMaxLength: 10_000, deliveryLimit: 3, metricsQueueMaxLength: 1000 };
    const zone = placementTopology(options, 'ttlzone~fb200', ['light'], ['normal']);
    broker.track({ exchanges: [], ...zone });
    const setup = await broker.scratch();
    await declareTopology(setup, t);
    await declarePlacement(setup, zone);
    await setup.close();
    expect(zone.queues[0]?.arguments).toMatchObject({ 'x-message-ttl': 200, 'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish', 'x-dead-letter-exchange': names.dlx });
    await broker.channel.purgeQueue(names.dlq);
    const ch = await broker.confirmChannel();
    try {
      // One TTL for the whole queue: the head is always the first due, so none waits behind another.
      ch.publish(names.tasks, 'ttlzone~fb200.light.normal', Buffer.from('{"n":1}'), { persistent: true, mandatory: true, messageId: 'ttl-1' });
      ch.publish(names.tasks, 'ttlzone~fb200.light.normal', Buffer.from('{"n":2}'), { persistent: true, mandatory: true, messageId: 'ttl-2' });
      await ch.waitForConfirms();
    } finally {
      await ch.close().catch(() => {});
    }
    const dead: Awaited<ReturnType<typeof broker.drain>> = [];
    await eventually(async () => {
      dead.push(...(await broker.drain(names.dlq)));
      return dead.length >= 2;
    });
    expect(dead.map((m) => m.properties.messageId)).toEqual(['ttl-1', 'ttl-2']);
    expect(dead[0]?.properties.headers?.['x-first-death-reason']).toBe('expired');
    expect(dead[0]?.properties.headers?.['x-first-death-queue']).toBe(`${prefix}tasks.ttlzone~fb200.light.normal`);
    expect(await broker.messageCount(`${prefix}tasks.ttlzone~fb200.light.normal`)).toBe(0);
  });
});

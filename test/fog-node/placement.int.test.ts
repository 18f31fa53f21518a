import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { Redis } from 'ioredis';
import type { ConsumeMessage } from 'amqplib';
import { PLACEMENT_CLASS_HEADER, placementClass, PRIORITIES, type Placement, type TaskEvent, type TaskSpec, type TaskState } from '../../src/domain/index.js';
import { deadLetterCommand } from '../../src/ingest/index.js';
import { createRelay, declareTopology, insertOutbox, outboxRowFor, placementTopology, type Topology, type TopologyOptions } from '../../src/outbox/index.js';
import { redisKeys } from '../../src/infra/redis.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { openTestBroker, uniquePrefix, type TestBroker } from '../helpers/broker.js';
import { collectResults, failOnUnhandledRejections, logger, stopAllNodes, testFogNode, type ResultLog } from './helpers.js';
import { topology, topologyNames } from '../../src/outbox/index.js';

// Placement (issue 20) end to end below the domain: outbox rows as executeTaskCommands writes them
// for a task with a placement, the relay (which declares the class queue and records it in
// Redis), and fog nodes of two zones / with labels consuming what matches them.

failOnUnhandledRejections();

const prefix = uniquePrefix();
const options: TopologyOptions = { prefix, tiers: ['light'], taskQueueMaxLength: 10_000, deliveryLimit: 3, metricsQueueMaxLength: 1000 };
const main = topology(options);
const names = topologyNames(prefix);
const redisPrefix = `t${randomUUID().slice(0, 8)}:`;
const keys = redisKeys(redisPrefix);

let broker: TestBroker;
let tdb: TestDatabase;
let redis: Redis;
let results: ResultLog;
const running: { stop(): Promise<void> }[] = [];
/** Placement classes a test used: their queues are deleted at the end (each quorum queue holds broker file handles). */
const classes = new Set<string>();

beforeAll(async () => {
  broker = await openTestBroker();
  broker.track(main);
  await declareTopology(broker.channel, main);
  tdb = await createTestDatabase('placement');
  redis = new Redis(inject('redisUrl'), { maxRetriesPerRequest: 1 });
  results = await collectResults(broker.url, names);
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.stop()));
  await stopAllNodes();
});
afterAll(async () => {
  await results?.close();
  const placed: Topology = { exchanges: [], bindings: [], queues: [...classes].flatMap((c) => placementTopology(options, c, ['light']).queues) };
  await broker?.drop(placed);
  await broker?.cleanup();
  await tdb?.drop();
  await redis?.del(keys.placementClasses);
  redis?.disconnect();
});

function spec(placement: Placement | null, fallbackAfterMs: number | null = null): TaskSpec {
  const cls = placementClass(placement);
  if (cls) classes.add(cls);
  return {
    taskId: randomUUID(),
    tenant: 'default',
    type: 'echo',
    payload: { value: 'ran' },
    priority: 'normal',
    resources: { cpu: 0.1, memoryMb: 64 },
    tier: 'light',
    maxAttempts: 3,
    timeoutMs: null,
    notBefore: null,
    deadline: null,
    idempotencyKey: null,
    placement,
    fallbackAfterMs,
  };
}

/** Writes the dispatches of attempt 1 of these tasks as the task write does. */
async function dispatch(specs: readonly TaskSpec[]): Promise<void> {
  const at = new Date().toISOString();
  const event: TaskEvent = { type: 'TaskQueued', data: { attempt: 1, tier: 'light', priority: 'normal', availableAt: at, at } };
  const rows = specs.map((s) => outboxRowFor({ spec: s } as unknown as TaskState, event, randomUUID(), names)).filter((r) => r !== null);
  await insertOutbox(rows).execute(tdb.db);
}

function startRelay() {
  const relay = createRelay({
    databaseUrl: tdb.url,
    amqpUrl: broker.url,
    topology: main,
    logger,
    batchSize: 50,
    pollIntervalMs: 100,
    retryMaxMs: 500,
    placement: { topology: options, redisUrl: inject('redisUrl'), redisPrefix },
  });
  running.push(relay);
  void relay.start();
  return relay;
}

function node(id: string, place: { zone?: string; labels?: Record<string, string> }) {
  return testFogNode(
    { amqpUrl: broker.url, topology: main, names },
    {
      nodeId: id,
      zone: place.zone ?? null,
      labels: place.labels ?? {},
      placementRescanMs: 100,
      heartbeat: { redisUrl: inject('redisUrl'), prefix: redisPrefix, intervalMs: 200, ttlMs: 5000, version: 'test' },
    },
  );
}

const idOf = (n: { name: string }) => n.name.replace('fog-node:', '');

/** The node that ran each task (from the result batches). */
function ranBy(taskIds: readonly string[]): Map<string, string> {
  const by = new Map<string, string>();
  for (const b of results.batches) for (const r of b.records) if (r.kind === 'succeeded' && taskIds.includes(r.taskId)) by.set(r.taskId, b.nodeId);
  return by;
}

describe('placement: zone queues', () => {
  it('routes a zone placement to tasks.<zone>.<tier>.<priority>, which only the nodes of that zone consume', async () => {
    const a = node(`site-a-${randomUUID().slice(0, 4)}`, { zone: 'site-a' });
    const b = node(`site-b-${randomUUID().slice(0, 4)}`, { zone: 'site-b' });
    classes.add('site-a').add('site-b');
    await Promise.all([a.start(), b.start()]);
    // Each consumes its tier's 3 queues and its zone's 3, declared when it joined.
    await eventually(() => a.stats().consumers === 6 && b.stats().consumers === 6, { timeoutMs: 10_000 });
    for (const p of PRIORITIES) expect((await broker.channel.checkQueue(names.placementQueue('site-a', 'light', p))).consumerCount).toBe(1);

    const specs = Array.from({ length: 6 }, () => spec({ zone: 'site-a' }));
    await dispatch(specs);
    startRelay();
    const ids = specs.map((s) => s.taskId);
    await eventually(() => ranBy(ids).size === ids.length, { timeoutMs: 15_000 });
    expect(new Set(ranBy(ids).values())).toEqual(new Set([idOf(a)]));
    expect(b.stats().completed).toBe(0);
    // The relay recorded the class queue it published to.
    expect(JSON.parse((await redis.hget(keys.placementClasses, 'site-a.light.normal')) ?? 'null')).toEqual({ zone: 'site-a' });
  });

  it('advertises the zone and labels in the node hash of the membership', async () => {
    const n = node(`site-b-${randomUUID().slice(0, 4)}`, { zone: 'site-b', labels: { camera: 'yes' } });
    classes.add('site-b');
    await n.start();
    const id = idOf(n);
    await eventually(async () => (await redis.hget(keys.fogNode(id), 'zone')) === 'site-b', { timeoutMs: 5000 });
    expect(JSON.parse((await redis.hget(keys.fogNode(id), 'labels')) ?? '{}')).toEqual({ camera: 'yes' });
  });
});

describe('placement: label classes', () => {
  it('a node whose labels match discovers a class the relay recorded and runs its tasks; one whose labels differ never consumes it', async () => {
    const yes = node(`cam-yes-${randomUUID().slice(0, 4)}`, { labels: { camera: 'yes', gpu: 'true' } });
    const no = node(`cam-no-${randomUUID().slice(0, 4)}`, { labels: { camera: 'no' } });
    await Promise.all([yes.start(), no.start()]);
    await eventually(() => yes.stats().consumers === 3 && no.stats().consumers === 3, { timeoutMs: 10_000 });

    const placement = { labels: { camera: 'yes' } };
    const cls = placementClass(placement) as string;
    const specs = Array.from({ length: 4 }, () => spec(placement));
    await dispatch(specs);
    startRelay();
    const ids = specs.map((s) => s.taskId);
    await eventually(() => ranBy(ids).size === ids.length, { timeoutMs: 15_000 });
    const yesId = idOf(yes);
    expect([...ranBy(ids).values()].every((n) => n === yesId)).toBe(true);
    expect(await redis.hget(keys.placementClasses, `${cls}.light.normal`)).toBe(JSON.stringify(placement));
    // Only the matching node consumes the class queue.
    expect((await broker.channel.checkQueue(names.placementQueue(cls, 'light', 'normal'))).consumerCount).toBe(1);
    expect(yes.stats().consumers).toBe(4);
    expect(no.stats().consumers).toBe(3);
  });
});

describe('placement: fallback after fallbackAfterMs', () => {
  it('publishes the dispatch to its class of that fallback delay (queue TTL); with no node of the zone the broker dead-letters it (expired) and ingest reads it as FallBackPlacement', async () => {
    await broker.channel.purgeQueue(names.dlq);
    const s = spec({ zone: 'nowhere' }, 300);
    await dispatch([s]);
    startRelay();
    let dead: ConsumeMessage | undefined;
    await eventually(
      async () => {
        const m = await broker.channel.get(names.dlq, { noAck: true });
        if (m) dead = m as unknown as ConsumeMessage;
        return dead;
      },
      { timeoutMs: 10_000 },
    );
    const headers = dead?.properties.headers ?? {};
    expect(headers['x-first-death-reason']).toBe('expired');
    expect(headers['x-first-death-queue']).toBe(names.placementQueue('nowhere~fb300', 'light', 'normal'));
    expect(headers[PLACEMENT_CLASS_HEADER]).toBe('nowhere~fb300');
    const body = JSON.parse(dead?.content.toString('utf8') ?? 'null');
    expect(body.taskId).toBe(s.taskId);
    const now = new Date().toISOString();
    expect(deadLetterCommand(dead as ConsumeMessage, body, names, now)).toMatchObject({ taskId: s.taskId, command: { type: 'FallBackPlacement', data: { attempt: 1, now } } });
  });

  it('a task message dead-lettered for another reason stays DeadLetterTask', () => {
    const taskId = randomUUID();
    const msg = { properties: { headers: { 'x-first-death-reason': 'delivery_limit', 'x-first-death-queue': names.placementQueue('site-a', 'light', 'normal'), [PLACEMENT_CLASS_HEADER]: 'site-a' } } } as unknown as ConsumeMessage;
    expect(deadLetterCommand(msg, { taskId, attempt: 2 }, names, new Date().toISOString())?.command).toMatchObject({ type: 'DeadLetterTask', data: { attempt: 2, reason: 'delivery-limit' } });
  });
});

describe('placement: Redis down at the relay', () => {
  it('label-class dispatches wait (backed off, unpublished) while zone and plain dispatches go out; nothing is lost', async () => {
    // Nothing listens on port 1: the relay's Redis is never ready.
    const relay = createRelay({
      databaseUrl: tdb.url,
      amqpUrl: broker.url,
      topology: main,
      logger,
      batchSize: 50,
      pollIntervalMs: 100,
      retryMaxMs: 500,
      placement: { topology: options, redisUrl: 'redis://127.0.0.1:1', redisPrefix },
    });
    running.push(relay);
    const labelled = spec({ labels: { redisdown: 'yes' } });
    const zoned = spec({ zone: 'site-rd' });
    const plain = spec(null);
    const labelClass = placementClass({ labels: { redisdown: 'yes' } }) as string;
    classes.add(labelClass).add('site-rd');
    await dispatch([labelled, zoned, plain]);
    void relay.start();
    const published = async (taskId: string) =>
      (await tdb.db.selectFrom('outbox').select(['published_at', 'attempts']).where('stream_id', '=', taskId).executeTakeFirstOrThrow());
    await eventually(async () => (await published(zoned.taskId)).published_at !== null && (await published(plain.taskId)).published_at !== null, { timeoutMs: 15_000 });
    // The label class is found by nodes only through Redis: its dispatch is held back, tried again.
    await eventually(async () => (await published(labelled.taskId)).attempts >= 2, { timeoutMs: 15_000 });
    expect((await published(labelled.taskId)).published_at).toBeNull();
    expect(await broker.messageCount(names.placementQueue('site-rd', 'light', 'normal'))).toBe(1);
  });
});

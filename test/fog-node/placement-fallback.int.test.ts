import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { Redis } from 'ioredis';
import { DEFAULT_TIERS, FALLBACK_AFTER_HEADER, PLACEMENT_CLASS_HEADER, type TaskEvent, type TaskState } from '../../src/domain/index.js';
import { createIngest } from '../../src/ingest/index.js';
import { createRelay, declareTopology, outboxRowFor, placementTopology, topology, topologyNames, type TopologyOptions } from '../../src/outbox/index.js';
import { redisKeys } from '../../src/infra/redis.js';
import { createTaskService, type SubmitInput } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { openTestBroker, uniquePrefix, type TestBroker } from '../helpers/broker.js';
import { failOnUnhandledRejections, logger, stopAllNodes, testFogNode } from './helpers.js';


failOnUnhandledRejections();

const prefix = uniquePrefix();
const options: TopologyOptions = { prefix, tiers: ['light'], taskQueueMaxLength: 10_000, deliveryLimit: 3, metricsQueueMaxLength: 1000 };
const main = topology(options);
const names = topologyNames(prefix);
const redisPrefix = `t${randomUUID().slice(0, 8)}:`;

let broker: TestBroker;
let tdb: TestDatabase;
const running: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  broker = await openTestBroker();
  broker.track(main);
  broker.track({ exchanges: [], bindings: [], queues: [...placementTopology(options, 'site-far', ['light']).queues, ...placementTopology(options, 'site-b', ['light']).queues] });
  await declareTopology(broker.channel, main);
  tdb = await createTestDatabase('placement_fallback');
});
afterEach(async () => {
  await stopAllNodes();
  await Promise.all(running.splice(0).map((r) => r.stop()));
});
afterAll(async () => {
  await broker?.cleanup();
  await tdb?.drop();
  const redis = new Redis(inject('redisUrl'), { maxRetriesPerRequest: 1 });
  await redis.del(redisKeys(redisPrefix).placementClasses);
  redis.disconnect();
});

describe('placement fallback end to end', () => {
  it('TaskPlacementFallback dispatches the same attempt to the tier\'s general queue, without placement headers or TTL', () => {
    const at = new Date().toISOString();
    const state = { spec: { taskId: randomUUID(), tenant: 'default', type: 'echo', payload: null, priority: 'normal', resources: { cpu: 0.1, memoryMb: 64 }, tier: 'light', maxAttempts: 3, timeoutMs: null, notBefore: null, deadline: null, idempotencyKey: null, placement: { zone: 'site-far' }, fallbackAfterMs: 500 } } as unknown as TaskState;
    const fallback = { type: 'TaskPlacementFallback', data: { attempt: 1, afterMs: 500, at } } as unknown as TaskEvent;
    const row = outboxRowFor(state, fallback, randomUUID(), names);
    expect(row?.routingKey).toBe('light.normal');
    expect(row?.headers['x-attempt']).toBe(1);
    expect(row?.headers[PLACEMENT_CLASS_HEADER]).toBeUndefined();
    expect(row?.headers[FALLBACK_AFTER_HEADER]).toBeUndefined();
  });

  it('a task placed in a zone no node serves falls back after fallbackAfterMs (TaskPlacementFallback) and runs on a node of another zone', async () => {
    const service = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });
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
    const ingest = createIngest({ db: tdb.db, amqpUrl: broker.url, topology: main, names, batchSize: 100, flushMs: 5, backoff: { baseMs: 10, factor: 2, maxMs: 100 }, metricsRetentionHours: 24, logger });
    running.push(relay, ingest);
    await relay.start();
    await ingest.start();
    const other = testFogNode({ amqpUrl: broker.url, topology: main, names }, { nodeId: `site-b-${randomUUID().slice(0, 4)}`, zone: 'site-b', labels: {} });
    await other.start();

    const input = { type: 'echo', payload: { value: 'fell back' }, placement: { zone: 'site-far' }, fallbackAfterMs: 300 } as SubmitInput;
    const { task } = await service.submit(input, { tenant: 'default', actor: 'test' });
    const done = await eventually(
      async () => {
        const r = await sql<{ state: string; node_id: string | null }>`SELECT state, node_id FROM task_current WHERE task_id = ${task.taskId}`.execute(tdb.db);
        return r.rows[0]?.state === 'succeeded' ? r.rows[0] : null;
      },
      { timeoutMs: 20_000 },
    );
    expect(done.node_id).toBe(other.name.replace('fog-node:', ''));
    const history = await sql<{ type: string; data: { attempt?: number; afterMs?: number } }>`SELECT type, data FROM events WHERE stream_id = ${task.taskId} ORDER BY stream_version`.execute(tdb.db);
    const types = history.rows.map((r) => r.type);
    expect(types).toEqual(['TaskSubmitted', 'TaskPlacementFallback', 'TaskStarted', 'TaskSucceeded']);
    // 300 rounded up to the next step (FALLBACK_STEPS_MS).
    expect(history.rows[1]?.data).toMatchObject({ attempt: 1, afterMs: 500 });
  });
});

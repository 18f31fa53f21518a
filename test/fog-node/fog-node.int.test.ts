import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ConfirmChannel } from 'amqplib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ResultRecord, TaskMessage } from '../../src/domain/index.js';
import { eventually } from '../helpers/database.js';
import { openTestBroker, uniquePrefix, type TestBroker } from '../helpers/broker.js';
import { declareTopology, type Topology, type TopologyNames } from '../../src/outbox/index.js';
import { aTaskMessage, collectResults, failOnUnhandledRejections, lightTopology, publishTasks, stopAllNodes, testFogNode, type ResultLog } from './helpers.js';

// Fog nodes in this process against the shared broker, each test under its own prefix;
// results are read straight off the `results` queue (the record protocol, no ingest).

failOnUnhandledRejections();

let broker: TestBroker;
let publisher: ConfirmChannel;

beforeAll(async () => {
  broker = await openTestBroker();
  publisher = await broker.confirmChannel();
});
afterEach(stopAllNodes);
afterAll(async () => {
  await stopAllNodes();
  await broker?.cleanup();
});

interface Env {
  readonly topology: Topology;
  readonly names: TopologyNames;
  readonly base: { amqpUrl: string; topology: Topology; names: TopologyNames };
  readonly results: ResultLog;
}

async function env(deliveryLimit = 3): Promise<Env> {
  const { topology, names } = lightTopology(uniquePrefix(), deliveryLimit);
  broker.track(topology);
  await declareTopology(broker.channel, topology);
  const results = await collectResults(broker.url, names);
  cleanups.push(() => results.close());
  return { topology, names, base: { amqpUrl: broker.url, topology, names }, results };
}
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

const finalOf = (results: ResultLog, taskId: string) => results.of(taskId).find((r) => r.kind !== 'started');
const failedError = (r: ResultRecord | undefined) => (r?.kind === 'failed' ? r.error : undefined);

describe('fog node: outputs and errors PostgreSQL can store', () => {
  it('reports an output holding U+0000 as failed output-not-storable (not retryable); the other tasks of the batch succeed', async () => {
    const e = await env();
    const bad = aTaskMessage({ type: 'echo', payload: { value: 1, nul: true } });
    const fine = Array.from({ length: 5 }, () => aTaskMessage({ type: 'echo', payload: { value: 'ok' } }));
    await publishTasks(publisher, e.names, [bad, ...fine]);
    const node = testFogNode(e.base);
    await node.start();
    await eventually(() => [bad, ...fine].every((t) => finalOf(e.results, t.taskId)), { timeoutMs: 10_000 });
    expect(e.results.kinds(bad.taskId)).toEqual(['started', 'failed']);
    expect(failedError(finalOf(e.results, bad.taskId))).toEqual({ code: 'output-not-storable', retryable: false, message: expect.stringContaining('contains U+0000') });
    for (const t of fine) expect(finalOf(e.results, t.taskId)).toMatchObject({ kind: 'succeeded', output: 'ok' });
    // No record the node published carries a U+0000: every batch is storable as jsonb.
    for (const b of e.results.batches) expect(JSON.stringify(b)).not.toContain('\\u0000');
    await node.stop();
    expect(await broker.messageCount(e.names.taskQueue('light', 'normal'))).toBe(0);
    expect(await broker.messageCount(e.names.dlq)).toBe(0);
  });

  it('reports an output larger than FOG_NODE_MAX_OUTPUT_BYTES as failed output-not-storable', async () => {
    const e = await env();
    const big = aTaskMessage({ type: 'echo', payload: { value: 'x'.repeat(3000) } });
    const small = aTaskMessage({ type: 'echo', payload: { value: 'x'.repeat(100) } });
    await publishTasks(publisher, e.names, [big, small]);
    const node = testFogNode(e.base, { maxOutputBytes: 2000 });
    await node.start();
    await eventually(() => finalOf(e.results, big.taskId) && finalOf(e.results, small.taskId), { timeoutMs: 10_000 });
    expect(failedError(finalOf(e.results, big.taskId))).toEqual({ code: 'output-not-storable', retryable: false, message: expect.stringContaining('3002 bytes of JSON, more than this node\'s limit of 2000') });
    expect(finalOf(e.results, small.taskId)?.kind).toBe('succeeded');
  });

  it('strips U+0000 from the message and code of a failed record', async () => {
    const e = await env();
    const task = aTaskMessage({ type: 'fail', payload: { message: 'bad\u0000byte', code: 'c\u0000d', retryable: true } });
    await publishTasks(publisher, e.names, [task]);
    const node = testFogNode(e.base);
    await node.start();
    await eventually(() => finalOf(e.results, task.taskId), { timeoutMs: 10_000 });
    expect(failedError(finalOf(e.results, task.taskId))).toEqual({ message: 'bad\uFFFDbyte', code: 'c\uFFFDd', retryable: true });
  });
});

const builtWorker = fileURLToPath(new URL('../../dist/fog-node/handler-worker.js', import.meta.url));

describe('fog node: a handler that crashes its worker thread', () => {
  it.skipIf(!existsSync(builtWorker))('is reported as failed with code crashed, retryable, and its message acked (no nack, no delivery-limit dead letter)', async (ctx) => {
    if (!existsSync(builtWorker)) ctx.skip(`worker threads run the built code: run npm run build first (${builtWorker} is missing)`);
    const e = await env(1);
    const poison = aTaskMessage({ type: 'crash', payload: { mode: 'exit' } });
    const fine = aTaskMessage({ type: 'noop' });
    await publishTasks(publisher, e.names, [poison, fine]);
    const node = testFogNode(e.base);
    await node.start();
    await eventually(() => finalOf(e.results, poison.taskId) && finalOf(e.results, fine.taskId), { timeoutMs: 15_000 });
    expect(e.results.kinds(poison.taskId)).toEqual(['started', 'failed']);
    expect(failedError(finalOf(e.results, poison.taskId))).toEqual({ code: 'crashed', retryable: true, message: expect.stringContaining('worker thread died') });
    expect(finalOf(e.results, fine.taskId)?.kind).toBe('succeeded');
    expect(node.stats().crashed).toBe(1);
    await node.stop();
    // Acked: not back on its queue, and (delivery limit 1 here) not dead-lettered by the broker either.
    expect(await broker.messageCount(e.names.taskQueue('light', 'normal'))).toBe(0);
    expect(await broker.messageCount(e.names.dlq)).toBe(0);
  });
});

describe('fog node: redeliveries of a run it already has', () => {
  it('runs a (task, attempt) once when its message comes twice, during the run or after it', async () => {
    const e = await env();
    const long = aTaskMessage({ type: 'sleep', payload: { ms: 1500 } });
    const short = aTaskMessage({ type: 'noop' });
    const node = testFogNode(e.base, { slots: 4, prefetch: 8 });
    await node.start();
    // Two messages for one attempt (as a relay that publishes a row twice would send): the second arrives while the first runs.
    await publishTasks(publisher, e.names, [long, long, short]);
    await eventually(() => finalOf(e.results, long.taskId) && finalOf(e.results, short.taskId), { timeoutMs: 10_000 });
    // And once more after both finished.
    await publishTasks(publisher, e.names, [short, long]);
    const marker = aTaskMessage({ type: 'noop' });
    await publishTasks(publisher, e.names, [marker]);
    await eventually(() => finalOf(e.results, marker.taskId), { timeoutMs: 10_000 });
    await eventually(async () => (await broker.messageCount(e.names.taskQueue('light', 'normal'))) === 0 && node.stats().buffered === 0 && node.stats().inFlight === 0);
    expect(e.results.kinds(long.taskId)).toEqual(['started', 'succeeded']);
    expect(e.results.kinds(short.taskId)).toEqual(['started', 'succeeded']);
    await node.stop();
    expect(await broker.messageCount(e.names.taskQueue('light', 'normal'))).toBe(0);
  });
});

describe('fog node: graceful restarts', () => {
  it('20 buffered sleep tasks, four graceful restarts: buffered ones go back with requeue, running ones past the grace are reported returned, none is acked without a record', async () => {
    const e = await env();
    const queue = e.names.taskQueue('light', 'normal');
    const tasks = Array.from({ length: 20 }, () => aTaskMessage({ type: 'sleep', payload: { ms: 120_000 } }));
    await publishTasks(publisher, e.names, tasks);
    for (let restart = 1; restart <= 4; restart++) {
      const node = testFogNode(e.base, { nodeId: 'restarted', slots: 2, prefetch: 20, graceMs: 200 });
      await node.start();
      // Everything still on the queue is with the node: two run, the rest wait in its buffer.
      await eventually(async () => node.stats().inFlight === 2 && (await broker.messageCount(queue)) === 0, { timeoutMs: 10_000 });
      await node.stop();
      expect(e.results.records.filter((r) => r.kind === 'returned')).toHaveLength(2 * restart);
    }
    const byTask = new Map<string, string[]>(tasks.map((t) => [t.taskId, e.results.kinds(t.taskId)]));
    const returned = tasks.filter((t) => byTask.get(t.taskId)?.includes('returned'));
    const queued = (await broker.drain(queue)).map((m) => (JSON.parse(m.content.toString()) as TaskMessage).taskId);
    const deadLettered = (await broker.drain(e.names.dlq)).map((m) => ({
      taskId: (JSON.parse(m.content.toString()) as TaskMessage).taskId,
      reason: String(m.properties.headers?.['x-first-death-reason']),
    }));
    console.log(`${returned.length} returned by a record, ${queued.length} still queued, ${deadLettered.length} dead-lettered by the broker's delivery limit`);
    // Each task is in exactly one place: given back by a record, still queued, or dead-lettered by the broker.
    expect([...returned.map((t) => t.taskId), ...queued, ...deadLettered.map((d) => d.taskId)].sort()).toEqual(tasks.map((t) => t.taskId).sort());
    expect(returned).toHaveLength(8);
    for (const t of returned) {
      expect(byTask.get(t.taskId)).toEqual(['started', 'returned']);
      expect(e.results.of(t.taskId)[1]).toMatchObject({ kind: 'returned', attempt: 1, reason: 'node-shutdown' });
    }
    // The broker dead-letters only tasks that never started here: it counted the node's requeues of
    // buffered deliveries (RabbitMQ < 4.3); ingest gives those back (TaskReturned, reason delivery-limit).
    for (const d of deadLettered) {
      expect(byTask.get(d.taskId)).toEqual([]);
      expect(d.reason).toBe('delivery_limit');
    }
    for (const id of queued) expect(byTask.get(id)).toEqual([]);
  });
});

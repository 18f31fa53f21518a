import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ConfirmChannel } from 'amqplib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ResultRecord, TaskMessage } from '../../src/domain/index.js';
import { eventually } from '../helpers/database.js';
import { openTestBroker, uniquePrefix, type TestBroker } from '../helpers/broker.js';
import { pino } from 'pino';
import { declareTopology, type Topology, type TopologyNames } from '../../src/outbox/index.js';
import { aTaskMessage, collectResults, failOnUnhandledRejections, lightTopology, publishTasks, stopAllNodes, testFogNode, type ResultLog } from './helpers.js';

// A fog node running a handlers module written with the SDK (defineHandlers), against the shared
// broker; results are read straight off the `results` queue. Worker threads run the built code.

const builtWorker = fileURLToPath(new URL('../../dist/fog-node/handler-worker.js', import.meta.url));
const built = existsSync(builtWorker);
if (!built) console.warn(`skipping the SDK fog node tests: worker threads run the built code; run npm run build first (${builtWorker} is missing)`);
const handlersModule = fileURLToPath(new URL('../worker/fixtures/sdk-handlers.mjs', import.meta.url));

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
  readonly names: TopologyNames;
  readonly base: { amqpUrl: string; topology: Topology; names: TopologyNames };
  readonly results: ResultLog;
}
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});
async function env(): Promise<Env> {
  const { topology, names } = lightTopology(uniquePrefix());
  broker.track(topology);
  await declareTopology(broker.channel, topology);
  const results = await collectResults(broker.url, names);
  cleanups.push(() => results.close());
  return { names, base: { amqpUrl: broker.url, topology, names }, results };
}

const finalOf = (results: ResultLog, taskId: string) => results.of(taskId).find((r) => r.kind === 'succeeded' || r.kind === 'failed');
const errorOf = (r: ResultRecord | undefined) => (r?.kind === 'failed' ? r.error : undefined);
const sdkTask = (type: string, payload: unknown, over: Partial<TaskMessage> = {}) => aTaskMessage({ type, payload, memoryMb: 64, maxAttempts: 3, ...over });

describe.skipIf(!built)('fog node with a defineHandlers module', () => {
  it('runs email.send (a dotted type name) with its ctx; the module runs in worker threads only; progress precedes the outcome', async () => {
    const e = await env();
    const first = sdkTask('email.send', { to: 'a@example.org' }, { attempt: 2, tenant: 'acme' });
    const legacy = sdkTask('legacy', null);
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 512, progressMinIntervalMs: 0 });
    await node.start();
    await publishTasks(publisher, e.names, [first, legacy]);
    await eventually(() => finalOf(e.results, first.taskId) && finalOf(e.results, legacy.taskId), { timeoutMs: 20_000 });
    expect(finalOf(e.results, first.taskId)).toMatchObject({
      kind: 'succeeded',
      output: { id: `${first.taskId}/2`, attempt: 2, maxAttempts: 3, tenant: 'acme', type: 'email.send', tier: 'light', loadedInMainThread: false },
    });
    // Interval 0: every report goes out, in order, between started and succeeded.
    expect(e.results.kinds(first.taskId)).toEqual(['started', 'progress', 'progress', 'progress', 'succeeded']);
    expect(e.results.of(first.taskId).flatMap((r) => (r.kind === 'progress' ? [[r.fraction, r.message]] : []))).toEqual([
      [0.25, 'rendered'],
      [0.5, 'connected'],
      [1, 'sent'],
    ]);
    expect(finalOf(e.results, legacy.taskId)).toMatchObject({ kind: 'succeeded', output: { legacy: true, attempt: 1 } });
    // The main thread never imported the module (its top level counts its loads on globalThis).
    expect((globalThis as { __sdkFixtureLoads?: number }).__sdkFixtureLoads).toBeUndefined();
  });

  it('passes a task message’s dependencies to the handler as ctx.dependencies (and {} without)', async () => {
    const e = await env();
    const dep = '00000000-0000-4000-8000-0000000000d2';
    const withDeps = sdkTask('deps.echo', null, { dependencies: { [dep]: { state: 'failed', output: null } }, dependenciesTruncated: true });
    const without = sdkTask('deps.echo', null);
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 512 });
    await node.start();
    await publishTasks(publisher, e.names, [withDeps, without]);
    await eventually(() => finalOf(e.results, withDeps.taskId) && finalOf(e.results, without.taskId), { timeoutMs: 20_000 });
    expect(finalOf(e.results, withDeps.taskId)).toMatchObject({ kind: 'succeeded', output: { dependencies: { [dep]: { state: 'failed', output: null } }, truncated: true } });
    expect(finalOf(e.results, without.taskId)).toMatchObject({ kind: 'succeeded', output: { dependencies: {}, truncated: false } });
  });

  it('writes the handler’s ctx.log lines to the node’s log, at their level, bound to task id and attempt', async () => {
    const e = await env();
    const lines: Record<string, unknown>[] = [];
    const nodeLogger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    const task = sdkTask('email.send', { to: 'log@example.org' }, { attempt: 2 });
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 512, logger: nodeLogger });
    await node.start();
    await publishTasks(publisher, e.names, [task]);
    await eventually(() => finalOf(e.results, task.taskId), { timeoutMs: 20_000 });
    await eventually(() => lines.some((l) => l.msg === 'sending email'), { timeoutMs: 5000 });
    expect(lines.find((l) => l.msg === 'sending email')).toMatchObject({ level: 30, source: 'handler', taskId: task.taskId, attempt: 2, to: 'log@example.org', role: 'fog-node' });
  });

  it('refuses to start when the handlers module fails to load, with its error', async () => {
    const e = await env();
    const broken = fileURLToPath(new URL('../worker/fixtures/broken-handlers.mjs', import.meta.url));
    const node = testFogNode(e.base, { handlersModule: broken, tierMemoryMb: 512 });
    await expect(node.start()).rejects.toThrow(/handlers module .*broken-handlers\.mjs failed to load: TypeError: cannot reach the template store/);
  });

  it('coalesces progress: fewer records than reports, the last (1.0) always sent, before the outcome', async () => {
    const e = await env();
    const task = sdkTask('progress.many', { steps: 40, stepMs: 10 });
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 512, progressMinIntervalMs: 150 });
    await node.start();
    await publishTasks(publisher, e.names, [task]);
    await eventually(() => finalOf(e.results, task.taskId), { timeoutMs: 20_000 });
    const kinds = e.results.kinds(task.taskId);
    const progress = e.results.of(task.taskId).filter((r): r is Extract<ResultRecord, { kind: 'progress' }> => r.kind === 'progress');
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(progress.length).toBeLessThan(40);
    expect(progress.at(-1)).toMatchObject({ fraction: 1, message: 'step 40 of 40' });
    expect(kinds.at(-1)).toBe('succeeded');
    expect(kinds.indexOf('succeeded')).toBe(kinds.length - 1);
    const fractions = progress.map((r) => r.fraction);
    expect([...fractions].sort((a, b) => a - b)).toEqual(fractions);
  });

  it('keeps the error class name, message, code and retryable of a handler error across the thread boundary', async () => {
    const e = await env();
    const validation = sdkTask('errors.validation', {});
    const limited = sdkTask('email.send', { to: 'x', failUntil: 2 });
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 512 });
    await node.start();
    await publishTasks(publisher, e.names, [validation, limited]);
    await eventually(() => finalOf(e.results, validation.taskId) && finalOf(e.results, limited.taskId), { timeoutMs: 20_000 });
    expect(errorOf(finalOf(e.results, validation.taskId))).toEqual({ name: 'ValidationError', message: 'no such mailbox', code: 'bad_address', retryable: false });
    expect(errorOf(finalOf(e.results, limited.taskId))).toEqual({ name: 'RateLimitedError', message: 'rate limited on attempt 1', code: 'rate_limited', retryable: true });
  });

  it('refuses a task larger than its tier with too-large-for-tier (no start, not retryable)', async () => {
    const e = await env();
    const big = sdkTask('memory.hold', { mb: 1 }, { memoryMb: 2048 });
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 512 });
    await node.start();
    await publishTasks(publisher, e.names, [big]);
    await eventually(() => finalOf(e.results, big.taskId), { timeoutMs: 20_000 });
    expect(e.results.kinds(big.taskId)).toEqual(['failed']);
    expect(errorOf(finalOf(e.results, big.taskId))).toEqual({ code: 'too-large-for-tier', retryable: false, message: expect.stringContaining('asks 2048 MB') });
    await node.stop();
    expect(await broker.messageCount(e.names.taskQueue('light', 'normal'))).toBe(0);
  });

  it('records a thread killed at its heap limit as out-of-memory (not retryable), not a generic crash', async () => {
    const e = await env();
    const hog = sdkTask('memory.hold', { mb: 400 }, { memoryMb: 64 });
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 512 });
    await node.start();
    await publishTasks(publisher, e.names, [hog]);
    await eventually(() => finalOf(e.results, hog.taskId), { timeoutMs: 30_000 });
    expect(errorOf(finalOf(e.results, hog.taskId))).toEqual({ code: 'out-of-memory', retryable: false, message: expect.stringContaining('heap limit of 64 MB') });
    expect(node.stats().crashed).toBe(1);
  });

  it('runs a 700 MB task on a node whose tier has 1024 MB: its thread gets a 700 MB heap and it holds 500 MB without crashing', async () => {
    const e = await env();
    const large = sdkTask('memory.hold', { mb: 500 }, { memoryMb: 700 });
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 1024 });
    await node.start();
    await publishTasks(publisher, e.names, [large]);
    await eventually(() => finalOf(e.results, large.taskId), { timeoutMs: 60_000 });
    expect(finalOf(e.results, large.taskId)).toMatchObject({ kind: 'succeeded', output: { heldMb: 500 } });
  });

  it('keeps the heaps of running thread tasks within the tier memory: two 400 MB tasks on a 512 MB tier run one after the other', async () => {
    const e = await env();
    const a = sdkTask('memory.hold', { mb: 5 }, { memoryMb: 400 });
    const b = sdkTask('memory.hold', { mb: 5 }, { memoryMb: 400 });
    const node = testFogNode(e.base, { handlersModule, tierMemoryMb: 512, slots: 4, prefetch: 4 });
    await node.start();
    await publishTasks(publisher, e.names, [a, b]);
    await eventually(() => finalOf(e.results, a.taskId) && finalOf(e.results, b.taskId), { timeoutMs: 30_000 });
    const [firstDone, second] = [a, b]
      .map((t) => ({ started: e.results.of(t.taskId).find((r) => r.kind === 'started')?.at as string, ended: finalOf(e.results, t.taskId)?.at as string }))
      .sort((x, y) => Date.parse(x.started) - Date.parse(y.started));
    expect(Date.parse(second?.started as string)).toBeGreaterThanOrEqual(Date.parse(firstDone?.ended as string));
  });
});

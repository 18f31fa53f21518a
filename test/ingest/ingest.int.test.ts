import { randomUUID } from 'node:crypto';
import type { ConfirmChannel, Options } from 'amqplib';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TIERS, laneOf, MAX_RETURNS, RETURNS_HEADER, type NodeMetricSample, type ResultBatch, type ResultRecord, type TaskMessage } from '../../src/domain/index.js';
import { createPostgres } from '../../src/infra/postgres.js';
import { createLogger } from '../../src/infra/logger.js';
import { createRedis } from '../../src/infra/redis.js';
import { createIngest, type IngestOptions } from '../../src/ingest/index.js';
import { declareTopology } from '../../src/outbox/index.js';
import { createTaskService, type SubmitInput, type TaskService } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { openTestBroker, testTopology, uniquePrefix, type TestBroker } from '../helpers/broker.js';

const prefix = uniquePrefix();
const { topology: t, names } = testTopology(prefix);
const logger = createLogger(process.env.INGEST_LOG ?? 'silent');
const caller = { tenant: 'default', actor: 'test' };

let broker: TestBroker;
let pub: ConfirmChannel;
let tdb: TestDatabase;
let service: TaskService;
const running: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  broker = await openTestBroker();
  broker.track(t);
  await declareTopology(broker.channel, t);
  pub = await broker.confirmChannel();
  tdb = await createTestDatabase('ingest');
  service = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });
});
afterEach(async () => {
  // A test that leaves an ingest consuming would take the next test's messages.
  await Promise.all(running.splice(0).map((r) => r.stop()));
});
afterAll(async () => {
  await pub?.close().catch(() => {});
  await broker?.cleanup();
  await tdb?.drop();
});

function startIngest(overrides: Partial<IngestOptions> = {}) {
  const ingest = createIngest({
    db: tdb.db,
    amqpUrl: broker.url,
    topology: t,
    names,
    batchSize: 100,
    flushMs: 5,
    backoff: { baseMs: 10, factor: 2, maxMs: 100 },
    metricsRetentionHours: 24,
    logger,
    ...overrides,
  });
  running.push(ingest);
  void ingest.start();
  return ingest;
}

async function submit(n: number, input: SubmitInput = { type: 'noop' }): Promise<string[]> {
  return (await service.submitBatch(Array.from({ length: n }, () => input), caller)).map((r) => r.task.taskId);
}

async function publish(exchange: string, routingKey: string, content: string | object, options: Options.Publish = {}): Promise<string> {
  const messageId = options.messageId ?? randomUUID();
  pub.publish(exchange, routingKey, Buffer.from(typeof content === 'string' ? content : JSON.stringify(content)), { persistent: true, contentType: 'application/json', messageId, ...options });
  await pub.waitForConfirms();
  return messageId;
}

const publishResults = (records: ResultRecord[], options: Options.Publish = {}) =>
  publish(names.results, 'task.batch.n1', { nodeId: 'n1', tier: 'light', records } satisfies ResultBatch, options);

interface Current {
  state: string;
  attempt: number;
  node_id: string | null;
  output: unknown;
  failure_reason: string | null;
  last_error: { code: string } | null;
}
async function current(taskId: string): Promise<Current | undefined> {
  const r = await sql<Current>`SELECT state, attempt, node_id, output, failure_reason, last_error FROM task_current WHERE task_id = ${taskId}::uuid`.execute(tdb.db);
  return r.rows[0];
}
const stateIs = (taskId: string, state: string) => async () => ((await current(taskId))?.state === state ? true : null);

async function history(taskId: string): Promise<{ type: string; state: string; attempt: number }[]> {
  const r = await sql<{ type: string; state: string; attempt: number }>`SELECT type, state, attempt FROM task_history WHERE task_id = ${taskId}::uuid ORDER BY version`.execute(tdb.db);
  return r.rows;
}

async function eventData<T>(taskId: string, type: string): Promise<T[]> {
  const r = await sql<{ data: T }>`SELECT data FROM events WHERE stream_id = ${taskId} AND type = ${type} ORDER BY stream_version`.execute(tdb.db);
  return r.rows.map((row) => row.data);
}

async function retryScheduled(taskId: string): Promise<{ at: string; availableAt: string; delayMs: number }> {
  const [data] = await eventData<{ at: string; availableAt: string; delayMs: number }>(taskId, 'TaskRetryScheduled');
  if (!data) throw new Error(`no TaskRetryScheduled for ${taskId}`);
  return data;
}

async function eventCount(taskId: string, type: string): Promise<number> {
  const r = await sql<{ n: number }>`SELECT count(*)::int AS n FROM events WHERE stream_id = ${taskId} AND type = ${type}`.execute(tdb.db);
  return r.rows[0]?.n ?? 0;
}

const queuesDrained = async () => {
  for (const q of [names.resultsQueue, names.metricsQueue, names.dlq]) if ((await broker.messageCount(q)) !== 0) return null;
  return true;
};

const at = (offsetMs = 0) => new Date(Date.now() + offsetMs).toISOString();

describe('ingest', () => {
  it('applies started and succeeded results: task_current and task_history follow', async () => {
    const [a, b] = (await submit(2, { type: 'noop', payload: { big: 'x'.repeat(5000) }, deadline: '2099-01-01T00:00:00.000Z' })) as [string, string];
    const fixed = `SELECT tenant, type, tier, priority, max_attempts, spec, deadline, submitted_at, seq FROM task_current WHERE task_id = ANY($1::uuid[]) ORDER BY task_id`;
    const before = (await tdb.pool.query(fixed, [[a, b]])).rows;
    const ingest = startIngest();
    const startedAt = at();
    await publishResults([
      { kind: 'started', taskId: a, attempt: 1, at: startedAt },
      { kind: 'started', taskId: b, attempt: 1, at: startedAt },
    ]);
    await eventually(async () => (await stateIs(a, 'running')()) && (await stateIs(b, 'running')()));
    expect(await current(a)).toMatchObject({ state: 'running', attempt: 1, node_id: 'n1' });

    await publishResults([
      { kind: 'succeeded', taskId: a, attempt: 1, startedAt, at: at(5), durationMs: 5, output: { sum: 3 } },
      { kind: 'succeeded', taskId: b, attempt: 1, startedAt, at: at(5), durationMs: 5, output: null },
    ]);
    await eventually(async () => (await stateIs(a, 'succeeded')()) && (await stateIs(b, 'succeeded')()));
    expect(await current(a)).toMatchObject({ state: 'succeeded', node_id: 'n1', output: { sum: 3 } });
    expect(await history(a)).toEqual([
      { type: 'TaskSubmitted', state: 'queued', attempt: 1 },
      { type: 'TaskStarted', state: 'running', attempt: 1 },
      { type: 'TaskSucceeded', state: 'succeeded', attempt: 1 },
    ]);
    expect(ingest.stats()).toMatchObject({ messages: 2, duplicates: 0, rejected: 0 });
    expect(await queuesDrained()).toBe(true);
    // An update sends placeholders for the columns fixed at the submit (the spec and its payload): they keep their values.
    expect((await tdb.pool.query(fixed, [[a, b]])).rows).toEqual(before);
    expect(before[0].spec.payload.big).toHaveLength(5000);
  });

  it('an idle ingest applies a lone result at once (flushMs), not after its idle wait', async () => {
    const tasks = await submit(5);
    const ingest = startIngest();
    await eventually(async () => (await broker.channel.checkQueue(names.resultsQueue)).consumerCount === 1);
    // One result at a time, each waited for: the way a quiet system sees them.
    const started = Date.now();
    for (const task of tasks) {
      await publishResults([{ kind: 'started', taskId: task, attempt: 1, at: at() }]);
      await eventually(stateIs(task, 'running'), { intervalMs: 10 });
    }
    const elapsed = Date.now() - started;
    expect(ingest.stats()).toMatchObject({ batches: 5, messages: 5 });
    // Each within a few ms of flushMs; a second's idle wait each would take ~5 s.
    expect(elapsed).toBeLessThan(2000);
  });

  it('a redelivered message and a second copy of the same records cause no second terminal event', async () => {
    const [task] = (await submit(1)) as [string];
    const ingest = startIngest();
    const startedAt = at();
    const records: ResultRecord[] = [
      { kind: 'started', taskId: task, attempt: 1, at: startedAt },
      { kind: 'succeeded', taskId: task, attempt: 1, startedAt, at: at(1), durationMs: 1, output: 'first' },
    ];
    const messageId = await publishResults(records);
    await eventually(stateIs(task, 'succeeded'));
    // The same message again (a redelivery: same id), then the same records under a new id
    // (a node that re-sent its batch), one with another output.
    await publishResults(records, { messageId });
    const other = await publishResults([{ ...records[1], output: 'second' } as ResultRecord]);
    await eventually(() => (ingest.stats().messages === 3 ? true : null));
    expect(ingest.stats().duplicates).toBe(1);
    const inbox = await sql<{ message_id: string }>`SELECT message_id FROM inbox WHERE message_id IN (${messageId}, ${other})`.execute(tdb.db);
    expect(inbox.rows.map((r) => r.message_id).sort()).toEqual([messageId, other].sort());
    expect(await eventCount(task, 'TaskSucceeded')).toBe(1);
    expect(await eventCount(task, 'TaskStarted')).toBe(1);
    expect((await history(task)).filter((h) => h.type === 'TaskSucceeded')).toHaveLength(1);
    expect(await current(task)).toMatchObject({ state: 'succeeded', output: 'first' });
    expect(await queuesDrained()).toBe(true);
  });

  it('a retryable failure schedules a retry: a new dispatch row due after the backoff', async () => {
    const [byDefault] = (await submit(1)) as [string];
    const [ownBackoff] = (await submit(1, { type: 'noop', retry: { baseMs: 60_000, factor: 2, maxMs: 120_000 } })) as [string];
    const [fatal] = (await submit(1)) as [string];
    startIngest();
    const startedAt = at();
    const failedAt = at(2);
    const error = { message: 'boom', code: 'E_BOOM', retryable: true };
    await publishResults([
      { kind: 'failed', taskId: byDefault, attempt: 1, startedAt, at: failedAt, durationMs: 2, error },
      { kind: 'failed', taskId: ownBackoff, attempt: 1, startedAt, at: failedAt, durationMs: 2, error },
      { kind: 'failed', taskId: fatal, attempt: 1, startedAt, at: failedAt, durationMs: 2, error: { ...error, retryable: false } },
    ]);
    await eventually(async () => (await stateIs(ownBackoff, 'retrying')()) && (await stateIs(fatal, 'failed')()));
    expect(await current(byDefault)).toMatchObject({ state: 'retrying', attempt: 2, node_id: null, last_error: { code: 'E_BOOM' } });
    expect((await history(byDefault)).map((h) => h.type)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskAttemptFailed', 'TaskRetryScheduled']);

    const rows = await sql<{ stream_id: string; attempt: number; available_at: Date; published_at: Date | null; in_future: boolean; body: TaskMessage }>`
      SELECT stream_id, (body->>'attempt')::int AS attempt, available_at, published_at, available_at > now() AS in_future, body
        FROM outbox WHERE stream_id IN (${byDefault}, ${ownBackoff}, ${fatal}) ORDER BY id`.execute(tdb.db);
    const retryOf = (id: string) => rows.rows.find((r) => r.stream_id === id && r.attempt === 2);
    // The ingest's backoff {10, 2, 100}: attempt 1 waits 5..10 ms (equal jitter) after the ingest saw the failure.
    const decidedAt = Date.parse((await retryScheduled(byDefault)).at);
    const delay = (retryOf(byDefault)?.available_at.getTime() ?? 0) - decidedAt;
    expect(delay).toBeGreaterThanOrEqual(5);
    expect(delay).toBeLessThanOrEqual(10);
    // The task's own backoff wins: 30..60 s away, so still in the future now.
    expect(retryOf(ownBackoff)).toMatchObject({ in_future: true, published_at: null });
    expect(retryOf(ownBackoff)?.body).toMatchObject({ taskId: ownBackoff, attempt: 2, type: 'noop' });
    const ownDelay = (retryOf(ownBackoff)?.available_at.getTime() ?? 0) - Date.parse((await retryScheduled(ownBackoff)).at);
    expect(ownDelay).toBeGreaterThanOrEqual(30_000);
    expect(ownDelay).toBeLessThanOrEqual(60_000);
    // A non-retryable error ends the task: no retry row.
    expect(retryOf(fatal)).toBeUndefined();
    expect(await current(fatal)).toMatchObject({ state: 'failed', failure_reason: 'non-retryable' });
    expect(rows.rows).toHaveLength(5);
  });

  it('stores a node metrics sample', async () => {
    startIngest();
    const sample: NodeMetricSample = { nodeId: `n-${prefix}`, tier: 'light', at: at(), cpu: 0.25, rssMb: 123.5, inFlight: 2, completed: 10, failed: 1 };
    await publish(names.metrics, 'metrics.node.n1', sample);
    const row = await eventually(async () => {
      const r = await sql<{ node_id: string; tier: string; at: Date; cpu: number; rss_mb: number; in_flight: number; completed: number; failed: number }>`
        SELECT node_id, tier, at, cpu, rss_mb, in_flight, completed, failed FROM node_metrics WHERE node_id = ${sample.nodeId}`.execute(tdb.db);
      return r.rows[0];
    });
    expect(row).toEqual({ node_id: sample.nodeId, tier: 'light', at: new Date(sample.at), cpu: 0.25, rss_mb: 123.5, in_flight: 2, completed: 10, failed: 1 });
    expect(await eventually(queuesDrained)).toBe(true);
  });

  it('a malformed result message is recorded as MessageDeadLettered and does not block the others', async () => {
    const [task] = (await submit(1)) as [string];
    // All published before the ingest starts, so they arrive (and are applied) as one batch.
    const bad = await publish(names.results, 'task.batch.n1', 'not json');
    const wrong = await publishResults([{ kind: 'exploded', taskId: task, attempt: 1, at: at() } as unknown as ResultRecord]);
    await publishResults([{ kind: 'started', taskId: task, attempt: 1, at: at() }]);
    const ingest = startIngest();
    await eventually(stateIs(task, 'running'));
    const dead = await eventually(async () => {
      const r = await sql<{ stream_id: string; data: { messageId: string; exchange: string; routingKey: string; body: string } }>`
        SELECT stream_id, data FROM events WHERE type = 'MessageDeadLettered' AND stream_id IN (${`message:${bad}`}, ${`message:${wrong}`}) ORDER BY position`.execute(tdb.db);
      return r.rows.length === 2 ? r.rows : null;
    });
    expect(dead[0]).toMatchObject({ stream_id: `message:${bad}`, data: { messageId: bad, exchange: names.results, routingKey: 'task.batch.n1', body: 'not json' } });
    expect(dead[1]?.data.body).toContain('exploded');
    expect(ingest.stats()).toMatchObject({ rejected: 2, messages: 3 });
    // Nothing is left behind or redelivered: all three were acked.
    expect(await eventually(queuesDrained)).toBe(true);
    expect(await eventCount(task, 'TaskStarted')).toBe(1);
  });

  it('a message that makes the batch transaction fail is set aside alone and recorded; the rest of its batch is applied', async () => {
    const [task] = (await submit(1)) as [string];
    // Passes the shape check but PostgreSQL refuses it (in_flight is an int column): a permanent error.
    const poison = await publish(names.metrics, 'metrics.node.n1', { nodeId: `poison-${prefix}`, tier: 'light', at: at(), cpu: 0, rssMb: 1, inFlight: 'many', completed: 0, failed: 0 });
    await publishResults([{ kind: 'started', taskId: task, attempt: 1, at: at() }]);
    const ingest = startIngest();
    await eventually(stateIs(task, 'running'));
    await eventually(() => ingest.stats().rejected === 1);
    expect(await eventually(queuesDrained)).toBe(true);
    // Setting it aside is itself recorded, in the same transaction as its inbox entry.
    const dead = await sql<{ data: { messageId: string; reason: string; body: string } }>`
      SELECT data FROM events WHERE stream_id = ${`message:${poison}`} AND type = 'MessageDeadLettered'`.execute(tdb.db);
    expect(dead.rows).toHaveLength(1);
    expect(dead.rows[0]?.data).toMatchObject({ messageId: poison, body: expect.stringContaining('"inFlight":"many"') as unknown });
    expect(dead.rows[0]?.data.reason).toMatch(/invalid input syntax/);
    const inbox = await sql<{ n: number }>`SELECT count(*)::int AS n FROM inbox WHERE message_id = ${poison}`.execute(tdb.db);
    expect(inbox.rows[0]?.n).toBe(1);
    const metrics = await sql<{ n: number }>`SELECT count(*)::int AS n FROM node_metrics WHERE node_id = ${`poison-${prefix}`}`.execute(tdb.db);
    expect(metrics.rows[0]?.n).toBe(0);
    // The ingest goes on: the next message is applied.
    await publishResults([{ kind: 'succeeded', taskId: task, attempt: 1, startedAt: at(), at: at(1), durationMs: 1, output: null }]);
    await eventually(stateIs(task, 'succeeded'));
    expect(ingest.stats().retries).toBe(0);
  });

  /** Puts a task's dispatch row on its queue and requeues it until the broker dead-letters it (delivery limit 3). */
  async function requeuePastDeliveryLimit(taskId: string, until: () => Promise<unknown>) {
    const row = await latestDispatch(taskId);
    await publish(names.tasks, 'light.normal', row.body, { messageId: row.message_id, headers: row.headers });
    const ch = await broker.scratch();
    try {
      await eventually(
        async () => {
          const msg = await ch.get(names.taskQueue('light', 'normal'), { noAck: false });
          if (msg) ch.nack(msg, false, true);
          return msg === false && (await until());
        },
        { timeoutMs: 15_000, intervalMs: 20 },
      );
    } finally {
      await ch.close().catch(() => {});
    }
  }

  async function latestDispatch(taskId: string) {
    const r = await sql<{ message_id: string; body: TaskMessage; headers: Record<string, unknown> }>`
      SELECT message_id, body, headers FROM outbox WHERE stream_id = ${taskId} AND exchange = ${names.tasks} ORDER BY id DESC LIMIT 1`.execute(tdb.db);
    if (!r.rows[0]) throw new Error(`no dispatch row for ${taskId}`);
    return r.rows[0];
  }

  it('a result message the broker dead-lettered (a quorum queue delivery limit: 20 by default on RabbitMQ 4.x) is applied like any result, once', async () => {
    const [task] = (await submit(1)) as [string];
    const ingest = startIngest();
    const records: ResultRecord[] = [
      { kind: 'started', taskId: task, attempt: 1, at: at() },
      { kind: 'succeeded', taskId: task, attempt: 1, startedAt: at(), at: at(5), durationMs: 5, output: { ok: 1 } },
    ];
    const headers = { 'x-first-death-queue': names.resultLane(2), 'x-first-death-reason': 'delivery_limit' };
    const id = await publish(names.dlx, 'result.rejected', { nodeId: 'n1', tier: 'light', records } satisfies ResultBatch, { headers });
    await eventually(stateIs(task, 'succeeded'));
    // The broker's copy again (a lost ack): the inbox drops it.
    await publish(names.dlx, 'result.rejected', { nodeId: 'n1', tier: 'light', records } satisfies ResultBatch, { headers, messageId: id });
    // An empty queue can still hold the copy unacked: wait for the inbox to have dropped it.
    await eventually(async () => (ingest.stats().duplicates === 1 ? true : null));
    expect(await eventually(queuesDrained)).toBe(true);
    expect((await history(task)).map((h) => h.type)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskSucceeded']);
    expect(ingest.stats()).toMatchObject({ rejected: 0, duplicates: 1 });
  });

  it('INGEST_LANES disagreeing between roles: ingest also consumes the lane queues past its own that a role with more lanes declared', async () => {
    const lanesPrefix = `${prefix}l6_`;
    const six = testTopology(lanesPrefix, { ingestLanes: 6 });
    const four = testTopology(lanesPrefix, { ingestLanes: 4 });
    broker.track(six.topology);
    // A fog node with INGEST_LANES=6 declared lanes 0..5 and sent a task's records to lane 5.
    await declareTopology(broker.channel, six.topology);
    const laneService = createTaskService({ db: tdb.db, names: six.names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });
    const [task] = (await laneService.submitBatch([{ type: 'noop' }], caller)).map((r) => r.task.taskId) as [string];
    const records: ResultRecord[] = [
      { kind: 'started', taskId: task, attempt: 1, at: at() },
      { kind: 'succeeded', taskId: task, attempt: 1, startedAt: at(), at: at(5), durationMs: 5, output: null },
    ];
    await publish(six.names.results, six.names.resultLaneKey(5), { nodeId: 'n6', tier: 'light', records } satisfies ResultBatch);
    // An ingest with INGEST_LANES=4 finds lanes 4 and 5 and applies what waits there.
    const ingest = startIngest({ topology: four.topology, names: four.names });
    await eventually(stateIs(task, 'succeeded'));
    // Counted once settled (a moment after the commit).
    await eventually(async () => (ingest.stats().laneMessages[5] === 1 ? true : null));
    expect(ingest.stats().laneMessages).toEqual([0, 0, 0, 0, 0, 1]);
    expect(await broker.messageCount(six.names.resultLane(5))).toBe(0);
  });

  it('result lanes with Redis down: nothing is handed over, and every lane is still applied', async () => {
    const two = testTopology(`${prefix}rd_`, { ingestLanes: 2 });
    broker.track(two.topology);
    await declareTopology(broker.channel, two.topology);
    // Nothing listens on port 1: every membership beat fails at once.
    const redis = createRedis('redis://127.0.0.1:1', { logger, name: 'test-ingest-down' });
    try {
      const laneService = createTaskService({ db: tdb.db, names: two.names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });
      const ids = (await laneService.submitBatch(Array.from({ length: 20 }, () => ({ type: 'noop' })), caller)).map((r) => r.task.taskId);
      const ingest = startIngest({ topology: two.topology, names: two.names, membership: { redis, prefix: `${prefix}rd_`, ttlMs: 300 } });
      for (const taskId of ids) {
        const records: ResultRecord[] = [{ kind: 'succeeded', taskId, attempt: 1, startedAt: at(), at: at(5), durationMs: 5, output: null }];
        await publish(two.names.results, two.names.resultLaneKey(laneOf(taskId, 2)), { nodeId: 'n1', tier: 'light', records } satisfies ResultBatch);
      }
      await eventually(async () => ((await sql<{ n: number }>`SELECT count(*)::int AS n FROM task_current WHERE task_id = ANY(${ids}::uuid[]) AND state = 'succeeded'`.execute(tdb.db)).rows[0]?.n === ids.length ? true : null));
      await eventually(async () => (ingest.stats().laneMessages.reduce((a, b) => a + b, 0) === ids.length ? true : null));
      expect(ingest.stats().laneMessages.every((m) => m > 0)).toBe(true);
      expect(ingest.stats().handovers).toBe(0);
    } finally {
      redis.disconnect();
    }
  });

  it('a started task whose message the broker dead-letters fails with failure_reason delivery-limit', async () => {
    const [task] = (await submit(1)) as [string];
    const ingest = startIngest();
    await publishResults([{ kind: 'started', taskId: task, attempt: 1, at: at() }]);
    await eventually(stateIs(task, 'running'));
    // A started attempt whose message keeps coming back is poison (it kills its runner).
    await requeuePastDeliveryLimit(task, stateIs(task, 'failed'));
    expect(await current(task)).toMatchObject({ state: 'failed', failure_reason: 'delivery-limit', attempt: 1 });
    expect((await history(task)).at(-1)).toEqual({ type: 'TaskDeadLettered', state: 'failed', attempt: 1 });
    expect(await eventCount(task, 'TaskReturned')).toBe(0);
    expect(ingest.stats().rejected).toBe(0);
    expect(await eventually(queuesDrained)).toBe(true);
  });

  it(`a never-started task message dead-lettered by the broker comes back (TaskReturned, new dispatch row) until MAX_RETURNS (${MAX_RETURNS}), then fails delivery-limit`, async () => {
    const [task] = (await submit(1)) as [string];
    const ingest = startIngest();
    const first = await latestDispatch(task);
    // The real broker: requeued three times without ever starting (graceful returns), the 4th delivery is dead-lettered.
    await requeuePastDeliveryLimit(task, async () => (await eventCount(task, 'TaskReturned')) === 1);
    expect(await current(task)).toMatchObject({ state: 'queued', attempt: 1, failure_reason: null });
    const second = await latestDispatch(task);
    expect(second.message_id).not.toBe(first.message_id);
    expect(second.headers).toMatchObject({ 'x-task-id': task, 'x-attempt': 1, [RETURNS_HEADER]: 1 });
    expect(second.body).toMatchObject({ taskId: task, attempt: 1 });
    const [returned] = await eventData<{ attempt: number; reason: string; returns: number; nodeId: string | null }>(task, 'TaskReturned');
    expect(returned).toMatchObject({ attempt: 1, reason: 'delivery-limit', returns: 1, nodeId: null });
    // Its inbox id is kept apart from the task message's own id.
    const inbox = await sql<{ message_id: string; source: string }>`SELECT message_id, source FROM inbox WHERE message_id LIKE ${`%${first.message_id}`}`.execute(tdb.db);
    expect(inbox.rows).toEqual([{ message_id: `dlq:${first.message_id}`, source: 'dlq' }]);

    // Each later dispatch dead-lettered the same way (as the broker does: to the dlx with x-first-death-* and the message's own headers).
    for (let returns = 1; returns <= MAX_RETURNS; returns++) {
      const row = await latestDispatch(task);
      expect(row.headers[RETURNS_HEADER]).toBe(returns);
      await publish(names.dlx, 'task.failed', row.body, {
        messageId: row.message_id,
        headers: { ...row.headers, 'x-first-death-queue': names.taskQueue('light', 'normal'), 'x-first-death-reason': 'delivery_limit', 'x-first-death-exchange': names.tasks },
      });
      if (returns < MAX_RETURNS) await eventually(async () => (await eventCount(task, 'TaskReturned')) === returns + 1);
    }
    await eventually(stateIs(task, 'failed'));
    expect(await current(task)).toMatchObject({ state: 'failed', failure_reason: 'delivery-limit', attempt: 1 });
    expect(await eventCount(task, 'TaskReturned')).toBe(MAX_RETURNS);
    expect(await eventCount(task, 'TaskDeadLettered')).toBe(1);
    // The first dispatch and one per return; the attempt never moved on.
    const dispatches = await sql<{ attempt: number }>`SELECT (body->>'attempt')::int AS attempt FROM outbox WHERE stream_id = ${task} AND exchange = ${names.tasks}`.execute(tdb.db);
    expect(dispatches.rows.map((r) => r.attempt)).toEqual(Array.from({ length: MAX_RETURNS + 1 }, () => 1));
    expect(ingest.stats().rejected).toBe(0);
    expect(await eventually(queuesDrained)).toBe(true);
  });

  it('a returned record (node shutdown) puts the same attempt back on its queue; a second copy changes nothing', async () => {
    const [task] = (await submit(1)) as [string];
    const ingest = startIngest();
    const startedAt = at();
    await publishResults([{ kind: 'started', taskId: task, attempt: 1, at: startedAt }]);
    await eventually(stateIs(task, 'running'));
    const records: ResultRecord[] = [{ kind: 'returned', taskId: task, attempt: 1, at: at(5), reason: 'node-shutdown' }];
    await publishResults(records);
    await eventually(stateIs(task, 'queued'));
    await publishResults(records); // a node that re-sent its batch under a new id
    await eventually(() => ingest.stats().messages === 3);
    expect(await current(task)).toMatchObject({ state: 'queued', attempt: 1, node_id: null });
    expect((await history(task)).map((h) => h.type)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskReturned']);
    const [returned] = await eventData<{ reason: string; nodeId: string; returns: number }>(task, 'TaskReturned');
    expect(returned).toMatchObject({ reason: 'node-shutdown', nodeId: 'n1', returns: 0 });
    const row = await latestDispatch(task);
    expect(row.body).toMatchObject({ taskId: task, attempt: 1 });
    expect(row.headers[RETURNS_HEADER]).toBe(0);
    // It runs again as the same attempt.
    await publishResults([
      { kind: 'started', taskId: task, attempt: 1, at: at(10) },
      { kind: 'succeeded', taskId: task, attempt: 1, startedAt: at(10), at: at(11), durationMs: 1, output: 'again' },
    ]);
    await eventually(stateIs(task, 'succeeded'));
    expect(await eventCount(task, 'TaskStarted')).toBe(2);
  });

  it('with PostgreSQL unreachable the messages stay unacked, and a working ingest applies them later', async () => {
    const [task] = (await submit(1)) as [string];
    const down = createPostgres({ url: 'postgres://root@127.0.0.1:1/fogsched', poolMax: 2, connectTimeoutMs: 1000, statementTimeoutMs: 1000 });
    try {
      const broken = startIngest({ db: down.db });
      const startedAt = at();
      await publishResults([
        { kind: 'started', taskId: task, attempt: 1, at: startedAt },
        { kind: 'succeeded', taskId: task, attempt: 1, startedAt, at: at(3), durationMs: 3, output: 42 },
      ]);
      await publish(names.metrics, 'metrics.node.n1', { nodeId: `down-${prefix}`, tier: 'light', at: at(), cpu: 0, rssMb: 1, inFlight: 0, completed: 0, failed: 0 });
      // Delivered to the broken ingest (nothing ready in the queues) but not applied, not acked.
      await eventually(async () => {
        const [results, metrics] = await Promise.all([broker.channel.checkQueue(names.resultsQueue), broker.channel.checkQueue(names.metricsQueue)]);
        return results.consumerCount === 1 && results.messageCount === 0 && metrics.messageCount === 0;
      });
      expect(broken.stats()).toMatchObject({ batches: 0, messages: 0 });
      expect(await current(task)).toMatchObject({ state: 'queued' });
      const stopping = Date.now();
      await broken.stop();
      expect(Date.now() - stopping).toBeLessThan(5000);
      // Its channel closed: the broker has both messages again.
      await eventually(async () => (await broker.messageCount(names.resultsQueue)) === 1 && (await broker.messageCount(names.metricsQueue)) === 1);
    } finally {
      await down.close();
    }
    const ingest = startIngest();
    await eventually(stateIs(task, 'succeeded'));
    expect(await current(task)).toMatchObject({ state: 'succeeded', output: 42 });
    await eventually(async () => {
      const r = await sql<{ n: number }>`SELECT count(*)::int AS n FROM node_metrics WHERE node_id = ${`down-${prefix}`}`.execute(tdb.db);
      return r.rows[0]?.n === 1;
    });
    expect(await eventually(queuesDrained)).toBe(true);
    expect(ingest.stats()).toMatchObject({ messages: 2, rejected: 0 });
  });
});

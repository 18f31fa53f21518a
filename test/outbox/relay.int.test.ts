import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DEFAULT_TIERS, PRIORITIES, type TaskMessage } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { createRelay, declareTopology, type RelayOptions } from '../../src/outbox/index.js';
import { createTaskService, executeTaskCommands, type TaskService } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { openTestBroker, testTopology, TIERS, uniquePrefix, type TestBroker } from '../helpers/broker.js';

const prefix = uniquePrefix();
const main = testTopology(prefix);
const names = main.names;
const logger = createLogger(process.env.RELAY_LOG ?? 'silent');
const caller = { tenant: 'default', actor: 'test' };
const QUEUE = names.taskQueue('light', 'normal');

let broker: TestBroker;
let tdb: TestDatabase;
let service: TaskService;
const running: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  broker = await openTestBroker();
  broker.track(main.topology);
  await declareTopology(broker.channel, main.topology);
});
afterAll(async () => {
  await broker?.cleanup();
});

// A fresh database per test: leadership (the lease in relay_lease) and the outbox are per database.
beforeEach(async () => {
  tdb = await createTestDatabase('relay');
  service = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });
  for (const tier of TIERS) for (const p of PRIORITIES) await broker.channel.purgeQueue(names.taskQueue(tier, p));
});
afterEach(async () => {
  // A test that leaves a relay running would publish into the next one.
  await Promise.all(running.splice(0).map((r) => r.stop()));
  await tdb?.drop();
});

function startRelay(overrides: Partial<RelayOptions> = {}) {
  const relay = createRelay({
    databaseUrl: tdb.url,
    amqpUrl: broker.url,
    topology: main.topology,
    logger,
    batchSize: 50,
    pollIntervalMs: 200,
    retryMaxMs: 500,
    ...overrides,
  });
  running.push(relay);
  void relay.start();
  return relay;
}

interface OutboxRecord {
  id: number;
  message_id: string;
  stream_id: string;
  published_at: Date | null;
  available_at: Date;
  attempts: number;
  last_error: string | null;
  body: TaskMessage;
}

async function outbox(): Promise<OutboxRecord[]> {
  const r = await sql<OutboxRecord>`SELECT id, message_id, stream_id, published_at, available_at, attempts, last_error, body FROM outbox ORDER BY id`.execute(tdb.db);
  return r.rows;
}

async function allPublished(expected: number): Promise<OutboxRecord[] | null> {
  const rows = await outbox();
  return rows.length === expected && rows.every((r) => r.published_at !== null) ? rows : null;
}

async function submit(n: number, input: Parameters<TaskService['submit']>[0] = { type: 'noop' }): Promise<string[]> {
  const results = await service.submitBatch(Array.from({ length: n }, () => input), caller);
  return results.map((r) => r.task.taskId);
}

/** Messages on `queue` once it holds `count` (then drained). */
async function take(queue: string, count: number) {
  await eventually(async () => (await broker.messageCount(queue)) >= count, { timeoutMs: 10_000, message: `${queue} never held ${count} messages` });
  return broker.drain(queue);
}

/** Fails attempt `attempt` of a task for good (dead-lettered), then requeues it: a new dispatch row. */
async function failAndRequeue(taskId: string, attempt: number) {
  await tdb.db.transaction().execute((trx) =>
    executeTaskCommands(
      trx,
      // `rejected`: a never-started attempt dead-lettered for its delivery limit would be returned, not failed.
      [{ taskId, command: { type: 'DeadLetterTask', data: { attempt, reason: 'rejected', queue: QUEUE, now: new Date().toISOString() } }, metadata: { actor: 'test' } }],
      names,
    ),
  );
  await service.requeue(taskId, caller);
}

describe('outbox relay', () => {
  it('publishes every row with confirms, marks it published, message id = row id, in order', async () => {
    const tasks = await submit(5, { type: 'noop', payload: { n: 1 } });
    // Two tasks get a second and a third dispatch: several rows per task.
    for (const id of tasks.slice(0, 2)) {
      await failAndRequeue(id, 1);
      await failAndRequeue(id, 2);
    }
    const relay = startRelay();
    const rows = await eventually(() => allPublished(9));
    const messages = await take(QUEUE, 9);
    expect(messages).toHaveLength(9);
    // The queue holds them in outbox order, so per task the attempts arrive 1, 2, 3.
    expect(messages.map((m) => m.properties.messageId)).toEqual(rows.map((r) => r.message_id));
    for (const id of tasks) {
      const attempts = messages.map((m) => JSON.parse(m.content.toString()) as TaskMessage).filter((b) => b.taskId === id).map((b) => b.attempt);
      expect(attempts).toEqual(tasks.slice(0, 2).includes(id) ? [1, 2, 3] : [1]);
    }
    const first = messages[0];
    expect(first?.properties.deliveryMode).toBe(2);
    expect(first?.properties.contentType).toBe('application/json');
    expect(first?.properties.headers).toMatchObject({ 'x-task-id': rows[0]?.stream_id, 'x-attempt': 1 });
    expect(first?.fields.exchange).toBe(names.tasks);
    expect(first?.fields.routingKey).toBe('light.normal');
    expect(JSON.parse(first?.content.toString() ?? '{}')).toEqual(rows[0]?.body);
    expect(rows[0]?.body).toMatchObject({ taskId: tasks[0], attempt: 1, type: 'noop', payload: { n: 1 }, tenant: 'default', tier: 'light', priority: 'normal' });
    expect(rows.every((r) => r.attempts === 0 && r.last_error === null)).toBe(true);
    // The counter moves right after the UPDATE commits.
    await eventually(() => relay.stats().published === 9);
    expect(relay.stats()).toMatchObject({ leader: true, published: 9, failed: 0 });
  });

  it('publishes the rows longest due first, then in id order (a retry due a minute ago goes before new submits)', async () => {
    const tasks = await submit(4);
    // The last row written came due first (as a retry whose backoff ended before these submits would).
    await sql`UPDATE outbox SET available_at = now() - interval '1 minute' WHERE stream_id = ${tasks[3]}`.execute(tdb.db);
    startRelay();
    const rows = await eventually(() => allPublished(4));
    const messages = await take(QUEUE, 4);
    const byStream = new Map(rows.map((r) => [r.message_id, r.stream_id]));
    expect(messages.map((m) => byStream.get(m.properties.messageId as string))).toEqual([tasks[3], tasks[0], tasks[1], tasks[2]]);
  });

  it('publishes a delayed row when it comes due, not before', async () => {
    const relay = startRelay();
    await eventually(() => relay.stats().leader);
    const notBefore = new Date(Date.now() + 2000).toISOString();
    const [delayed] = await submit(1, { type: 'later', notBefore });
    const [now] = await submit(1, { type: 'now' });
    // The due row goes out at once (NOTIFY); the delayed one, written earlier, waits.
    await eventually(async () => (await outbox()).find((r) => r.stream_id === now)?.published_at);
    const early = await sql<{ unpublished: boolean; due_later: boolean }>`
      SELECT published_at IS NULL AS unpublished, available_at > now() AS due_later FROM outbox WHERE stream_id = ${delayed}`.execute(tdb.db);
    expect(early.rows[0]).toEqual({ unpublished: true, due_later: true });
    const status = await sql<{ state: string }>`SELECT state FROM task_current WHERE task_id = ${delayed}::uuid`.execute(tdb.db);
    expect(status.rows[0]?.state).toBe('scheduled');
    // Then it goes out on time (the relay sleeps until the row is due, not a whole poll).
    const row = await eventually(async () => {
      const r = (await outbox()).find((x) => x.stream_id === delayed);
      return r?.published_at ? r : null;
    });
    expect(row.published_at?.getTime()).toBeGreaterThanOrEqual(Date.parse(notBefore));
    expect(row.published_at?.getTime()).toBeLessThan(Date.parse(notBefore) + 3000);
    const messages = await take(QUEUE, 2);
    expect(messages.map((m) => m.properties.messageId)).toEqual([(await outbox()).find((r) => r.stream_id === now)?.message_id, row.message_id]);
  });

  it('two relays on one database: one leader, every row published exactly once', async () => {
    const a = startRelay();
    const b = startRelay();
    await eventually(() => a.stats().leader || b.stats().leader);
    // Submits arrive while both run: in several transactions, some concurrent.
    await Promise.all([submit(10), submit(10), submit(5)]);
    for (let i = 0; i < 5; i++) await service.submit({ type: 'single' }, caller);
    const rows = await eventually(() => allPublished(30));
    const messages = await take(QUEUE, 30);
    expect(messages).toHaveLength(30);
    expect(new Set(messages.map((m) => m.properties.messageId)).size).toBe(30);
    expect(new Set(messages.map((m) => m.properties.messageId))).toEqual(new Set(rows.map((r) => r.message_id)));
    await eventually(() => a.stats().published + b.stats().published === 30);
    const leaders = [a, b].filter((r) => r.stats().leader);
    expect(leaders).toHaveLength(1);
    expect(a.stats().published + b.stats().published).toBe(30);
    expect([a, b].find((r) => !r.stats().leader)?.stats().published).toBe(0);
    expect(rows.every((r) => r.attempts === 0)).toBe(true);
  });

  it('when the leader stops, the other relay takes over and publishes new rows', async () => {
    const a = startRelay();
    const b = startRelay();
    const leader = await eventually(() => (a.stats().leader ? a : b.stats().leader ? b : null));
    const standby = leader === a ? b : a;
    await submit(3);
    await eventually(() => allPublished(3));
    await eventually(() => leader.stats().published === 3);
    expect(standby.stats()).toMatchObject({ leader: false, published: 0 });

    const stopping = Date.now();
    await leader.stop();
    expect(Date.now() - stopping).toBeLessThan(3000);
    expect(leader.stats().leader).toBe(false);
    // The leader gave the lease back as it stopped: the standby takes it within a poll.
    await eventually(() => standby.stats().leader, { timeoutMs: 5000 });
    await submit(4);
    await eventually(() => allPublished(7));
    await eventually(() => standby.stats().published === 4);
    expect(leader.stats().published).toBe(3);
    const messages = await take(QUEUE, 7);
    expect(messages).toHaveLength(7);
    expect(messages.map((m) => m.properties.messageId)).toEqual((await outbox()).map((r) => r.message_id));
  });

  it('a row whose NOTIFY never came is published by the poll', async () => {
    const relay = startRelay();
    await eventually(() => relay.stats().leader);
    const listener = new pg.Client({ connectionString: tdb.url });
    const writer = new pg.Client({ connectionString: tdb.url });
    await listener.connect();
    await writer.connect();
    const heard: string[] = [];
    try {
      listener.on('notification', (n) => heard.push(n.channel));
      await listener.query('LISTEN fogsched_outbox');
      // With triggers off (replica role) the insert fires no outbox_notify: a lost notification.
      await writer.query('BEGIN');
      await writer.query('SET LOCAL session_replication_role = replica');
      const ids = [randomUUID(), randomUUID(), randomUUID()];
      for (const [i, id] of ids.entries()) {
        await writer.query(
          `INSERT INTO outbox (message_id, stream_id, exchange, routing_key, headers, body) VALUES ($1, $2, $3, 'light.normal', '{}', $4)`,
          [id, `raw-${i}`, names.tasks, JSON.stringify({ raw: i })],
        );
      }
      await writer.query('COMMIT');
      const started = Date.now();
      await eventually(() => allPublished(3), { timeoutMs: 5000 });
      // Within a few poll intervals (200 ms), not a stall.
      expect(Date.now() - started).toBeLessThan(2000);
      const messages = await take(QUEUE, 3);
      expect(messages.map((m) => m.properties.messageId)).toEqual(ids);
      expect(messages.map((m) => JSON.parse(m.content.toString()) as unknown)).toEqual([{ raw: 0 }, { raw: 1 }, { raw: 2 }]);
      // Control: nothing was heard for these rows, while an ordinary insert does notify.
      expect(heard).toEqual([]);
      await submit(1);
      await eventually(() => heard.length > 0);
      await eventually(() => allPublished(4));
    } finally {
      await listener.end();
      await writer.end();
    }
  });

  it('with the broker unreachable it keeps the rows, reports the lag and stops promptly', async () => {
    const relay = startRelay({ amqpUrl: 'amqp://guest:guest@127.0.0.1:1' });
    await submit(3);
    await eventually(() => relay.stats().leader);
    // The lag is measured every 5 s; it must be measured during the outage too.
    const stats = await eventually(() => {
      const s = relay.stats();
      return s.pending === 3 && s.lagMs > 0 ? s : null;
    }, { timeoutMs: 15_000 });
    expect(stats.published).toBe(0);
    const rows = await outbox();
    expect(rows).toHaveLength(3);
    expect(rows.every((r) => r.published_at === null)).toBe(true);
    const stopping = Date.now();
    await relay.stop();
    expect(Date.now() - stopping).toBeLessThan(3000);
    expect(relay.stats().leader).toBe(false);
    // The rows are still there for a relay that can reach the broker.
    startRelay();
    await eventually(() => allPublished(3));
    expect(await take(QUEUE, 3)).toHaveLength(3);
  });

  it('a held routing key does not hold back the others: a later high-priority dispatch goes out past a full normal queue', async () => {
    const full = testTopology(`${prefix}held_`, { taskQueueMaxLength: 2, tiers: ['light'] });
    broker.track(full.topology);
    const fullService = createTaskService({ db: tdb.db, names: full.names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });
    const normal = full.names.taskQueue('light', 'normal');
    const high = full.names.taskQueue('light', 'high');
    await declareTopology(broker.channel, full.topology);
    const relay = startRelay({ topology: full.topology, batchSize: 1, pipelineDepth: 1 });
    try {
      await fullService.submitBatch(Array.from({ length: 5 }, () => ({ type: 'noop' })), caller);
      // The normal queue is full and its key held before the high-priority tasks are written.
      await eventually(async () => ((await outbox()).find((r) => r.published_at === null)?.attempts ?? 0) > 0);
      await fullService.submitBatch(Array.from({ length: 2 }, () => ({ type: 'noop', priority: 'high' as const })), caller);
      await eventually(async () => (await broker.messageCount(high)) === 2, { message: 'the high-priority dispatches waited behind the held key' });
      const rows = await outbox();
      // (A quorum queue may take a publish already in flight when it fills: 2 or 3 went in.)
      const waiting = rows.filter((r) => r.published_at === null);
      expect(waiting.length).toBeGreaterThan(0);
      expect(waiting.every((r) => (r.body as { priority: string }).priority === 'normal')).toBe(true);
      expect(await broker.messageCount(normal)).toBe(5 - waiting.length);
      // Room again: the held rows follow, in order.
      await broker.drain(normal);
      const rest = await take(normal, waiting.length);
      expect(rest.map((m) => m.properties.messageId)).toEqual(waiting.map((r) => r.message_id));
    } finally {
      await relay.stop();
      await broker.drop(full.topology);
    }
  });

  it('a full task queue: its routing key is held, the refused rows keep their place and order, and go out once there is room', async () => {
    const full = testTopology(`${prefix}full_`, { taskQueueMaxLength: 5, tiers: ['light'] });
    broker.track(full.topology);
    const fullService = createTaskService({ db: tdb.db, names: full.names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });
    const queue = full.names.taskQueue('light', 'normal');
    await declareTopology(broker.channel, full.topology);
    // Batches of one, one in flight: each publish is confirmed before the next, so the queue's limit
    // is exact enough (a quorum queue takes the publishes already in flight when it fills).
    const relay = startRelay({ topology: full.topology, batchSize: 1, pipelineDepth: 1 });
    try {
      await fullService.submitBatch(Array.from({ length: 8 }, () => ({ type: 'noop' })), caller);
      const refused = await eventually(async () => {
        const rows = await outbox();
        const waiting = rows.filter((r) => r.published_at === null);
        return rows.length === 8 && rows.filter((r) => r.published_at).length >= 5 && waiting.length > 0 && waiting[0]!.attempts > 0 ? waiting : null;
      });
      const accepted = 8 - refused.length;
      expect(accepted).toBeGreaterThanOrEqual(5);
      expect(accepted).toBeLessThanOrEqual(6);
      // The oldest refused row records the refusal; the rows behind it were not written to.
      expect(refused[0]!.last_error).toMatch(/nack/i);
      for (const r of refused.slice(1)) expect(r.attempts).toBe(0);
      for (const r of refused) expect(r.available_at.getTime()).toBeLessThanOrEqual(Date.now());
      expect(relay.stats().failed).toBeGreaterThan(0);
      expect(await broker.messageCount(queue)).toBe(accepted);
      // Still refused while full: the key is tried again after its hold, and nothing more goes out.
      await eventually(async () => (await outbox()).filter((r) => r.published_at === null)[0]!.attempts >= 2);
      expect((await outbox()).filter((r) => r.published_at).length).toBe(accepted);

      // A consumer drains the queue: the refused rows go out on their next retry (retryMaxMs 500).
      const first = await broker.drain(queue);
      expect(first).toHaveLength(accepted);
      const rows = await eventually(() => allPublished(8), { timeoutMs: 5000 });
      const second = await take(queue, refused.length);
      // Every row went out in the order it was written: the held ones kept their place.
      expect(first.map((m) => m.properties.messageId)).toEqual(rows.slice(0, accepted).map((r) => r.message_id));
      expect(second.map((m) => m.properties.messageId)).toEqual(refused.map((r) => r.message_id));
      await eventually(() => relay.stats().published === 8);
    } finally {
      await relay.stop();
      await broker.drop(full.topology);
    }
  });
});

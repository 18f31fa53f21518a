import { randomUUID } from 'node:crypto';
import type { ConfirmChannel, Options } from 'amqplib';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TIERS, type ResultBatch, type ResultRecord, type TaskMessage } from '../../src/domain/index.js';
import { createFogNode } from '../../src/fog-node/index.js';
import { createPostgres, type Postgres } from '../../src/infra/postgres.js';
import { createLogger } from '../../src/infra/logger.js';
import { createIngest, OUTPUT_NOT_STORABLE, type IngestOptions } from '../../src/ingest/index.js';
import { createRelay, declareTopology } from '../../src/outbox/index.js';
import { createTaskService, type SubmitInput, type TaskService } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { openTestBroker, testTopology, uniquePrefix, type TestBroker } from '../helpers/broker.js';

// Issue 15, paths 1, 2 and 8: what ingest does when PostgreSQL refuses a batch for a while
// (a lock held past the statement timeout), refuses one record for good (`\u0000` in an
// output), refuses the record of a dead letter, and when a node's clock is off.

const prefix = uniquePrefix();
const { topology: t, names } = testTopology(prefix);
const logger = createLogger(process.env.INGEST_LOG ?? 'silent');
const caller = { tenant: 'default', actor: 'test' };
/** The ingest's statement_timeout in these tests (the default is 15 s). */
const STATEMENT_TIMEOUT_MS = 2000;

let broker: TestBroker;
let pub: ConfirmChannel;
let tdb: TestDatabase;
/** The ingest's own pool, with the short statement timeout. */
let ingestPg: Postgres;
let service: TaskService;
const running: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  broker = await openTestBroker();
  broker.track(t);
  await declareTopology(broker.channel, t);
  pub = await broker.confirmChannel();
  tdb = await createTestDatabase('ingestfaults');
  ingestPg = createPostgres({ url: tdb.url, poolMax: 4, connectTimeoutMs: 3000, statementTimeoutMs: STATEMENT_TIMEOUT_MS, applicationName: 'test-ingest' });
  service = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.stop()));
});
afterAll(async () => {
  await pub?.close().catch(() => {});
  await ingestPg?.close();
  await broker?.cleanup();
  await tdb?.drop();
});

function startIngest(overrides: Partial<IngestOptions> = {}) {
  const ingest = createIngest({
    db: ingestPg.db,
    amqpUrl: broker.url,
    topology: t,
    names,
    batchSize: 100,
    flushMs: 5,
    backoff: { baseMs: 10, factor: 2, maxMs: 100 },
    metricsRetentionHours: 24,
    retryMaxMs: 500,
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

async function publish(exchange: string, routingKey: string, content: string | Buffer | object, options: Options.Publish = {}): Promise<string> {
  const messageId = options.messageId ?? randomUUID();
  const bytes = Buffer.isBuffer(content) ? content : Buffer.from(typeof content === 'string' ? content : JSON.stringify(content));
  pub.publish(exchange, routingKey, bytes, { persistent: true, contentType: 'application/json', messageId, ...options });
  await pub.waitForConfirms();
  return messageId;
}

const publishResults = (records: ResultRecord[]) => publish(names.results, 'task.batch.n1', { nodeId: 'n1', tier: 'light', records } satisfies ResultBatch);

/** Takes `LOCK TABLE task_current IN EXCLUSIVE MODE` (as a long `projections rebuild --verify` does): writers wait, readers go on. */
async function lockTaskCurrent() {
  const client = await tdb.pool.connect();
  await client.query('BEGIN');
  await client.query('LOCK TABLE task_current IN EXCLUSIVE MODE');
  const lockedAt = Date.now();
  let released = false;
  return {
    lockedAt,
    async release() {
      if (released) return;
      released = true;
      await client.query('COMMIT').catch(() => {});
      client.release();
    },
  };
}

interface Current {
  state: string;
  attempt: number;
  failure_reason: string | null;
  last_error: { code: string; message: string; retryable: boolean } | null;
  output: unknown;
}
async function current(taskId: string): Promise<Current | undefined> {
  const r = await sql<Current>`SELECT state, attempt, failure_reason, last_error, output FROM task_current WHERE task_id = ${taskId}::uuid`.execute(tdb.db);
  return r.rows[0];
}

async function states(taskIds: readonly string[]): Promise<Map<string, number>> {
  const r = await sql<{ state: string; n: number }>`SELECT state, count(*)::int AS n FROM task_current WHERE task_id = ANY(${[...taskIds]}::uuid[]) GROUP BY state`.execute(tdb.db);
  return new Map(r.rows.map((row) => [row.state, row.n]));
}

async function eventsOfType(type: string): Promise<{ stream_id: string; data: Record<string, unknown> }[]> {
  const r = await sql<{ stream_id: string; data: Record<string, unknown> }>`SELECT stream_id, data FROM events WHERE type = ${type} ORDER BY position`.execute(tdb.db);
  return r.rows;
}

const queuesDrained = async () => {
  for (const q of [names.resultsQueue, names.dlq]) if ((await broker.messageCount(q)) !== 0) return null;
  return true;
};

const at = (offsetMs = 0) => new Date(Date.now() + offsetMs).toISOString();

describe('ingest under database faults', () => {
  it('a lock on task_current held past the ingest statement timeout while 200 tasks run: after release every task ends, nothing is dead-lettered', async () => {
    // Half report start and end in one result message, half (20 ms sleeps) mostly in two.
    const tasks = [...(await submit(100)), ...(await submit(100, { type: 'sleep', payload: { ms: 20 } }))];
    const lock = await lockTaskCurrent();
    try {
      const relay = createRelay({ databaseUrl: tdb.url, amqpUrl: broker.url, topology: t, logger, batchSize: 100, pollIntervalMs: 100, retryMaxMs: 400 });
      running.push(relay);
      void relay.start();
      const node = createFogNode({
        amqpUrl: broker.url,
        topology: t,
        names,
        nodeId: `n-${prefix}`,
        tier: 'light',
        servedTiers: ['light'],
        slots: 32,
        prefetch: 32,
        graceMs: 1000,
        resultFlushMs: 2,
        metricsIntervalMs: 60_000,
        agingMs: 2000,
        handlersModule: '',
        workerMemoryMb: 64,
        maxOutputBytes: 1024 * 1024,
        logger,
      });
      running.push(node);
      void node.start();
      startIngest();
      // The fault: the lock stays for three statement timeouts (the 25 s against 15 s,
      // scaled down), and at least until every task has run on the node.
      await eventually(() => node.stats().completed >= tasks.length && Date.now() - lock.lockedAt >= 3 * STATEMENT_TIMEOUT_MS, { timeoutMs: 60_000 });
      expect((await states(tasks)).get('succeeded') ?? 0).toBe(0); // nothing got through the lock
    } finally {
      await lock.release();
    }
    await eventually(async () => ((await states(tasks)).get('succeeded') === tasks.length ? true : null), {
      timeoutMs: 30_000,
      message: 'every task succeeded after the lock was released',
    });
    expect(await eventually(queuesDrained)).toBe(true);
    expect(await eventsOfType('MessageDeadLettered')).toEqual([]);
    expect(await eventsOfType('ResultRecordSetAside')).toEqual([]);
  });

  it('a result message of 101 records, one output with \\u0000: 100 tasks end as reported, the bad one fails output-not-storable', async () => {
    const tasks = await submit(101);
    const bad = tasks[50] as string;
    const ingest = startIngest();
    const startedAt = at();
    // Published straight to the results exchange, the way a buggy or old node would.
    await publishResults(
      tasks.map((taskId, i): ResultRecord => ({ kind: 'succeeded', taskId, attempt: 1, startedAt, at: at(5), durationMs: 5, output: taskId === bad ? { text: 'a\u0000b' } : { i } })),
    );
    await eventually(async () => ((await states(tasks)).get('succeeded') === 100 && (await states(tasks)).get('failed') === 1 ? true : null), { timeoutMs: 30_000 });
    const failed = await current(bad);
    expect(failed).toMatchObject({ state: 'failed', failure_reason: 'non-retryable', last_error: { code: OUTPUT_NOT_STORABLE, retryable: false }, output: null });
    expect(failed?.last_error?.message).toMatch(/cannot be stored/);
    expect(await current(tasks[0] as string)).toMatchObject({ state: 'succeeded', output: { i: 0 } });
    expect(await current(tasks[100] as string)).toMatchObject({ state: 'succeeded', output: { i: 100 } });
    // The bad one's run is on record too: started, then the attempt failed for good.
    const history = await sql<{ type: string }>`SELECT type FROM task_history WHERE task_id = ${bad}::uuid ORDER BY version`.execute(tdb.db);
    expect(history.rows.map((r) => r.type)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskAttemptFailed', 'TaskFailed']);
    expect(ingest.stats()).toMatchObject({ notStorable: 1, setAside: 0, rejected: 0 });
    expect(await eventually(queuesDrained)).toBe(true);
    expect(await eventsOfType('MessageDeadLettered')).toEqual([]);
  });

  it('a record that can never be written is set aside and recorded; an error text with \\u0000 is applied made storable; the rest of the message is applied', async () => {
    const [unwritable, erring, fine] = (await submit(3)) as [string, string, string];
    const ingest = startIngest();
    const messageId = await publishResults([
      // JavaScript reads '1' as a date (2001), PostgreSQL refuses it as a timestamptz: this start can never be written.
      { kind: 'started', taskId: unwritable, attempt: 1, at: '1' },
      { kind: 'failed', taskId: erring, attempt: 1, startedAt: at(), at: at(1), durationMs: 1, error: { message: 'bad \u0000 byte', code: 'E_NUL', retryable: true } },
      { kind: 'succeeded', taskId: fine, attempt: 1, startedAt: at(), at: at(1), durationMs: 1, output: 'ok' },
    ]);
    await eventually(async () => (await current(fine))?.state === 'succeeded' && (await current(erring))?.state === 'retrying');
    expect(await current(erring)).toMatchObject({ last_error: { message: 'bad \uFFFD byte', code: 'E_NUL', retryable: true } });
    expect(await current(unwritable)).toMatchObject({ state: 'queued' });
    const [setAside] = await eventsOfType('ResultRecordSetAside');
    expect(setAside).toMatchObject({
      stream_id: `message:${messageId}`,
      data: { messageId, nodeId: 'n1', recordIndex: 0, taskId: unwritable, kind: 'started', attempt: 1, reportedAt: '1', errorCode: '22007' },
    });
    expect(setAside?.data.error).toMatch(/invalid input syntax for type timestamp/);
    expect(ingest.stats()).toMatchObject({ setAside: 1, notStorable: 0, rejected: 0 });
    expect(await eventually(queuesDrained)).toBe(true);
    // The auditor sees it too.
    const view = await sql<{ task_id: string; record_kind: string; error_code: string }>`
      SELECT task_id, record_kind, error_code FROM audit.result_records_set_aside WHERE message_id = ${messageId}`.execute(tdb.db);
    expect(view.rows).toEqual([{ task_id: unwritable, record_kind: 'started', error_code: '22007' }]);
  });

  it('an error nobody classified is retried like a transient one, but only unknownErrorLimit times before its message is isolated and kept', async () => {
    // A SQLSTATE of a class classifyPgError does not know (F0: configuration file error), raised for one metric sample only.
    await sql`CREATE FUNCTION test_refuse_metric() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'refused by test' USING ERRCODE = 'F0001'; END $$`.execute(tdb.db);
    await sql`CREATE TRIGGER test_refuse_metric BEFORE INSERT ON node_metrics FOR EACH ROW WHEN (NEW.node_id = 'refused') EXECUTE FUNCTION test_refuse_metric()`.execute(tdb.db);
    try {
      const [task] = (await submit(1)) as [string];
      const metric = await publish(names.metrics, 'metrics.node.refused', { nodeId: 'refused', tier: 'light', at: at(), cpu: 0, rssMb: 1, inFlight: 0, completed: 0, failed: 0 });
      await publishResults([{ kind: 'started', taskId: task, attempt: 1, at: at() }]);
      const ingest = startIngest({ unknownErrorLimit: 2, retryMaxMs: 50 });
      await eventually(async () => (await current(task))?.state === 'running');
      const dead = await eventually(async () => (await eventsOfType('MessageDeadLettered')).find((e) => e.stream_id === `message:${metric}`));
      expect(dead.data.reason).toMatch(/refused by test/);
      // Two tries of the whole batch, then it was bisected and the sample kept aside.
      expect(ingest.stats()).toMatchObject({ retries: 2, rejected: 1 });
      expect(await eventually(queuesDrained)).toBe(true);
    } finally {
      await sql`DROP TRIGGER test_refuse_metric ON node_metrics`.execute(tdb.db);
      await sql`DROP FUNCTION test_refuse_metric()`.execute(tdb.db);
    }
  });

  it('a transient error on the dlq path keeps the dead letter until it can be applied; a dead letter whose body has \\u0000 is recorded', async () => {
    const [task] = (await submit(1)) as [string];
    const ingest = startIngest();
    await publishResults([{ kind: 'started', taskId: task, attempt: 1, at: at() }]);
    await eventually(async () => (await current(task))?.state === 'running');
    const lock = await lockTaskCurrent();
    let deadLetterId = '';
    try {
      const body: TaskMessage = { taskId: task, attempt: 1, type: 'noop', payload: null, tenant: 'default', tier: 'light', priority: 'normal', timeoutMs: null, deadline: null, availableAt: at() };
      deadLetterId = await publish(names.dlx, 'task.failed', body, {
        headers: { 'x-first-death-queue': names.taskQueue('light', 'normal'), 'x-first-death-reason': 'delivery_limit', 'x-first-death-exchange': names.tasks },
      });
      // The fault lasts two statement timeouts after the ingest took the dead letter off the queue.
      const taken = await eventually(async () => ((await broker.messageCount(names.dlq)) === 0 ? Date.now() : null));
      await eventually(() => Date.now() - taken >= 2 * STATEMENT_TIMEOUT_MS, { timeoutMs: 20_000 });
    } finally {
      await lock.release();
    }
    await eventually(async () => (await current(task))?.state === 'failed', { timeoutMs: 20_000 });
    expect(await current(task)).toMatchObject({ state: 'failed', failure_reason: 'delivery-limit' });
    expect(ingest.stats().retries).toBeGreaterThanOrEqual(1);
    expect((await eventsOfType('MessageDeadLettered')).filter((e) => e.stream_id === `message:dlq:${deadLetterId}`)).toEqual([]);

    // A dead letter that is not a task message and whose body PostgreSQL cannot hold as text:
    // a NUL byte, an escaped \u0000 and a byte that is not UTF-8.
    const raw = Buffer.concat([Buffer.from('{"x":"\\u0000","y":"a'), Buffer.from([0x00, 0xff]), Buffer.from('"}')]);
    const id = await publish(names.dlx, 'result.rejected', raw, { headers: { 'x-first-death-queue': names.resultsQueue, 'x-first-death-reason': 'rejected', 'x-note': 'n\u0000ul' } });
    const dead = await eventually(async () => (await eventsOfType('MessageDeadLettered')).find((e) => e.stream_id === `message:dlq:${id}`));
    expect(dead.data).toMatchObject({ messageId: `dlq:${id}`, routingKey: 'result.rejected', headers: { 'x-note': 'n\uFFFDul' } });
    expect(Buffer.from(String(dead.data.bodyBase64), 'base64')).toEqual(raw);
    expect(dead.data.body).toContain('\\u0000');
    expect(await eventually(queuesDrained)).toBe(true);
    expect(ingest.stats().rejected).toBe(1);
  });

  it("decides with the ingest's clock: a failure reported an hour ahead (node clock skew) is retried from the ingest's now", async () => {
    const [task] = (await submit(1)) as [string];
    startIngest();
    const skew = 3_600_000;
    const before = Date.now();
    await publishResults([
      { kind: 'started', taskId: task, attempt: 1, at: at(skew) },
      { kind: 'failed', taskId: task, attempt: 1, startedAt: at(skew), at: at(skew + 5), durationMs: 5, error: { message: 'boom', code: 'E_BOOM', retryable: true } },
    ]);
    await eventually(async () => (await current(task))?.state === 'retrying');
    const retry = await sql<{ available_at: Date }>`SELECT available_at FROM outbox WHERE stream_id = ${task} AND (body->>'attempt')::int = 2`.execute(tdb.db);
    const due = retry.rows[0]?.available_at.getTime() ?? 0;
    // The ingest's backoff {10, 2, 100}: due within 10 ms of the ingest seeing the failure, not an hour away.
    expect(due).toBeGreaterThanOrEqual(before);
    expect(due).toBeLessThan(Date.now() + 1000);
    const events = await sql<{ type: string; data: { at: string; reportedAt?: string; availableAt?: string } }>`
      SELECT type, data FROM events WHERE stream_id = ${task} ORDER BY stream_version`.execute(tdb.db);
    const byType = new Map(events.rows.map((e) => [e.type, e.data]));
    // The node's times stay as data: the start at the node's clock, the failure's node time as reportedAt.
    expect(Date.parse(byType.get('TaskStarted')?.at ?? '')).toBeGreaterThan(before + skew - 1000);
    const failed = byType.get('TaskAttemptFailed');
    expect(Date.parse(failed?.reportedAt ?? '')).toBeGreaterThan(before + skew);
    expect(Date.parse(failed?.at ?? '')).toBeLessThan(Date.now() + 1000);
    expect(Date.parse(byType.get('TaskRetryScheduled')?.at ?? '')).toBeLessThan(Date.now() + 1000);
  });
});

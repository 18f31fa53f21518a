import net from 'node:net';
import type { Channel, ConsumeMessage } from 'amqplib';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/infra/logger.js';
import { createRelay, declareTopology, type RelayOptions } from '../../src/outbox/index.js';
import { openTestBroker, testTopology, uniquePrefix, type TestBroker } from '../helpers/broker.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { freePort } from '../helpers/processes.js';

// The relay keeps several batches in flight: the next one is published while the earlier ones
// wait for their confirms and UPDATE. What that must not break: a row is marked published only
// once the broker confirmed it, each row is marked once, and rows go out in id order.

const prefix = uniquePrefix();
const logger = createLogger(process.env.RELAY_LOG ?? 'silent');
const STREAMS = 7;

let broker: TestBroker;
let tdb: TestDatabase;
const running: { stop(): Promise<void> }[] = [];
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  broker = await openTestBroker();
});
afterAll(async () => {
  await broker?.cleanup();
});
beforeEach(async () => {
  tdb = await createTestDatabase('relaypipe');
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.stop()));
  for (const f of cleanups.splice(0).reverse()) await f();
  await tdb?.drop();
});

/** A topology of its own (one tier) whose task queue holds at most `maxLength` messages. */
async function ownTopology(label: string, maxLength: number) {
  const t = testTopology(`${prefix}${label}_`, { taskQueueMaxLength: maxLength, tiers: ['light'] });
  broker.track(t.topology);
  await declareTopology(broker.channel, t.topology);
  cleanups.push(() => broker.drop(t.topology));
  return { ...t, queue: t.names.taskQueue('light', 'normal') };
}

function startRelay(overrides: Partial<RelayOptions> & Pick<RelayOptions, 'topology'>) {
  const relay = createRelay({ databaseUrl: tdb.url, amqpUrl: broker.url, logger, batchSize: 100, pollIntervalMs: 100, retryMaxMs: 400, pipelineDepth: 4, ...overrides });
  running.push(relay);
  void relay.start();
  return relay;
}

/** `n` due rows spread over a few streams, body `{ stream, seq }`; returns nothing, read them back with `rows()`. */
async function insertRows(exchange: string, n: number) {
  await tdb.pool.query(
    `INSERT INTO outbox (message_id, stream_id, exchange, routing_key, headers, body)
     SELECT gen_random_uuid(), 's' || (g % ${STREAMS}), $1, 'light.normal', '{}'::jsonb, jsonb_build_object('stream', g % ${STREAMS}, 'seq', g)
       FROM generate_series(1, $2::int) g`,
    [exchange, n],
  );
}

interface Row {
  id: number;
  message_id: string;
  published: boolean;
  attempts: number;
  last_error: string | null;
}

async function rows(): Promise<Row[]> {
  const r = await tdb.pool.query<Row>('SELECT id, message_id, published_at IS NOT NULL AS published, attempts, last_error FROM outbox ORDER BY id');
  return r.rows;
}

/** Consumes `queue` on the test's own connection; `ackEvery` > 0 acks in bulk that often (a slow consumer). */
async function consume(queue: string, opts: { prefetch: number; ackEveryMs?: number }) {
  const ch: Channel = await broker.scratch();
  const received: string[] = [];
  let unacked: ConsumeMessage | undefined;
  await ch.prefetch(opts.prefetch);
  const { consumerTag } = await ch.consume(queue, (msg) => {
    if (!msg) return;
    received.push(String(msg.properties.messageId));
    if (opts.ackEveryMs) unacked = msg;
    else ch.ack(msg);
  });
  const timer = opts.ackEveryMs
    ? setInterval(() => {
        if (unacked) ch.ack(unacked, true);
        unacked = undefined;
      }, opts.ackEveryMs)
    : undefined;
  cleanups.push(async () => {
    clearInterval(timer);
    await ch.cancel(consumerTag).catch(() => {});
    await ch.close().catch(() => {});
  });
  return received;
}

/**
 * A TCP proxy in front of the broker whose `cut()` first swallows what the client sends for
 * `blackholeMs` (those publishes never reach the broker and are never confirmed), then drops
 * every connection; it keeps listening, so the client can reconnect.
 */
async function cuttableProxy() {
  const target = new URL(broker.url);
  const port = await freePort();
  const pairs = new Set<[net.Socket, net.Socket]>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5672), target.hostname);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    for (const s of pair) {
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
      s.on('close', () => pairs.delete(pair));
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const url = new URL(broker.url);
  url.host = `127.0.0.1:${port}`;
  return {
    url: url.toString(),
    connections: () => pairs.size,
    async cut(blackholeMs: number) {
      const now = [...pairs];
      for (const [client, upstream] of now) {
        client.unpipe(upstream);
        client.on('data', () => {});
      }
      await new Promise((r) => setTimeout(r, blackholeMs));
      for (const [client, upstream] of now) {
        client.destroy();
        upstream.destroy();
      }
    },
  };
}

/**
 * What must hold once every row is out: each row was marked once (the relay's count), each row's
 * message reached the queue (a row marked without a confirm whose publish was lost would never
 * come), a row refused at least once may have come twice, and the rows that went out at their
 * first try came in id order.
 */
function checkDelivery(all: Row[], received: string[], published: number, opts: { duplicates: boolean }) {
  expect(all.every((r) => r.published)).toBe(true);
  expect(published).toBe(all.length);
  const ids = new Set(received);
  const missing = all.filter((r) => !ids.has(r.message_id));
  expect(missing).toEqual([]);
  const firstTry = new Map(all.filter((r) => r.attempts === 0).map((r) => [r.message_id, r.id]));
  const order = received.filter((m) => firstTry.has(m)).map((m) => firstTry.get(m) as number);
  expect(order).toEqual([...firstTry.values()]);
  if (!opts.duplicates) expect(received).toHaveLength(all.length);
  else {
    const seen = new Set<string>();
    const twice = received.filter((m) => (seen.has(m) ? true : (seen.add(m), false)));
    for (const m of twice) expect(firstTry.has(m)).toBe(false);
  }
}

describe('outbox relay pipeline', () => {
  it('publishes a backlog in id order with several batches in flight, each row marked once', async () => {
    const t = await ownTopology('order', 50_000);
    const received = await consume(t.queue, { prefetch: 500 });
    await insertRows(t.names.tasks, 5000);
    const relay = startRelay({ topology: t.topology });
    const all = await eventually(async () => {
      const r = await rows();
      return r.every((x) => x.published) ? r : null;
    }, { timeoutMs: 30_000 });
    await eventually(() => received.length >= all.length);
    await eventually(() => relay.stats().published === all.length);
    expect(all.every((r) => r.attempts === 0)).toBe(true);
    expect(received).toEqual(all.map((r) => r.message_id));
    expect(relay.stats()).toMatchObject({ published: 5000, failed: 0 });
  });

  it('stop mid-pipeline: the batches in flight get their confirms and UPDATE, a new relay goes on from there', async () => {
    const t = await ownTopology('stop', 50_000);
    const n = 20_000;
    await insertRows(t.names.tasks, n);
    const first = startRelay({ topology: t.topology, batchSize: 200 });
    await eventually(() => first.stats().published >= 2000, { timeoutMs: 30_000, intervalMs: 5 });
    await first.stop();
    const atStop = await rows();
    const marked = atStop.filter((r) => r.published);
    expect(marked.length).toBeLessThan(n);
    expect(first.stats().published).toBe(marked.length);
    // Nothing confirmed was left unmarked and nothing marked is missing: the queue holds exactly the marked rows,
    // and they are the oldest ones.
    await eventually(async () => (await broker.messageCount(t.queue)) === marked.length, { timeoutMs: 5000, message: 'queue and marks differ' });
    expect(atStop.slice(0, marked.length).every((r) => r.published)).toBe(true);

    const second = startRelay({ topology: t.topology, batchSize: 200 });
    await eventually(async () => (await rows()).every((r) => r.published), { timeoutMs: 30_000 });
    await eventually(() => second.stats().published === n - marked.length);
    await eventually(async () => (await broker.messageCount(t.queue)) === n, { timeoutMs: 5000 });
  });

  it('the broker connection lost mid-pipeline: no row is marked without its confirm, every row goes out', async () => {
    const t = await ownTopology('cut', 50_000);
    const proxy = await cuttableProxy();
    const received = await consume(t.queue, { prefetch: 500 });
    const n = 20_000;
    await insertRows(t.names.tasks, n);
    const relay = startRelay({ topology: t.topology, amqpUrl: proxy.url, batchSize: 200 });
    // Cut while a good part is still to go: publishes sent in the cut never reach the broker.
    await eventually(() => relay.stats().published >= 2000, { timeoutMs: 30_000, intervalMs: 5 });
    const before = relay.stats().published;
    await proxy.cut(150);
    const atCut = await rows();
    expect(before).toBeLessThan(n);
    // Whatever was marked by then had been confirmed: it is in the queue (or on its way to the consumer).
    await eventually(() => {
      const ids = new Set(received);
      return atCut.filter((r) => r.published).every((r) => ids.has(r.message_id));
    }, { timeoutMs: 10_000, message: 'a row marked published never reached the queue' });

    const all = await eventually(async () => {
      const r = await rows();
      return r.every((x) => x.published) ? r : null;
    }, { timeoutMs: 60_000 });
    await eventually(() => relay.stats().published === n, { timeoutMs: 10_000 });
    await eventually(() => new Set(received).size === n, { timeoutMs: 10_000 });
    // The cut refused the rows in flight: they were set back and sent again on a new connection.
    expect(all.some((r) => r.attempts > 0 && /closed|not sent/i.test(r.last_error ?? ''))).toBe(true);
    expect(relay.stats().failed).toBeGreaterThan(0);
    checkDelivery(all, received, relay.stats().published, { duplicates: true });
  });

  it('a queue at its max length nacking batches in flight: refused rows retry, each goes out once', async () => {
    const t = await ownTopology('full', 300);
    const n = 3000;
    await insertRows(t.names.tasks, n);
    const relay = startRelay({ topology: t.topology, batchSize: 50 });
    // Nobody consumes until the full queue refused rows (on a loaded machine a consumer started
    // first could keep up with the relay and the queue would never fill), then one slower than the relay.
    await eventually(async () => (await rows()).some((r) => r.attempts > 0), { timeoutMs: 30_000, message: 'the full queue never refused a publish' });
    const received = await consume(t.queue, { prefetch: 100, ackEveryMs: 20 });
    const all = await eventually(async () => {
      const r = await rows();
      return r.every((x) => x.published) ? r : null;
    }, { timeoutMs: 60_000 });
    await eventually(() => relay.stats().published === n, { timeoutMs: 10_000 });
    await eventually(() => received.length >= n, { timeoutMs: 10_000 });
    const refused = all.filter((r) => r.attempts > 0);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect(r.last_error).toMatch(/nack/i);
    expect(relay.stats().failed).toBeGreaterThanOrEqual(refused.length);
    checkDelivery(all, received, relay.stats().published, { duplicates: false });
  });
});

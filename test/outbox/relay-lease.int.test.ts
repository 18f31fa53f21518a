import net from 'node:net';
import type { Channel } from 'amqplib';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/infra/logger.js';
import { createRelay, declareTopology, type RelayOptions } from '../../src/outbox/index.js';
import { openTestBroker, testTopology, uniquePrefix, type TestBroker } from '../helpers/broker.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { freePort } from '../helpers/processes.js';

// Leadership is a lease in relay_lease whose epoch fences every write of a leader. What must
// hold when a leader loses it: from the moment another epoch took the lease, no write of the old
// epoch lands; the old leader notices, stands by without crashing and can lead again later; no
// row is ever marked without its confirm; every row still goes out.

const prefix = uniquePrefix();
const logger = createLogger(process.env.RELAY_LOG ?? 'silent');

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
  tdb = await createTestDatabase('relaylease');
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.stop()));
  for (const f of cleanups.splice(0).reverse()) await f();
  await tdb?.drop();
});

async function ownTopology(label: string, maxLength: number) {
  const t = testTopology(`${prefix}${label}_`, { taskQueueMaxLength: maxLength, tiers: ['light'] });
  broker.track(t.topology);
  await declareTopology(broker.channel, t.topology);
  cleanups.push(() => broker.drop(t.topology));
  return { ...t, queue: t.names.taskQueue('light', 'normal') };
}

function startRelay(overrides: Partial<RelayOptions> & Pick<RelayOptions, 'topology'>) {
  const relay = createRelay({ databaseUrl: tdb.url, amqpUrl: broker.url, logger, batchSize: 100, pollIntervalMs: 100, retryMaxMs: 400, ...overrides });
  running.push(relay);
  void relay.start();
  return relay;
}

async function insertRows(exchange: string, n: number, label = 'r') {
  await tdb.pool.query(
    `INSERT INTO outbox (message_id, stream_id, exchange, routing_key, headers, body)
     SELECT gen_random_uuid(), $3 || (g % 7), $1, 'light.normal', '{}'::jsonb, jsonb_build_object('seq', g)
       FROM generate_series(1, $2::int) g`,
    [exchange, n, label],
  );
}

interface Row {
  id: number;
  message_id: string;
  published: boolean;
  published_epoch: number | null;
  attempts: number;
}

async function rows(): Promise<Row[]> {
  const r = await tdb.pool.query<Row>('SELECT id, message_id, published_at IS NOT NULL AS published, published_epoch, attempts FROM outbox ORDER BY id');
  return r.rows;
}

async function allPublished(): Promise<Row[] | null> {
  const r = await rows();
  return r.length > 0 && r.every((x) => x.published) ? r : null;
}

/** Rows an epoch has marked, and when it marked the last of them: must not move once another epoch holds the lease. */
async function markedBy(epoch: number): Promise<{ n: number; last: string | null }> {
  const r = await tdb.pool.query<{ n: number; last: string | null }>(
    `SELECT count(*)::int AS n, max(published_at)::text AS last FROM outbox WHERE published_epoch = $1`,
    [epoch],
  );
  return r.rows[0] ?? { n: 0, last: null };
}

async function consume(queue: string) {
  const ch: Channel = await broker.scratch();
  const received: string[] = [];
  await ch.prefetch(500);
  const { consumerTag } = await ch.consume(queue, (msg) => {
    if (!msg) return;
    received.push(String(msg.properties.messageId));
    ch.ack(msg);
  });
  cleanups.push(async () => {
    await ch.cancel(consumerTag).catch(() => {});
    await ch.close().catch(() => {});
  });
  return received;
}

/**
 * A TCP proxy to PostgreSQL that can be cut off like a network partition: `partition()` lets
 * nothing through either way and keeps every connection open (no RST, no FIN: the peers only
 * see silence); new connections hang too. `heal()` drops what was open and forwards again.
 */
async function partitionableProxy(databaseUrl: string) {
  const target = new URL(databaseUrl);
  const port = await freePort();
  let cut = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => client.destroy());
    if (cut) {
      client.on('data', () => {});
      return;
    }
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    const both = () => {
      client.destroy();
      upstream.destroy();
    };
    upstream.on('error', both);
    client.on('close', both);
    upstream.on('close', both);
    client.on('data', (d: Buffer) => {
      if (!cut) upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      if (!cut) client.write(d);
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  cleanups.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const url = new URL(databaseUrl);
  url.host = `127.0.0.1:${port}`;
  return {
    url: url.toString(),
    partition() {
      cut = true;
    },
    heal() {
      for (const s of sockets) s.destroy();
      cut = false;
    },
  };
}

describe('relay leadership lease', () => {
  it('a lease taken over mid-pipeline: no write of the old epoch lands after the takeover, the old leader stands by, no row is marked without its confirm', async () => {
    const t = await ownTopology('steal', 50_000);
    const received = await consume(t.queue);
    const n = 20_000;
    await insertRows(t.names.tasks, n);
    // A lease far longer than the test: neither the local deadline nor a renewal can stop this
    // leader's writes in time; only the fencing of each write by its epoch can.
    const relay = startRelay({ topology: t.topology, batchSize: 200, pipelineDepth: 4, leaseMs: 120_000 });
    await eventually(() => relay.stats().published >= 2000, { timeoutMs: 30_000, intervalMs: 5 });
    const old = relay.stats().epoch;
    expect(old).toBeGreaterThan(0);

    // Another replica takes the lease (as a standby does once it expired) while batches are in flight.
    const taken = await tdb.pool.query<{ epoch: number }>(
      `UPDATE relay_lease SET holder = 'another-relay', epoch = epoch + 1, expires_at = now() + interval '1 hour', acquired_at = now() RETURNING epoch`,
    );
    const thief = taken.rows[0]?.epoch as number;
    // Read after the takeover committed: every write of the old epoch that will ever land is in here.
    const atTakeover = await markedBy(old);
    expect(atTakeover.n).toBeLessThan(n);

    // The next fenced write tells the relay: it stands by without crashing.
    await eventually(() => relay.stats().leasesLost === 1 && !relay.stats().leader, { timeoutMs: 10_000, message: 'the relay never noticed the lost lease' });
    expect(relay.stats()).toMatchObject({ leader: false, epoch: 0 });
    // Whatever it had marked was confirmed: in the queue (or on its way to the consumer).
    const marked = (await rows()).filter((r) => r.published);
    await eventually(() => {
      const ids = new Set(received);
      return marked.every((r) => ids.has(r.message_id));
    }, { timeoutMs: 10_000, message: 'a row marked published never reached the queue' });
    // It keeps standing by while the other epoch holds the lease, and its writes stay refused.
    await eventually(async () => (await tdb.pool.query(`SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = 'fogsched-relay-lease'`, [tdb.name])).rowCount === 1);
    expect(await markedBy(old)).toEqual(atTakeover);
    expect(await markedBy(thief)).toEqual({ n: 0, last: null });
    expect(relay.stats().leader).toBe(false);

    // The other replica goes away (its lease given back): this one leads again with a newer epoch and finishes.
    await tdb.pool.query(`UPDATE relay_lease SET expires_at = '-infinity' WHERE holder = 'another-relay'`);
    await eventually(() => relay.stats().epoch > thief, { timeoutMs: 10_000 });
    const again = relay.stats().epoch;
    const all = await eventually(allPublished, { timeoutMs: 60_000 });
    await eventually(() => new Set(received).size === n, { timeoutMs: 20_000 });
    // Still nothing more under the old epoch: its late confirms were never turned into marks.
    expect(await markedBy(old)).toEqual(atTakeover);
    expect(new Set(all.map((r) => r.published_epoch))).toEqual(new Set([old, again]));
    expect(all.filter((r) => r.published_epoch === old)).toHaveLength(atTakeover.n);
    // One publisher at a time, each in id order: the first time each message came, it came in id order
    // (rows sent by the old epoch but not marked were sent again: duplicates, never out of order).
    const firsts: string[] = [];
    const twice: string[] = [];
    const seen = new Set<string>();
    for (const m of received) {
      if (seen.has(m)) twice.push(m);
      else {
        seen.add(m);
        firsts.push(m);
      }
    }
    expect(firsts).toEqual(all.map((r) => r.message_id));
    // Only rows the new epoch marked came twice (sent by both, marked by the one that held the lease).
    const resent = new Set(all.filter((r) => r.published_epoch === again).map((r) => r.message_id));
    expect(twice.filter((m) => !resent.has(m))).toEqual([]);
    expect(all.every((r) => r.attempts === 0)).toBe(true);
  });

  it('a leader cut off from PostgreSQL stops at its own deadline, the standby takes over once the lease expired, and after the partition heals the old leader stands by', async () => {
    const t = await ownTopology('partition', 10_000);
    const received = await consume(t.queue);
    const proxy = await partitionableProxy(tdb.url);
    const leaseMs = 2000;
    const a = startRelay({ topology: t.topology, databaseUrl: proxy.url, leaseMs });
    await eventually(() => a.stats().leader);
    const b = startRelay({ topology: t.topology, leaseMs });
    await insertRows(t.names.tasks, 10, 'before');
    await eventually(allPublished);
    const first = a.stats().epoch;
    expect((await rows()).every((r) => r.published_epoch === first)).toBe(true);
    expect(b.stats()).toMatchObject({ leader: false, published: 0 });

    proxy.partition();
    // No renewal gets through: it stops leading at its own deadline (it cannot even tell the database).
    await eventually(() => !a.stats().leader, { timeoutMs: 2 * leaseMs, message: 'the cut-off leader kept leading past its lease' });
    expect(a.stats().leasesLost).toBe(1);
    // The database saw the lease expire: the standby took it over with a newer epoch.
    await eventually(() => b.stats().leader, { timeoutMs: 10_000 });
    const second = b.stats().epoch;
    expect(second).toBe(first + 1);
    await insertRows(t.names.tasks, 10, 'during');
    const all = await eventually(async () => {
      const r = await allPublished();
      return r && r.length === 20 ? r : null;
    });
    expect(all.slice(10).every((r) => r.published_epoch === second)).toBe(true);
    await eventually(() => new Set(received).size === 20);

    // Healed: the old leader reconnects and stands by while the other holds the lease.
    proxy.heal();
    await eventually(async () => (await tdb.pool.query(`SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = 'fogsched-relay-lease'`, [tdb.name])).rowCount === 2, {
      timeoutMs: 15_000,
      message: 'the old leader never came back as a standby',
    });
    expect(a.stats()).toMatchObject({ leader: false, leasesLost: 1 });
    expect(b.stats().leader).toBe(true);
    // And it can lead again: the other one stops (giving the lease back), it takes over.
    await b.stop();
    await eventually(() => a.stats().leader, { timeoutMs: 10_000 });
    const third = a.stats().epoch;
    expect(third).toBe(second + 1);
    await insertRows(t.names.tasks, 5, 'after');
    const end = await eventually(async () => {
      const r = await allPublished();
      return r && r.length === 25 ? r : null;
    });
    expect(end.slice(20).every((r) => r.published_epoch === third)).toBe(true);
    await eventually(() => new Set(received).size === 25);
  });

  it('a clean stop gives the lease back: the standby takes over without waiting for it to expire', async () => {
    const t = await ownTopology('handover', 1000);
    // A lease of a minute: a takeover within seconds can only come from the release.
    const a = startRelay({ topology: t.topology, leaseMs: 60_000 });
    await eventually(() => a.stats().leader);
    const b = startRelay({ topology: t.topology, leaseMs: 60_000 });
    await insertRows(t.names.tasks, 3);
    await eventually(allPublished);
    const epoch = a.stats().epoch;
    await a.stop();
    await eventually(() => b.stats().leader, { timeoutMs: 5000 });
    expect(b.stats().epoch).toBe(epoch + 1);
    await insertRows(t.names.tasks, 2);
    const all = await eventually(async () => {
      const r = await allPublished();
      return r && r.length === 5 ? r : null;
    });
    expect(all.map((r) => r.published_epoch)).toEqual([epoch, epoch, epoch, epoch + 1, epoch + 1]);
  });
});

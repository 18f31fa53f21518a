import net from 'node:net';
import type { GetMessage } from 'amqplib';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createBrokerClient, type BrokerConnection } from '../../src/broker/index.js';
import { createLogger, redactUrl } from '../../src/infra/logger.js';
import { tcpProxy } from '../helpers/processes.js';

// Every connection goes through a TCP proxy of this file in front of the shared broker (a
// proxy's down() cuts them as a dying node would), or to a "silent" server that accepts TCP
// and never answers (a hanging node). Only exclusive classic queues are declared: they go
// with their connection.

const logger = createLogger(process.env.TEST_LOG_LEVEL ?? 'silent');
/** Keeps the list's order (see shuffled): the tests say which node comes first. */
const inOrder = () => 0.999;

let target: { host: string; port: number };
const open: BrokerConnection[] = [];
const teardown: (() => Promise<void>)[] = [];

beforeAll(() => {
  const u = new URL(inject('amqpUrl'));
  target = { host: u.hostname, port: Number(u.port || 5672) };
});
afterEach(async () => {
  for (const c of open.splice(0)) await c.close();
  for (const t of teardown.splice(0)) await t();
});

/** The shared broker's URL with its host and port replaced. */
function urlAt(port: number): string {
  const u = new URL(inject('amqpUrl'));
  u.hostname = '127.0.0.1';
  u.port = String(port);
  return u.toString();
}

async function proxy() {
  const p = await tcpProxy(target);
  teardown.push(() => p.down());
  return { ...p, url: urlAt(p.port) };
}

/** A server that takes TCP connections and never says a word: the AMQP handshake hangs. */
async function silentServer(): Promise<{ url: string; accepted: () => number }> {
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  teardown.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: urlAt((server.address() as net.AddressInfo).port), accepted: () => accepted };
}

async function connect(client: ReturnType<typeof createBrokerClient>, signal = new AbortController().signal): Promise<BrokerConnection> {
  const c = await client.connect(signal);
  if (!c) throw new Error('not connected');
  open.push(c);
  return c;
}

/** A message on an exclusive queue of `conn`, taken with a manual ack. */
async function aDelivery(conn: BrokerConnection) {
  const ch = await conn.channel('test');
  const { queue } = await ch.raw.assertQueue('', { exclusive: true });
  ch.raw.sendToQueue(queue, Buffer.from('x'));
  let msg: GetMessage | false = false;
  for (let i = 0; i < 100 && msg === false; i++) msg = await ch.raw.get(queue, { noAck: false });
  if (msg === false) throw new Error('no message');
  return { ch, msg };
}

describe('connecting', () => {
  it('reconnects after the broker connection is cut; a delivery of the dead channel is dropped, not acked on the new one', async () => {
    const p = await proxy();
    const client = createBrokerClient({ urls: p.url, name: 'fogsched-test-reconnect', logger, backoff: { baseMs: 20, maxMs: 100 } });
    const first = await connect(client);
    const { ch, msg } = await aDelivery(first);
    expect(first.isOpen()).toBe(true);

    await p.down();
    await first.closed;
    expect(first.isOpen()).toBe(false);
    expect(ch.isOpen()).toBe(false);
    // The broker returned it when the channel went: the ack is dropped, and nothing throws.
    expect(ch.settle(msg, 'ack')).toBe(false);

    // The node is back a moment later: connect retries (with backoff) until it is.
    const back = setTimeout(() => void p.up(), 300);
    teardown.push(async () => clearTimeout(back));
    const second = await connect(client);
    expect(second.isOpen()).toBe(true);
    const again = await aDelivery(second);
    expect(again.ch.generation).toBeGreaterThan(ch.generation);
    expect(again.ch.settle(again.msg, 'ack')).toBe(true);
  });

  it('takes the nodes in turn: each new connection starts after the node used last', async () => {
    const [a, b] = [await proxy(), await proxy()];
    const client = createBrokerClient({ urls: `${a.url},${b.url}`, name: 'fogsched-test-turns', logger, random: inOrder });
    expect(client.urls).toEqual([a.url, b.url]);
    const brokers: string[] = [];
    for (let i = 0; i < 3; i++) {
      const c = await connect(client);
      brokers.push(c.broker);
      await c.close();
    }
    expect(brokers).toEqual([a.url, b.url, a.url].map(redactUrl));
  });

  it('passes over a node that hangs (its attempt times out) to the next one', async () => {
    const silent = await silentServer();
    const p = await proxy();
    const client = createBrokerClient({ urls: [silent.url, p.url], name: 'fogsched-test-hang', logger, random: inOrder, connectTimeoutMs: 300, backoff: { baseMs: 10, maxMs: 50 } });
    const c = await connect(client);
    expect(silent.accepted()).toBe(1);
    expect(c.broker).toBe(redactUrl(p.url));
  });

  it('gives up at once when aborted while a node hangs, and sets the AMQP heartbeat unless the URL sets one', async () => {
    const silent = await silentServer();
    const client = createBrokerClient({ urls: silent.url, name: 'fogsched-test-abort', logger, connectTimeoutMs: 30_000 });
    const abort = new AbortController();
    const connecting = client.connect(abort.signal);
    await new Promise((resolve) => setTimeout(resolve, 100));
    abort.abort();
    const outcome = await Promise.race([connecting, new Promise((resolve) => setTimeout(() => resolve('still connecting'), 2000))]);
    expect(outcome).toBeUndefined();

    const p = await proxy();
    const byDefault = await connect(createBrokerClient({ urls: p.url, name: 'fogsched-test-hb', logger, heartbeatS: 7 }));
    const ownUrl = await connect(createBrokerClient({ urls: `${p.url}?heartbeat=13`, name: 'fogsched-test-hb', logger, heartbeatS: 7 }));
    // amqplib keeps the negotiated value (the lower of ours and the server's, 60 by default).
    expect((byDefault.model.connection as unknown as { heartbeat: number }).heartbeat).toBe(7);
    expect((ownUrl.model.connection as unknown as { heartbeat: number }).heartbeat).toBe(13);
  });

  it('close() returns within its wait even when the broker no longer answers', async () => {
    // A proxy that stops forwarding but keeps the sockets open: the close handshake never completes.
    const silentlyDropped = net.createServer();
    const held = new Set<net.Socket>();
    silentlyDropped.on('connection', (client) => {
      const upstream = net.connect(target.port, target.host);
      held.add(client).add(upstream);
      for (const s of [client, upstream]) s.on('error', () => {});
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve) => silentlyDropped.listen(0, '127.0.0.1', resolve));
    teardown.push(async () => {
      for (const s of held) s.destroy();
      await new Promise<void>((resolve) => silentlyDropped.close(() => resolve()));
    });
    const client = createBrokerClient({ urls: urlAt((silentlyDropped.address() as net.AddressInfo).port), name: 'fogsched-test-close', logger });
    const c = await connect(client);
    for (const s of held) {
      s.unpipe();
      s.pause();
    }
    const started = performance.now();
    await c.close(300);
    await c.closed;
    expect(c.isOpen()).toBe(false);
    expect(performance.now() - started).toBeLessThan(2000);
  });
});

describe('publishing with confirms', () => {
  let conn: BrokerConnection;
  beforeAll(async () => {
    const client = createBrokerClient({ urls: inject('amqpUrl'), name: 'fogsched-test-publish', logger });
    const c = await client.connect(new AbortController().signal);
    if (!c) throw new Error('not connected');
    conn = c;
  });
  afterAll(async () => {
    await conn?.close();
  });

  it('confirms what a queue took, refuses what it nacked (full) or what reached no queue (mandatory, returned)', async () => {
    const ch = await conn.confirmChannel('test');
    const { queue } = await ch.raw.assertQueue('', { exclusive: true, arguments: { 'x-max-length': 1, 'x-overflow': 'reject-publish' } });
    const outcomes = await ch.publishAll([
      { exchange: '', routingKey: queue, body: Buffer.from('1'), options: { messageId: 'm1' } },
      { exchange: '', routingKey: queue, body: Buffer.from('2'), options: { messageId: 'm2' } },
      { exchange: '', routingKey: `${queue}-nowhere`, body: Buffer.from('3'), options: { messageId: 'm3', mandatory: true } },
      { exchange: '', routingKey: `${queue}-nowhere`, body: Buffer.from('4'), options: { messageId: 'm4' } },
    ]);
    expect(outcomes[0]).toBeUndefined();
    expect(outcomes[1]).toBe('message nacked');
    expect(outcomes[2]).toBe(`unroutable: no queue bound to /${queue}-nowhere`);
    expect(outcomes[3]).toBeUndefined(); // not mandatory: dropped by the broker, and confirmed
    await expect(ch.publishConfirmed({ exchange: '', routingKey: queue, body: Buffer.from('5') })).rejects.toThrow('message nacked');
    await ch.raw.purgeQueue(queue);
    await expect(ch.publishConfirmed({ exchange: '', routingKey: queue, body: Buffer.from('6') })).resolves.toBeUndefined();
    expect(await ch.publishAll([])).toEqual([]);
    await ch.close();
  });

  it('a message that cannot be sent fails at once, and gives its channel up (its confirms would be taken for later messages)', async () => {
    const ch = await conn.confirmChannel('test');
    const { queue } = await ch.raw.assertQueue('', { exclusive: false, autoDelete: true });
    teardown.push(async () => {
      const scratch = await conn.channel('cleanup');
      await scratch.raw.deleteQueue(queue);
      await scratch.close();
    });
    // amqplib cannot encode a header holding a BigInt: the publish throws after its confirm callback was queued.
    const outcomes = await ch.publishAll([
      { exchange: '', routingKey: queue, body: Buffer.from('bad'), options: { headers: { bad: 1n } } },
      { exchange: '', routingKey: queue, body: Buffer.from('after') },
    ]);
    expect(outcomes[0]).toMatch(/^not sent: /);
    expect(outcomes[1]).toMatch(/^not sent: /);
    expect(ch.isOpen()).toBe(false);
    await ch.closed;
    let called = 0;
    expect(ch.publish({ exchange: '', routingKey: queue, body: Buffer.from('later') }, () => called++)).toBe(false);
    expect(called).toBe(1);
    // Nothing of it reached the queue, and the connection is fine.
    const other = await conn.channel('check');
    expect((await other.raw.checkQueue(queue)).messageCount).toBe(0);
    await other.close();
  });
});

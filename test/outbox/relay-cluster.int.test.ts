import net from 'node:net';
import { afterAll, afterEach, beforeAll, inject, it } from 'vitest';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { createRelay, declareTopology } from '../../src/outbox/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { openTestBroker, testTopology, uniquePrefix, type TestBroker } from '../helpers/broker.js';

// AMQP_URL lists a cluster's nodes; one of them hangs (it takes the TCP connection and never
// answers the AMQP handshake, like a node that is frozen or half cut off). The relay connects
// within a bounded round (5 s): it used to start every round at the first URL again, so a
// hanging first node kept it from ever publishing.

const prefix = uniquePrefix();
const { topology, names } = testTopology(prefix, { tiers: ['light'] });
const logger = createLogger(process.env.RELAY_LOG ?? 'silent');

let broker: TestBroker;
let tdb: TestDatabase;
let silent: net.Server;
const sockets = new Set<net.Socket>();
const running: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  broker = await openTestBroker();
  broker.track(topology);
  await declareTopology(broker.channel, topology);
  tdb = await createTestDatabase('relaycluster');
  silent = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.stop()));
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => silent?.close(() => resolve()));
  await tdb?.drop();
  await broker?.cleanup();
});

it('publishes when the first node of AMQP_URL hangs: the next round goes to the next node', async () => {
  const hanging = new URL(inject('amqpUrl'));
  hanging.hostname = '127.0.0.1';
  hanging.port = String((silent.address() as net.AddressInfo).port);
  const relay = createRelay({
    databaseUrl: tdb.url,
    amqpUrl: `${hanging.toString()},${broker.url}`,
    topology,
    logger,
    batchSize: 50,
    pollIntervalMs: 200,
    retryMaxMs: 500,
  });
  running.push(relay);
  await relay.start();
  const service = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 100 });
  await service.submitBatch([{ type: 'noop' }, { type: 'noop' }, { type: 'noop' }], { tenant: 'default', actor: 'test' });
  await eventually(() => relay.stats().published === 3, { timeoutMs: 20_000, message: 'the relay never published past the hanging node' });
  await eventually(async () => (await broker.messageCount(names.taskQueue('light', 'normal'))) === 3, { timeoutMs: 5000 });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendTierScaled, createAutoscaler, readTierStreamState, type Autoscaler, type ScaleBackend } from '../../src/autoscaler/index.js';
import { declareTopology } from '../../src/outbox/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { openTestBroker, testTopology, uniquePrefix, type TestBroker } from '../helpers/broker.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

const logger = createLogger(process.env.AUTOSCALER_LOG ?? 'silent');

/**
 * The replicas of one "service" both autoscaler replicas scale, like a Swarm service: our own
 * backend interface, in memory, recording every call (the backends themselves have their own tests).
 */
function sharedBackend() {
  const replicas = new Map<string, number>();
  const calls: { holder: string; tier: string; to: number }[] = [];
  const forHolder = (holder: string): ScaleBackend => ({
    name: 'memory',
    replicas: (tier) => Promise.resolve(replicas.get(tier) ?? 0),
    scale: (tier, to) => {
      calls.push({ holder, tier, to });
      replicas.set(tier, to);
      return Promise.resolve();
    },
    close: () => Promise.resolve(),
  });
  return { replicas, calls, forHolder };
}

let tdb: TestDatabase;
let broker: TestBroker;
const prefix = uniquePrefix();
const { topology, names } = testTopology(prefix);

beforeAll(async () => {
  tdb = await createTestDatabase('autoscaler');
  broker = await openTestBroker();
  broker.track(topology);
  await declareTopology(broker.channel, topology);
});

afterAll(async () => {
  await broker.cleanup();
  await tdb.drop();
});

interface Row {
  data: { from: number; to: number; trigger: string; depth: number };
  actor: string;
  version: number;
}

const scaled = async () =>
  (
    await tdb.pool.query<Row>(`SELECT data, metadata->>'actor' AS actor, stream_version AS version FROM events WHERE stream_id = 'autoscale:light' ORDER BY stream_version`)
  ).rows;

describe('autoscaler role (real PostgreSQL and RabbitMQ)', () => {
  it('one replica scales at a time; the standby takes over with the log as its memory; the decisions form one chain', async () => {
    const backend = sharedBackend();
    const make = (holder: string): Autoscaler =>
      createAutoscaler({
        db: tdb.db,
        databaseUrl: tdb.url,
        amqpUrl: broker.url,
        topology,
        names,
        tiers: [{ tier: 'light', min: 1, max: 3 }],
        policy: { slotsPerReplica: 2, upDepth: 5, downDepth: 0, upWaitMs: 60_000, downWaitMs: 1000, upCooldownMs: 0, downCooldownMs: 300 },
        backend: backend.forHolder(holder),
        intervalMs: 100,
        leaseMs: 1000,
        holder,
        logger,
      });
    const a = make('scaler-a');
    const b = make('scaler-b');
    await a.start();
    await b.start();
    try {
      await eventually(() => backend.replicas.get('light') === 1, { timeoutMs: 20_000, message: 'the minimum is set' });
      expect([a.leading(), b.leading()].filter(Boolean)).toHaveLength(1);
      const leader = a.leading() ? a : b;
      const standby = leader === a ? b : a;
      const leaderId = leader === a ? 'scaler-a' : 'scaler-b';

      // A backlog of 30 ready messages (nothing consumes them): 30 / 5 per replica → the maximum, 3.
      for (let i = 0; i < 30; i++) broker.channel.sendToQueue(names.taskQueue('light', 'normal'), Buffer.from('{}'), { persistent: true });
      await eventually(() => backend.replicas.get('light') === 3, { timeoutMs: 20_000, message: 'the backlog raises light to 3' });

      // The leader goes; the queue drains; the standby takes over and brings the tier down one at a time.
      await leader.stop();
      await broker.channel.purgeQueue(names.taskQueue('light', 'normal'));
      await eventually(() => backend.replicas.get('light') === 1 && standby.leading(), { timeoutMs: 30_000, message: 'the standby lowers light to 1' });
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(backend.replicas.get('light')).toBe(1);

      const rows = await scaled();
      expect(rows.map((r) => [r.data.from, r.data.to, r.data.trigger])).toEqual([
        [0, 1, 'below-min'],
        [1, 3, 'backlog'],
        [3, 2, 'idle'],
        [2, 1, 'idle'],
      ]);
      expect(rows[1]?.data.depth).toBe(30);
      expect(rows.map((r) => r.version)).toEqual([1, 2, 3, 4]);
      expect(rows.slice(0, 2).map((r) => r.actor)).toEqual([leaderId, leaderId]);
      expect(rows.slice(2).every((r) => r.actor !== leaderId)).toBe(true);
      // Every call to the backend was made by whoever held the lease, and matches a recorded decision.
      expect(backend.calls.map((c) => c.to)).toEqual([1, 3, 2, 1]);
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('a writer holding an old stream version records nothing (a replaced leader cannot act)', async () => {
    const stale = await readTierStreamState(tdb.db, 'medium');
    const event = (actor: string) => ({
      type: 'FogTierScaled' as const,
      data: { tier: 'medium', from: 0, to: 1, trigger: 'below-min' as const, reason: `by ${actor}`, depth: 0, queued: 0, running: 0, oldestWaitMs: null, avgWaitMs: null, min: 1, max: 2, backend: 'memory', at: new Date().toISOString() },
    });
    expect(await appendTierScaled(tdb.db, stale, event('new-leader'), 'new-leader')).toMatchObject({ version: stale.version + 1 });
    expect(await appendTierScaled(tdb.db, stale, event('old-leader'), 'old-leader')).toBeNull();
    const { rows } = await tdb.pool.query<{ actor: string }>(`SELECT metadata->>'actor' AS actor FROM events WHERE stream_id = 'autoscale:medium'`);
    expect(rows).toEqual([{ actor: 'new-leader' }]);
  });
});

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { tcpProxy } from '../helpers/processes.js';
import type { FogHeartbeatStats } from '../../src/fog-node/heartbeat.js';
import { coordinator, fogHeartbeat, newPrefix, nodeEvents, redisKeys, stack, testRedis } from './helpers.js';
import { inject } from 'vitest';
import { readClusterView } from '../../src/infra/cluster-view.js';

let db: TestDatabase;
const redis = testRedis();
const s = stack();

beforeAll(async () => {
  db = await createTestDatabase('coordfog');
});
afterEach(async () => {
  await s.stopAll();
});
afterAll(async () => {
  redis.disconnect();
  await db.drop();
});

describe('fog-node membership', () => {
  it('a node advertises its zone and labels: in fog:node:{id}, in FogNodeJoined and in the cluster view (null and {} without)', async () => {
    const prefix = newPrefix();
    const keys = redisKeys(prefix);
    const placed = s.add(fogHeartbeat({ prefix, nodeId: 'site-a-1', zone: 'site-a', labels: { camera: 'yes', gpu: 'true' } }), (b) => b.stop());
    const plain = s.add(fogHeartbeat({ prefix, nodeId: 'plain-1' }), (b) => b.stop());
    placed.start();
    plain.start();
    await eventually(async () => (await redis.scard(keys.fogNodes)) === 2);
    expect(await redis.hgetall(keys.fogNode('site-a-1'))).toMatchObject({ zone: 'site-a', labels: '{"camera":"yes","gpu":"true"}' });
    const c = s.add(coordinator(db, { prefix }), (x) => x.stop());
    await c.start();
    await eventually(async () => (await nodeEvents(db, 'site-a-1')).length === 1 && (await nodeEvents(db, 'plain-1')).length === 1, { timeoutMs: 5000 });
    expect((await nodeEvents(db, 'site-a-1'))[0]?.data).toMatchObject({ nodeId: 'site-a-1', zone: 'site-a', labels: { camera: 'yes', gpu: 'true' } });
    expect((await nodeEvents(db, 'plain-1'))[0]?.data).toMatchObject({ nodeId: 'plain-1', zone: null, labels: {} });
    const view = await readClusterView(redis, keys, { brokers: [], staleAfterMs: 60_000 });
    expect(view.fogNodes.map((n) => [n.id, n.zone, n.labels])).toEqual([
      ['plain-1', null, {}],
      ['site-a-1', 'site-a', { camera: 'yes', gpu: 'true' }],
    ]);
  });

  it('a heartbeat writes fog:nodes and fog:node:{id}; the coordinator records the join, then reaps the expired node with FogNodeLost and its in-flight task ids', async () => {
    const prefix = newPrefix();
    const keys = redisKeys(prefix);
    const node = await crashableBeat(prefix, 'edge-1', () => ({ inFlight: 2, cpu: 0.5, rssMb: 81.4, inFlightTaskIds: ['task-a', 'task-b'] }));
    await eventually(async () => (await redis.sismember(keys.fogNodes, 'edge-1')) === 1);
    const hash = await redis.hgetall(keys.fogNode('edge-1'));
    expect(hash).toMatchObject({ tier: 'light', slots: '4', inFlight: '2', cpu: '0.500', mem: '81', version: '0.0.0-test', state: 'up' });
    expect(JSON.parse(hash.inFlightTaskIds as string)).toEqual(['task-a', 'task-b']);
    const ttl = await redis.pttl(keys.fogNode('edge-1'));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(1000);

    const c = s.add(coordinator(db, { prefix }), (x) => x.stop());
    await c.start();
    await eventually(async () => (await nodeEvents(db, 'edge-1')).length === 1, { timeoutMs: 5000 });
    expect((await nodeEvents(db, 'edge-1'))[0]).toMatchObject({ type: 'FogNodeJoined', stream_version: 1, data: { nodeId: 'edge-1', tier: 'light', slots: 4, version: '0.0.0-test' } });

    // The node dies without a goodbye: its hash expires after the TTL, the coordinator reaps it.
    await node.crash();
    await eventually(async () => (await redis.sismember(keys.fogNodes, 'edge-1')) === 0, { timeoutMs: 1000 + 200 + 3000 });
    const events = await nodeEvents(db, 'edge-1');
    expect(events.map((e) => e.type)).toEqual(['FogNodeJoined', 'FogNodeLost']);
    expect(events[1]?.data).toMatchObject({ nodeId: 'edge-1', tier: 'light', reason: 'heartbeat-expired', inFlightTaskIds: ['task-a', 'task-b'] });
    expect(events[1]?.metadata).toMatchObject({ actor: `coordinator:${c.id}` });
  });

  it('a node that stops says goodbye (state=stopped): reaped at the next round with reason stopped; a node that comes back joins again', async () => {
    const prefix = newPrefix();
    const keys = redisKeys(prefix);
    const c = s.add(coordinator(db, { prefix, intervalMs: 200 }), (x) => x.stop());
    await c.start();
    const first = fogHeartbeat({ prefix, nodeId: 'edge-2', ttlMs: 60_000 });
    first.start();
    await eventually(async () => (await nodeEvents(db, 'edge-2')).length === 1, { timeoutMs: 5000 });
    await first.stop();
    await eventually(async () => (await redis.sismember(keys.fogNodes, 'edge-2')) === 0, { timeoutMs: 3000 });
    expect(await redis.exists(keys.fogNode('edge-2'))).toBe(0);
    const again = s.add(fogHeartbeat({ prefix, nodeId: 'edge-2' }), (b) => b.stop());
    again.start();
    await eventually(async () => (await nodeEvents(db, 'edge-2')).length === 3, { timeoutMs: 5000 });
    const events = await nodeEvents(db, 'edge-2');
    expect(events.map((e) => [e.type, e.stream_version])).toEqual([
      ['FogNodeJoined', 1],
      ['FogNodeLost', 2],
      ['FogNodeJoined', 3],
    ]);
    expect(events[1]?.data).toMatchObject({ reason: 'stopped', inFlightTaskIds: [] });
  });
});

describe('memory', () => {
  it('fog nodes restarting under new ids: neither the leader nor a follower keeps anything about the reaped ones', async () => {
    const prefix = newPrefix();
    const keys = redisKeys(prefix);
    const leader = s.add(coordinator(db, { prefix, coordinatorId: 'mem-a' }), (x) => x.stop());
    await leader.start();
    await eventually(() => leader.isLeader(), { timeoutMs: 3000 });
    const follower = s.add(coordinator(db, { prefix, coordinatorId: 'mem-b' }), (x) => x.stop());
    await follower.start();
    const ids = Array.from({ length: 40 }, (_, i) => `short-${i}`);
    // Four generations of ten nodes: each joins, is seen by both replicas, says goodbye and is reaped.
    for (let g = 0; g < 4; g++) {
      const generation = ids.slice(g * 10, g * 10 + 10);
      const beats = generation.map((nodeId) => fogHeartbeat({ prefix, nodeId, ttlMs: 60_000 }));
      for (const b of beats) b.start();
      await eventually(async () => (await Promise.all(generation.map((id) => nodeEvents(db, id)))).every((e) => e.length === 1), { timeoutMs: 5000 });
      await eventually(() => follower.trackedNodes().seen >= generation.length, { timeoutMs: 3000 });
      await Promise.all(beats.map((b) => b.stop()));
      await eventually(async () => (await redis.scard(keys.fogNodes)) === 0, { timeoutMs: 5000 });
    }
    for (const id of ids) expect((await nodeEvents(db, id)).map((e) => e.type)).toEqual(['FogNodeJoined', 'FogNodeLost']);
    // On main these held one entry per node id ever seen (the leader's stream cache, the follower's heartbeats).
    await eventually(() => [leader, follower].every((c) => c.trackedNodes().seen === 0 && c.trackedNodes().streams === 0), { timeoutMs: 3000 });
  });
});

describe('leadership', () => {
  it('two coordinators: one leads; when it dies without releasing the lease the other takes over within the lease time; a node lost is recorded once', async () => {
    const prefix = newPrefix();
    const keys = redisKeys(prefix);
    const leaseMs = 1500;
    const a = coordinator(db, { prefix, leaseMs, coordinatorId: 'coord-a', releaseLeaseOnStop: false });
    const b = s.add(coordinator(db, { prefix, leaseMs, coordinatorId: 'coord-b' }), (x) => x.stop());
    s.add(a, (x) => x.stop());
    await a.start();
    await eventually(() => a.isLeader(), { timeoutMs: 3000 });
    await b.start();
    expect((await redis.get(keys.coordinatorLease))?.startsWith('coord-a/')).toBe(true);

    const nodes = await Promise.all(['n1', 'n2', 'n3'].map((id) => crashableBeat(prefix, id, () => ({ inFlight: 1, cpu: 0, rssMb: 1, inFlightTaskIds: [`${id}-task`] }))));
    await eventually(async () => (await Promise.all(['n1', 'n2', 'n3'].map((id) => nodeEvents(db, id)))).every((e) => e.length === 1), { timeoutMs: 5000 });
    expect(b.isLeader()).toBe(false);

    // n1 dies, and so does the leader (its lease stays in Redis until it expires).
    await nodes[0]!.crash();
    const killedAt = performance.now();
    await a.stop();
    await eventually(() => b.isLeader(), { timeoutMs: leaseMs + 1000, intervalMs: 20 });
    expect(performance.now() - killedAt).toBeLessThan(leaseMs + 1000);
    expect((await redis.get(keys.coordinatorLease))?.startsWith('coord-b/')).toBe(true);

    await eventually(async () => (await redis.sismember(keys.fogNodes, 'n1')) === 0, { timeoutMs: 5000 });
    // n2 dies under the new leader.
    await nodes[1]!.crash();
    await eventually(async () => (await redis.sismember(keys.fogNodes, 'n2')) === 0, { timeoutMs: 5000 });
    for (const id of ['n1', 'n2']) {
      const events = await nodeEvents(db, id);
      expect(events.map((e) => e.type)).toEqual(['FogNodeJoined', 'FogNodeLost']);
      expect(events[1]?.data).toMatchObject({ inFlightTaskIds: [`${id}-task`] });
    }
    expect((await nodeEvents(db, 'n3')).map((e) => e.type)).toEqual(['FogNodeJoined']);
  });

  it('a leader cut off from Redis loses the lease; when it comes back its writes are refused and it follows', async () => {
    const prefix = newPrefix();
    const keys = redisKeys(prefix);
    const u = new URL(inject('redisUrl'));
    const proxy = s.add(await tcpProxy({ host: u.hostname, port: Number(u.port || 6379) }), (p) => p.down());
    const viaProxy = `redis://127.0.0.1:${proxy.port}`;
    const a = s.add(coordinator(db, { prefix, leaseMs: 1000, coordinatorId: 'coord-a', redisUrl: viaProxy }), (x) => x.stop());
    await a.start();
    await eventually(() => a.isLeader(), { timeoutMs: 3000 });
    const b = s.add(coordinator(db, { prefix, leaseMs: 1000, coordinatorId: 'coord-b' }), (x) => x.stop());
    await b.start();
    const node = await crashableBeat(prefix, 'p1');
    await eventually(async () => (await nodeEvents(db, 'p1')).length === 1, { timeoutMs: 5000 });

    await proxy.down();
    await eventually(() => b.isLeader(), { timeoutMs: 4000, intervalMs: 20 });
    // a's own clock ends its leadership too, before b could take over.
    expect(a.isLeader()).toBe(false);
    await proxy.up();
    await node.crash();
    await eventually(async () => (await redis.sismember(keys.fogNodes, 'p1')) === 0, { timeoutMs: 5000 });
    // a is back on Redis, tries to take the lease, cannot: b keeps it; one FogNodeLost.
    expect(a.isLeader()).toBe(false);
    expect(b.isLeader()).toBe(true);
    expect((await nodeEvents(db, 'p1')).map((e) => e.type)).toEqual(['FogNodeJoined', 'FogNodeLost']);
  });
});

/**
 * A fog heartbeat that reaches Redis through a TCP proxy: `crash()` cuts it off
 * (no goodbye gets through, its hash expires on its own), like a node that died.
 */
async function crashableBeat(prefix: string, nodeId: string, stats?: () => FogHeartbeatStats) {
  const u = new URL(inject('redisUrl'));
  const proxy = s.add(await tcpProxy({ host: u.hostname, port: Number(u.port || 6379) }), (p) => p.down());
  const beat = s.add(fogHeartbeat({ prefix, nodeId, redisUrl: `redis://127.0.0.1:${proxy.port}`, ...(stats ? { stats } : {}) }), (b) => b.stop());
  beat.start();
  return { beat, crash: () => proxy.down() };
}

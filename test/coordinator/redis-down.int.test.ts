import { spawn } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createApiRole } from '../../src/api/api-role.js';
import { loadConfig } from '../../src/infra/config.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { freePort, getJson, postJson } from '../helpers/processes.js';
import { coordinator, fogHeartbeat, logger, newPrefix, nodeEvents, redisKeys, stack, testRedis } from './helpers.js';

let db: TestDatabase;
const s = stack();

beforeAll(async () => {
  db = await createTestDatabase('coordredis');
});
afterEach(async () => {
  await s.stopAll();
});
afterAll(async () => {
  await db.drop();
});

/** A redis-server of this test's own (never the machine's), on a free port, without persistence. */
async function ownRedis(port: number) {
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const client = testRedis(`redis://127.0.0.1:${port}`);
  await eventually(async () => (await client.ping()) === 'PONG', { timeoutMs: 10_000 });
  return {
    client,
    async kill() {
      client.disconnect();
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

describe('Redis stopped mid-run', () => {
  it('the coordinator keeps running, the API answers (cluster: redis unavailable, readyz: degraded, submits accepted), and membership recovers when Redis returns', async () => {
    const port = await freePort();
    const redisUrl = `redis://127.0.0.1:${port}`;
    const prefix = newPrefix();
    const keys = redisKeys(prefix);
    const broker = { node: 'rabbit@machine', url: inject('amqpUrl') };
    let redis = s.add(await ownRedis(port), (r) => r.kill());

    const c = s.add(coordinator(db, { prefix, redisUrl, brokers: [broker], intervalMs: 200, brokerHeartbeatTtlMs: 1000, leaseMs: 1000 }), (x) => x.stop());
    await c.start();
    const beat = s.add(fogHeartbeat({ prefix, nodeId: 'edge-r', redisUrl, ttlMs: 1000 }), (b) => b.stop());
    beat.start();
    const config = loadConfig({
      DATABASE_URL: db.url,
      AMQP_URL: inject('amqpUrl'),
      REDIS_URL: redisUrl,
      REDIS_PREFIX: prefix,
      PORT: '0',
      AMQP_PREFIX: prefix.replace(':', '_'),
      COORDINATOR_BROKERS: `${broker.node}=${broker.url}`,
      COORDINATOR_INTERVAL_MS: '200',
      LOG_LEVEL: 'silent',
    });
    const api = s.add(createApiRole({ config, logger, version: 'test' }), (a) => a.stop());
    await api.start();
    const base = api.address() as string;

    await eventually(async () => (await redis.client.sismember(keys.brokerMembers, broker.node)) === 1 && (await redis.client.get(keys.brokerMaster)) === broker.node, { timeoutMs: 5000 });
    await eventually(async () => (await nodeEvents(db, 'edge-r')).length === 1, { timeoutMs: 5000 });
    const up = await getJson(`${base}/v1/cluster`);
    expect(up).toMatchObject({ redis: 'ok', brokers: [{ name: broker.node, member: true, master: true, healthy: true }], fogNodes: [{ id: 'edge-r', tier: 'light', slots: 4, state: 'up' }] });

    await redis.kill();
    const res = await fetch(`${base}/v1/cluster`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ redis: 'unavailable', brokers: [{ name: broker.node, member: false, healthy: false }], fogNodes: [] });
    const ready = await fetch(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: 'degraded', checks: { postgresql: { ok: true }, redis: { ok: false, critical: false } } });
    const submit = await postJson(`${base}/v1/tasks`, { type: 'noop' });
    expect(submit.status).toBe(202);
    // Several rounds pass with Redis gone; the coordinator neither crashes nor records anything.
    await eventually(() => !c.isLeader(), { timeoutMs: 3000 });

    // Redis comes back empty (no persistence): the coordinator rebuilds the picture.
    redis = s.add(await ownRedis(port), (r) => r.kill());
    await eventually(async () => (await redis.client.sismember(keys.brokerMembers, broker.node)) === 1 && (await redis.client.get(keys.brokerMaster)) === broker.node, { timeoutMs: 10_000 });
    await eventually(async () => (await redis.client.sismember(keys.fogNodes, 'edge-r')) === 1, { timeoutMs: 10_000 });
    await eventually(async () => (await getJson(`${base}/v1/cluster`)).redis === 'ok', { timeoutMs: 10_000 });
    await eventually(async () => (await getJson(`${base}/readyz`)).status === 'ready', { timeoutMs: 10_000 });
    expect(c.isLeader()).toBe(true);
    // The node never stopped beating long enough to expire in the coordinator's eyes: still one join, no loss.
    expect((await nodeEvents(db, 'edge-r')).map((e) => e.type)).toEqual(['FogNodeJoined']);
  });
});

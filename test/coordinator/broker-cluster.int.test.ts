import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createRoles } from '../../src/cli/start.js';
import { loadConfig, parseBrokers } from '../../src/infra/config.js';
import type { Role } from '../../src/infra/role.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { rabbitClusterUnavailable, startRabbitCluster, type RabbitCluster } from '../helpers/rabbit-cluster.js';
import { postJson } from '../helpers/processes.js';
import { coordinator, logger, newPrefix, redisKeys, stack, testRedis } from './helpers.js';

// A real 3-node RabbitMQ cluster on this machine (about 20 s to form). Skipped only where
// rabbitmq-server is not installed.
const unavailable = rabbitClusterUnavailable();
if (unavailable) console.warn(`skipping the 3-node RabbitMQ cluster tests: ${unavailable}`);

let cluster: RabbitCluster | undefined;
let db: TestDatabase;
const redis = testRedis();
const s = stack();

beforeAll(async () => {
  if (unavailable) return;
  db = await createTestDatabase('coordcluster');
  cluster = await startRabbitCluster({ log: (line) => console.log(line) });
}, 180_000);
afterEach(async () => {
  await s.stopAll();
}, 120_000);
afterAll(async () => {
  redis.disconnect();
  await cluster?.stop();
  await db?.drop();
}, 60_000);

describe.skipIf(unavailable !== null)('broker membership on a 3-node RabbitMQ cluster', () => {
  it('keeps members and master in Redis: a SIGKILLed node leaves within TTL + one interval and comes back on restart; a dead master is replaced', async () => {
    const c3 = cluster as RabbitCluster;
    const [n1, n2, n3] = c3.nodeNames as [string, string, string];
    const prefix = newPrefix();
    const keys = redisKeys(prefix);
    const intervalMs = 500;
    const ttlMs = 2000;
    const coord = s.add(coordinator(db, { prefix, brokers: parseBrokers(c3.brokersEnv, 'amqp://unused'), intervalMs, brokerHeartbeatTtlMs: ttlMs, leaseMs: 1500 }), (c) => c.stop());
    await coord.start();
    const members = async () => (await redis.smembers(keys.brokerMembers)).sort();
    await eventually(async () => (await members()).length === 3 && (await redis.get(keys.brokerMaster)) === n1, { timeoutMs: 10_000 });
    const beat = Number(await redis.get(keys.brokerHeartbeat(n2)));
    expect(Math.abs(Date.now() - beat)).toBeLessThan(intervalMs * 3);
    const ttl = await redis.pttl(keys.brokerHeartbeat(n2));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(ttlMs);

    // A member (not the master) dies.
    await c3.kill(1);
    let killedAt = performance.now();
    await eventually(async () => !(await members()).includes(n2), { timeoutMs: ttlMs + intervalMs + 5000, intervalMs: 20 });
    // TTL + one interval, plus one probe round's time on a busy machine.
    expect(performance.now() - killedAt).toBeLessThan(ttlMs + intervalMs + 1500);
    expect(await redis.get(keys.brokerMaster)).toBe(n1);

    await c3.restart(1);
    await eventually(async () => (await members()).includes(n2), { timeoutMs: 10_000 });

    // The master dies: a new one is elected from the live members.
    await c3.kill(0);
    killedAt = performance.now();
    await eventually(async () => !(await members()).includes(n1), { timeoutMs: ttlMs + intervalMs + 5000, intervalMs: 20 });
    const master = await eventually(async () => {
      const m = await redis.get(keys.brokerMaster);
      return m && m !== n1 ? m : null;
    }, { timeoutMs: 3000 });
    expect([n2, n3]).toContain(master);
    expect(performance.now() - killedAt).toBeLessThan(ttlMs + 2 * intervalMs + 1500);
    expect(await members()).toEqual([n2, n3].sort());

    await c3.restart(0);
    await eventually(async () => (await members()).length === 3, { timeoutMs: 10_000 });
    // The new master stays: re-election happens only when the master is down.
    expect(await redis.get(keys.brokerMaster)).toBe(master);
  }, 180_000);

  it('loses no task when a broker node is SIGKILLed mid-run: 2,000 noop tasks all succeed, none twice', async () => {
    const c3 = cluster as RabbitCluster;
    const suffix = randomBytes(3).toString('hex');
    const config = loadConfig({
      DATABASE_URL: db.url,
      // Everyone connects to node 1 first (the one we kill) and rotates through the list.
      AMQP_URL: c3.urlList,
      AMQP_PREFIX: `fo${suffix}_`,
      REDIS_URL: 'redis://127.0.0.1:1', // unused by these roles
      PORT: '0',
      RELAY_POLL_INTERVAL_MS: '200',
      RELAY_RETRY_MAX_MS: '500',
      FOG_NODE_SLOTS: '16',
      FOG_NODE_GRACE_MS: '1000',
      LOG_LEVEL: 'silent',
    });
    const start = async (names: string[]) => {
      const roles = createRoles({ config, version: 'test', roles: names, fogNodes: 2, tier: undefined, migrate: false }, logger);
      for (const role of roles) {
        await role.start();
        s.add(role, (r: Role) => timed(r));
      }
      return roles;
    };
    const api = (await start(['relay', 'ingest', 'api'])).find((r) => r.name === 'api') as Role & { address(): string | null };
    const base = api.address() as string;
    const q = async (text: string) => (await db.pool.query(text)).rows as Record<string, unknown>[];
    const succeeded = async () => Number((await q(`SELECT count(*) AS n FROM task_current WHERE state = 'succeeded'`))[0]?.n);

    for (let b = 0; b < 4; b++) {
      const res = await postJson(`${base}/v1/tasks/batch`, { tasks: Array.from({ length: 500 }, () => ({ type: 'noop' })) });
      expect(res.status).toBe(202);
    }
    // The fog nodes start on a full backlog, so the kill lands mid-run.
    await start(['fog-node']);
    await eventually(async () => (await succeeded()) >= 100, { timeoutMs: 60_000, intervalMs: 10 });
    const before = await succeeded();
    await c3.kill(0);
    console.log(`broker node 1 SIGKILLed with ${before} of 2000 tasks succeeded`);
    expect(before).toBeLessThan(2000); // it really died mid-run
    await eventually(async () => (await succeeded()) === 2000, { timeoutMs: 150_000, intervalMs: 500 });
    const doubles = await q(`SELECT stream_id, data->>'attempt' AS attempt, count(*) AS n FROM events
      WHERE type IN ('TaskSucceeded','TaskFailed','TaskDeadLettered','TaskCancelled') GROUP BY 1, 2 HAVING count(*) > 1`);
    expect(doubles).toEqual([]);
    expect(Number((await q(`SELECT count(*) AS n FROM task_current`))[0]?.n)).toBe(2000);
    await c3.restart(0);
  }, 240_000);
});

async function timed(role: Role): Promise<void> {
  const t0 = performance.now();
  await role.stop();
  const ms = performance.now() - t0;
  if (ms > 2000) console.warn(`role ${role.name} took ${Math.round(ms)} ms to stop`);
}

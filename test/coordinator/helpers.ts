import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { inject } from 'vitest';
import { createCoordinator, type Coordinator, type CoordinatorDeps } from '../../src/coordinator/index.js';
import { createFogHeartbeat, type FogHeartbeat, type FogHeartbeatStats } from '../../src/fog-node/heartbeat.js';
import { createLogger } from '../../src/infra/logger.js';
import { redisKeys } from '../../src/infra/redis.js';
import type { TestDatabase } from '../helpers/database.js';

export const logger = createLogger(process.env.TEST_LOG_LEVEL ?? 'silent');

/** A Redis key prefix of its own per test. */
export const newPrefix = () => `t${randomBytes(4).toString('hex')}:`;

export function testRedis(url = inject('redisUrl')): Redis {
  const r = new Redis(url, { maxRetriesPerRequest: 1, retryStrategy: () => 200 });
  r.on('error', () => {});
  return r;
}

/** Everything a test started, stopped in reverse by `stopAll()`. */
export function stack() {
  const stops: (() => unknown)[] = [];
  return {
    add<T>(thing: T, stop: (t: T) => unknown): T {
      stops.push(() => stop(thing));
      return thing;
    },
    async stopAll() {
      for (const s of stops.splice(0).reverse()) await s();
    },
  };
}

export function coordinator(db: TestDatabase, opts: Partial<CoordinatorDeps> & { prefix: string }): Coordinator {
  return createCoordinator({
    redisUrl: inject('redisUrl'),
    db: db.db,
    brokers: [],
    intervalMs: 200,
    brokerHeartbeatTtlMs: 1500,
    leaseMs: 1500,
    logger,
    ...opts,
  });
}

export function fogHeartbeat(opts: {
  prefix: string;
  nodeId: string;
  redisUrl?: string;
  ttlMs?: number;
  stats?: () => FogHeartbeatStats;
  zone?: string | null;
  labels?: Record<string, string>;
}): FogHeartbeat {
  return createFogHeartbeat({
    redisUrl: opts.redisUrl ?? inject('redisUrl'),
    prefix: opts.prefix,
    nodeId: opts.nodeId,
    tier: 'light',
    slots: 4,
    intervalMs: 200,
    ttlMs: opts.ttlMs ?? 1000,
    stats: opts.stats ?? (() => ({ inFlight: 0, cpu: 0.01, rssMb: 50 })),
    version: '0.0.0-test',
    zone: opts.zone ?? null,
    labels: opts.labels ?? {},
    logger,
  });
}

export async function nodeEvents(db: TestDatabase, nodeId: string) {
  const rows = await db.db.selectFrom('events').select(['type', 'stream_version', 'data', 'metadata']).where('stream_id', '=', `node:${nodeId}`).orderBy('stream_version').execute();
  return rows as { type: string; stream_version: number; data: Record<string, unknown>; metadata: Record<string, unknown> }[];
}

export { redisKeys };

import type { Redis } from 'ioredis';
import type { Logger } from '../infra/logger.js';
import { createRedis, redisKeys, whenReady } from '../infra/redis.js';

export interface FogHeartbeatStats {
  readonly inFlight: number;
  /** CPU use of the process since the last sample, 0..cores. */
  readonly cpu: number;
  readonly rssMb: number;
  /** Ids of the tasks running now; the coordinator records them when it reaps the node. */
  readonly inFlightTaskIds?: readonly string[];
  /** Task-queue consumers the node has open; 0 means it takes no work now, though its process is alive. */
  readonly consumers?: number;
}

export interface FogHeartbeatOptions {
  readonly redisUrl: string;
  /** REDIS_PREFIX. */
  readonly prefix: string;
  readonly nodeId: string;
  readonly tier: string;
  readonly slots: number;
  /** FOG_NODE_ZONE (null or absent: none); written as `zone` ('' for none). */
  readonly zone?: string | null;
  /** FOG_NODE_LABELS; written as `labels`, a JSON object. */
  readonly labels?: Readonly<Record<string, string>>;
  /** FOG_HEARTBEAT_INTERVAL_MS (default 10000). */
  readonly intervalMs: number;
  /** FOG_HEARTBEAT_TTL_MS (default 30000): the hash expires this long after the last beat. */
  readonly ttlMs: number;
  readonly stats: () => FogHeartbeatStats;
  /** Called after every beat, written or failed (the node's /healthz progress). */
  readonly onBeat?: () => void;
  readonly version: string;
  readonly logger: Logger;
}

export interface FogHeartbeat {
  start(): void;
  /** Idempotent. Marks the hash `state=stopped` so the coordinator reaps the node at its next round. */
  stop(): Promise<void>;
}

/** In-flight ids carried in the hash are capped so a beat stays small. */
const MAX_TASK_IDS = 1000;

/**
 * Registers a fog node in Redis and keeps it alive: `fog:nodes` (set) and
 * `fog:node:{id}` (hash: tier, slots, zone, labels (JSON), inFlight, cpu, mem, version, lastSeen,
 * inFlightTaskIds as JSON, consumers; TTL). Redis only, never PostgreSQL; a failed beat is
 * logged and the next one tries again, so a down Redis never affects task flow.
 *
 * ### Example
 * ```ts
 * const beat = createFogHeartbeat({ redisUrl, prefix: '', nodeId, tier: 'light', slots: 32,
 *   intervalMs: 10_000, ttlMs: 30_000, stats: () => ({ inFlight: 0, cpu: 0.1, rssMb: 80 }), version, logger });
 * beat.start();
 * // ...
 * await beat.stop();
 * ```
 */
export function createFogHeartbeat(opts: FogHeartbeatOptions): FogHeartbeat {
  const logger = opts.logger.child({ component: 'fog-heartbeat', nodeId: opts.nodeId });
  const keys = redisKeys(opts.prefix);
  const hashKey = keys.fogNode(opts.nodeId);
  let redis: Redis | undefined;
  let timer: NodeJS.Timeout | undefined;
  let beating: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  let failing = false;

  const beat = async (state: 'up' | 'stopped') => {
    if (!redis) return;
    try {
      if (redis.status !== 'ready') await whenReady(redis, Math.min(opts.intervalMs, 2000));
      const s = opts.stats();
      await redis
        .multi()
        .hset(hashKey, {
          tier: opts.tier,
          slots: String(opts.slots),
          zone: opts.zone ?? '',
          labels: JSON.stringify(opts.labels ?? {}),
          inFlight: String(s.inFlight),
          cpu: s.cpu.toFixed(3),
          mem: String(Math.round(s.rssMb)),
          version: opts.version,
          lastSeen: String(Date.now()),
          inFlightTaskIds: JSON.stringify((s.inFlightTaskIds ?? []).slice(0, MAX_TASK_IDS)),
          ...(s.consumers === undefined ? {} : { consumers: String(s.consumers) }),
          state,
        })
        .pexpire(hashKey, opts.ttlMs)
        .sadd(keys.fogNodes, opts.nodeId)
        .exec();
      if (failing) logger.info('fog heartbeat resumed');
      failing = false;
    } catch (error) {
      if (!failing) logger.warn({ err: (error as Error).message }, 'fog heartbeat failed; retrying every interval');
      failing = true;
    }
  };

  const loop = () => {
    beating = beat('up').finally(() => {
      beating = undefined;
      opts.onBeat?.();
      if (!stopped) timer = setTimeout(loop, opts.intervalMs);
    });
  };

  return {
    start() {
      if (redis || stopped) return;
      redis = createRedis(opts.redisUrl, { logger, name: `fogsched-fog-node-${opts.nodeId}` });
      loop();
    },
    stop() {
      return (stopped ??= (async () => {
        clearTimeout(timer);
        await beating;
        if (!redis) return;
        await beat('stopped');
        redis.disconnect();
      })());
    },
  };
}

import { Redis } from 'ioredis';
import { backoffMs } from './backoff.js';
import { redactUrl, type Logger } from './logger.js';

/**
 * Redis key names of the live membership picture. The broker keys keep the seed
 * deployment's names (`rabbitmq:cluster:members`, `rabbitmq:cluster:master`,
 * `rabbitmq:node:{node}:heartbeat`) so its operators recognise them; every key
 * gets REDIS_PREFIX in front.
 */
export function redisKeys(prefix: string) {
  return Object.freeze({
    brokerMembers: `${prefix}rabbitmq:cluster:members`,
    brokerMaster: `${prefix}rabbitmq:cluster:master`,
    brokerHeartbeat: (node: string) => `${prefix}rabbitmq:node:${node}:heartbeat`,
    fogNodes: `${prefix}fog:nodes`,
    fogNode: (id: string) => `${prefix}fog:node:${id}`,
    coordinatorLease: `${prefix}coordinator:leader`,
    /** Sorted set of cancelled task ids (score: ms), read by fog nodes that join after the broadcast. */
    cancelledTasks: `${prefix}fog:cancelled`,
    /**
     * Hash of the placement queues the relay declared: field `<class>.<tier>.<priority>` (the
     * queue's routing key), value the placement as JSON. Fog nodes consume those whose placement
     * they match (their zone's are declared by the nodes themselves).
     */
    placementClasses: `${prefix}fog:placement-classes`,
  });
}

export type RedisKeys = ReturnType<typeof redisKeys>;

/**
 * An ioredis client that never blocks its caller on a down Redis: no offline
 * queue (a command fails at once while disconnected), one retry per command,
 * and reconnects forever with a delay capped at `maxBackoffMs` (default 2000).
 * Errors are logged at most once per outage.
 */
export function createRedis(url: string, opts: { logger: Logger; name: string; maxBackoffMs?: number; lazyConnect?: boolean }): Redis {
  let down = false;
  const redis = new Redis(url, {
    connectionName: opts.name,
    lazyConnect: opts.lazyConnect ?? false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    commandTimeout: 2000,
    // `times` counts the attempts of this outage, from 1.
    retryStrategy: (times) => backoffMs(times, { baseMs: 200, maxMs: opts.maxBackoffMs ?? 2000 }),
  });
  redis.on('error', (error: Error) => {
    if (!down) opts.logger.warn({ err: error.message, redis: redactUrl(url) }, 'redis unavailable');
    down = true;
  });
  redis.on('ready', () => {
    if (down) opts.logger.info({ redis: redactUrl(url) }, 'redis reconnected');
    down = false;
  });
  return redis;
}

/** Resolves once the client is ready (or at once if it is), false after `timeoutMs` without it. */
export function whenReady(redis: Redis, timeoutMs: number): Promise<boolean> {
  if (redis.status === 'ready') return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      redis.off('ready', onReady);
      resolve(ok);
    };
    const onReady = () => done(true);
    const timer = setTimeout(() => done(false), timeoutMs);
    redis.on('ready', onReady);
  });
}

/** How long a cancelled task id stays in `fog:cancelled`. */
export const CANCELLED_RETENTION_MS = 24 * 3600 * 1000;

/** Records a cancelled task for fog nodes that join later; trims entries older than a day. Throws when Redis is down. */
export async function recordCancelled(redis: Redis, keys: RedisKeys, taskId: string, now = Date.now()): Promise<void> {
  await redis.multi().zadd(keys.cancelledTasks, now, taskId).zremrangebyscore(keys.cancelledTasks, 0, now - CANCELLED_RETENTION_MS).exec();
}

/** Task ids cancelled within the retention window (empty when Redis is down). */
export async function readCancelled(redis: Redis, keys: RedisKeys, now = Date.now()): Promise<string[]> {
  return redis.zrangebyscore(keys.cancelledTasks, now - CANCELLED_RETENTION_MS, '+inf');
}

/** Records a placement queue (its routing key `<class>.<tier>.<priority>`) and its placement (JSON) for fog nodes. Throws when Redis is down. */
export async function recordPlacementQueue(redis: Redis, keys: RedisKeys, routingKey: string, placementJson: string): Promise<void> {
  await redis.hset(keys.placementClasses, routingKey, placementJson);
}

/** The placement queues recorded so far: routing key → placement JSON (throws when Redis is down). */
export async function readPlacementQueues(redis: Redis, keys: RedisKeys): Promise<Record<string, string>> {
  return redis.hgetall(keys.placementClasses);
}

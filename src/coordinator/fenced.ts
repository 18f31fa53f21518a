import type { Redis } from 'ioredis';

/**
 * Lua scripts that write only while the caller still holds the leader lease:
 * each compares the lease key with the caller's token and writes in the same
 * atomic step, so a leader that was paused past its lease (and replaced)
 * writes nothing when it wakes. Each returns -1 when the lease is not ours.
 * KEYS[1] is always the lease key and ARGV[1] the token.
 */
const SCRIPTS = {
  /** Renews the lease: 1, or 0 when another holds it (or it expired). */
  renewLease: {
    keys: 1,
    lua: `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`,
  },
  releaseLease: {
    keys: 1,
    lua: `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`,
  },
  checkLease: {
    keys: 1,
    lua: `if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 else return -1 end`,
  },
  /** KEYS: lease, heartbeat, members. ARGV: token, now, ttlMs, node. */
  brokerUp: {
    keys: 3,
    lua: `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return redis.call('SADD', KEYS[3], ARGV[4])`,
  },
  /** Removes a member whose heartbeat key has expired: 1 removed, 0 still alive or not a member. KEYS: lease, heartbeat, members. ARGV: token, node. */
  brokerReap: {
    keys: 3,
    lua: `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('SREM', KEYS[3], ARGV[2])`,
  },
  /** KEYS: lease, master. ARGV: token, node. */
  setMaster: {
    keys: 2,
    lua: `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[2], ARGV[2])
return 1`,
  },
  /** Removes a fog node whose hash expired or says state=stopped. KEYS: lease, fog:nodes, fog:node:{id}. ARGV: token, id. */
  fogReap: {
    keys: 3,
    lua: `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('HGET', KEYS[3], 'state') ~= 'stopped' then return 0 end
redis.call('DEL', KEYS[3])
return redis.call('SREM', KEYS[2], ARGV[2])`,
  },
} as const;

export type FencedScript = keyof typeof SCRIPTS;

/** Runs one of the fenced scripts (EVALSHA, loading it on first use). */
export interface Fenced {
  run(script: FencedScript, keys: readonly string[], args: readonly (string | number)[]): Promise<number>;
}

export function fenced(redis: Redis): Fenced {
  for (const [name, s] of Object.entries(SCRIPTS)) {
    if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: s.keys, lua: s.lua });
  }
  return {
    async run(script, keys, args) {
      const command = (redis as unknown as Record<FencedScript, (...a: (string | number)[]) => Promise<number>>)[script];
      return Number(await command.call(redis, ...keys, ...args));
    },
  };
}

import type { Redis } from 'ioredis';
import { FogschedError } from '../domain/index.js';
import { recordRateLimited } from '../infra/metrics.js';
import type { Logger } from '../infra/logger.js';

export interface SubmitLimitSettings {
  /** Tasks per second per tenant; 0: no rate limit. */
  readonly ratePerSecond: number;
  /** Token bucket size; 0: twice the rate (at least 1). */
  readonly burst: number;
  /** Scheduled + queued + running + retrying tasks per tenant; 0: no cap. */
  readonly maxActiveTasks: number;
  /** How long the shared active counter lives before it is counted again from PostgreSQL. */
  readonly activeRefreshMs: number;
}

export class RateLimitedError extends FogschedError {
  constructor(readonly retryAfterSeconds: number, rate: number, burst: number) {
    super({
      code: 'RATE_LIMITED',
      status: 429,
      message: `this tenant may submit ${rate} tasks per second (bursts of ${burst}); retry after ${retryAfterSeconds} s`,
      details: { retryAfterSeconds, ratePerSecond: rate, burst },
    });
  }
}

export class BurstExceededError extends FogschedError {
  constructor(tasks: number, burst: number) {
    super({
      code: 'BURST_EXCEEDED',
      status: 422,
      message: `a request of ${tasks} tasks can never fit this tenant's burst of ${burst}; send at most ${burst} per request`,
      details: { tasks, burst },
    });
  }
}

export class TooManyActiveTasksError extends FogschedError {
  constructor(readonly retryAfterSeconds: number, activeTasks: number, maxActiveTasks: number, tasks: number) {
    super({
      code: 'TOO_MANY_ACTIVE_TASKS',
      status: 429,
      message: `this tenant has ${activeTasks} active tasks (scheduled, queued, running or retrying); ${tasks} more would pass its cap of ${maxActiveTasks}`,
      details: { activeTasks, maxActiveTasks, retryAfterSeconds },
    });
  }
}

/** What /readyz tells an operator about the limits. */
export interface LimitsStatus {
  readonly ratePerSecond: number | null;
  readonly burst: number | null;
  readonly maxActiveTasks: number | null;
  /** `enforced`, or `fail-open` while Redis does not answer (every submit is let through). */
  readonly state: 'enforced' | 'fail-open';
  readonly failingOpenSince?: string;
}

export interface SubmitLimits {
  /** Admits `tasks` new tasks of `tenant` or throws a 429/422 FogschedError; lets them through when Redis is down. */
  admit(tenant: string, tasks: number): Promise<void>;
  status(): LimitsStatus;
}

/**
 * Both limits in one script, so a refused submit takes nothing from either.
 * KEYS: bucket hash {tokens, ms}, active counter.
 * ARGV: rate/s (0 off), burst, max active (0 off), cost, seed ('' or the count from PostgreSQL), seed TTL ms.
 * Returns {'ok'}, {'seed'} (count the active tasks and call again with it), {'rate', wait ms}
 * or {'active', current count}. The bucket's clock is Redis's TIME, shared by every replica.
 */
const ADMIT_SCRIPT = `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local maxActive = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local active = 0
if maxActive > 0 then
  if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6], 'NX') end
  local current = redis.call('GET', KEYS[2])
  if not current then return {'seed'} end
  active = tonumber(current)
  if active + cost > maxActive then return {'active', active} end
end
if rate > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
  local tokens = tonumber(b[1]) or burst
  local last = tonumber(b[2]) or now
  if now > last then tokens = math.min(burst, tokens + (now - last) * rate / 1000) end
  if tokens < cost then return {'rate', math.ceil((cost - tokens) * 1000 / rate)} end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - cost), 'ms', tostring(math.max(now, last)))
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
end
if maxActive > 0 then redis.call('INCRBY', KEYS[2], cost) end
return {'ok'}
`;

/**
 * Per-tenant submit limits shared by every API replica through Redis: a token bucket of
 * `ratePerSecond` tasks per second holding up to `burst`, and a cap on active tasks. The active
 * count is a Redis counter per tenant, counted from PostgreSQL (`countActive`) when missing, living
 * `activeRefreshMs`, and raised by each admitted submit in the same script that checks it. It is
 * soft: tasks that finish free the cap only at the next recount; a submit admitted but then
 * refused (a bad item, PostgreSQL down) holds its share until then; and a recount made while
 * admitted submits are still being written misses them, so the cap can be passed by the submits
 * in flight at that moment. When Redis fails, every submit is admitted (logged once per outage).
 */
export function createSubmitLimits(deps: {
  readonly redis: Redis;
  readonly prefix: string;
  readonly settings: SubmitLimitSettings;
  readonly countActive: (tenant: string) => Promise<number>;
  readonly logger: Logger;
}): SubmitLimits | null {
  const { ratePerSecond: rate, maxActiveTasks: maxActive, activeRefreshMs } = deps.settings;
  if (rate <= 0 && maxActive <= 0) return null;
  const burst = rate > 0 ? deps.settings.burst || Math.max(1, Math.ceil(2 * rate)) : 0;
  const retryActiveSeconds = Math.max(1, Math.ceil(activeRefreshMs / 1000));
  let failingOpenSince: Date | null = null;

  // EVALSHA, falling back to EVAL once per connection (ioredis's defineCommand).
  deps.redis.defineCommand('fogschedAdmitSubmit', { numberOfKeys: 2, lua: ADMIT_SCRIPT });
  const admitScript = (deps.redis as unknown as { fogschedAdmitSubmit(...args: string[]): Promise<[string, number?]> }).fogschedAdmitSubmit.bind(deps.redis);
  const run = async (tenant: string, tasks: number, seed: string): Promise<[string, number?] | 'fail-open'> => {
    try {
      const answer = await admitScript(
        // One hash tag per tenant: both keys land in one slot should Redis ever be a cluster.
        `${deps.prefix}limits:{${tenant}}:bucket`,
        `${deps.prefix}limits:{${tenant}}:active`,
        String(rate),
        String(burst),
        String(maxActive),
        String(tasks),
        seed,
        String(activeRefreshMs),
      );
      if (failingOpenSince) {
        deps.logger.info({ since: failingOpenSince.toISOString() }, 'submit limits enforced again');
        failingOpenSince = null;
      }
      return answer;
    } catch (error) {
      if (!failingOpenSince) {
        failingOpenSince = new Date();
        deps.logger.warn({ err: (error as Error).message }, 'submit limits not enforced: redis unavailable');
      }
      return 'fail-open';
    }
  };

  return {
    async admit(tenant, tasks) {
      if (tasks <= 0) return;
      if (rate > 0 && tasks > burst) {
        recordRateLimited(tenant, 'burst');
        throw new BurstExceededError(tasks, burst);
      }
      let answer = await run(tenant, tasks, '');
      // The count query's own failure (PostgreSQL down) is not Redis's: it propagates (503).
      if (answer !== 'fail-open' && answer[0] === 'seed') answer = await run(tenant, tasks, String(await deps.countActive(tenant)));
      if (answer === 'fail-open') return;
      if (answer[0] === 'rate' || answer[0] === 'active') recordRateLimited(tenant, answer[0]);
      if (answer[0] === 'rate') throw new RateLimitedError(Math.max(1, Math.ceil(Number(answer[1]) / 1000)), rate, burst);
      if (answer[0] === 'active') throw new TooManyActiveTasksError(retryActiveSeconds, Number(answer[1]), maxActive, tasks);
    },
    status() {
      return {
        ratePerSecond: rate > 0 ? rate : null,
        burst: rate > 0 ? burst : null,
        maxActiveTasks: maxActive > 0 ? maxActive : null,
        state: failingOpenSince ? 'fail-open' : 'enforced',
        ...(failingOpenSince ? { failingOpenSince: failingOpenSince.toISOString() } : {}),
      };
    },
  };
}

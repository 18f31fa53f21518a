import { retryDelayMs, type BackoffOptions } from '../domain/policy.js';

/**
 * How long to wait after failures, for every retry loop of every role (connecting, a channel
 * lost, a result publish, an outbox row the broker refused, a database round that failed,
 * Redis reconnecting). The formula is the domain's task-retry backoff (`retryDelayMs`):
 * capped exponential with "equal jitter", so retries of many processes spread out but never
 * come earlier than half the exponential value. Written once; nothing else computes a delay.
 *
 * A library was weighed and not taken: the ones that are kept up (cockatiel, p-retry,
 * exponential-backoff) wrap a call or keep the previous delay as state, while most of our
 * callers only have a count (the relay's `outbox.attempts` column, ioredis' `times`) and the
 * domain's delay must be pure for the event log.
 */
export interface Backoff {
  /** Failures so far (0 after a reset). */
  readonly failures: number;
  /** Counts one more failure and returns the delay before the next try, in ms. */
  next(): number;
  /** A success: the next failure waits the shortest delay again. */
  reset(): void;
}

export type BackoffSettings = Pick<BackoffOptions, 'baseMs' | 'maxMs'> & { readonly factor?: number };

/** The factor when a caller names none: the delay doubles. */
const DEFAULT_FACTOR = 2;
/** Beyond this many failures the delay is at its cap anyway; keeps factor ** n finite. */
const MAX_EXPONENT_FAILURES = 64;

/**
 * Delay in ms after the `failures`-th failure in a row (1 = the first): `baseMs * factor **
 * (failures - 1)`, capped at `maxMs`, then between half of that and all of it by `random`.
 *
 * ### Example
 * ```ts
 * backoffMs(3, { baseMs: 100, maxMs: 5000 }, 0.5); // 300: between 200 and 400
 * ```
 */
export function backoffMs(failures: number, settings: BackoffSettings, random: number = Math.random()): number {
  const n = Math.min(Math.max(1, Math.floor(failures)), MAX_EXPONENT_FAILURES);
  return retryDelayMs(n, { baseMs: settings.baseMs, factor: settings.factor ?? DEFAULT_FACTOR, maxMs: settings.maxMs }, random);
}

/**
 * A failure counter with its delays, for a loop that retries until it succeeds.
 *
 * ### Example
 * ```ts
 * const retry = createBackoff({ baseMs: 100, maxMs: 5000 });
 * for (;;) {
 *   try { await work(); retry.reset(); }
 *   catch { await sleep(retry.next(), signal); }
 * }
 * ```
 */
export function createBackoff(settings: BackoffSettings, random: () => number = Math.random): Backoff {
  let failures = 0;
  return {
    get failures() {
      return failures;
    },
    next: () => backoffMs(++failures, settings, random()),
    reset: () => {
      failures = 0;
    },
  };
}

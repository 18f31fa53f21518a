import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { retryDelayMs } from '../../src/domain/index.js';
import { backoffMs, createBackoff } from '../../src/infra/backoff.js';

describe('backoffMs', () => {
  it('doubles from baseMs by default, with equal jitter: [exp / 2, exp]', () => {
    expect([1, 2, 3, 4].map((n) => backoffMs(n, { baseMs: 100, maxMs: 10_000 }, 0))).toEqual([50, 100, 200, 400]);
    expect([1, 2, 3, 4].map((n) => backoffMs(n, { baseMs: 100, maxMs: 10_000 }, 0.999_999))).toEqual([100, 200, 400, 800]);
  });

  it('is capped at maxMs', () => {
    expect(backoffMs(20, { baseMs: 100, maxMs: 5000 }, 0.999_999)).toBe(5000);
    expect(backoffMs(20, { baseMs: 100, maxMs: 5000 }, 0)).toBe(2500);
  });

  it('stays finite and capped for any count of failures, even a huge or odd one', () => {
    for (const n of [0, -1, 1.5, 1e6, Number.MAX_SAFE_INTEGER]) {
      const d = backoffMs(n, { baseMs: 100, maxMs: 5000 }, 0.5);
      expect(Number.isFinite(d), String(n)).toBe(true);
      expect(d).toBeLessThanOrEqual(5000);
      expect(d).toBeGreaterThanOrEqual(50);
    }
  });

  it('is the domain formula (one formula for task retries and for every retry loop)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 60 }), fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 1, max: 100_000 }), fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), (n, baseMs, maxMs, random) => {
        expect(backoffMs(n, { baseMs, factor: 3, maxMs }, random)).toBe(retryDelayMs(n, { baseMs, factor: 3, maxMs }, random));
      }),
      { numRuns: 300 },
    );
  });
});

describe('createBackoff', () => {
  it('counts failures, grows the delay with them, and starts over after a reset', () => {
    const retry = createBackoff({ baseMs: 100, maxMs: 1000 }, () => 0);
    expect(retry.failures).toBe(0);
    expect([retry.next(), retry.next(), retry.next(), retry.next(), retry.next()]).toEqual([50, 100, 200, 400, 500]);
    expect(retry.failures).toBe(5);
    retry.reset();
    expect(retry.failures).toBe(0);
    expect(retry.next()).toBe(50);
  });

  it('spreads the delays of many retrying processes (jitter), never below half the exponential value', () => {
    const delays = Array.from({ length: 200 }, () => createBackoff({ baseMs: 1000, maxMs: 60_000 }).next());
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(500);
    expect(Math.max(...delays)).toBeLessThanOrEqual(1000);
    expect(new Set(delays).size).toBeGreaterThan(50);
  });
});

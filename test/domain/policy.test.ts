import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  slotsFor,
  DEFAULT_RESOURCES,
  DEFAULT_TIERS,
  FogschedError,
  NoTierFitsError,
  retryDelayMs,
  servedTiers,
  taskRoutingKey,
  tierFor,
  type BackoffOptions,
  type Tier,
} from '../../src/domain/index.js';

describe('tierFor', () => {
  it.each([
    [{ cpu: 0, memoryMb: 0 }, 'light'],
    [{ cpu: 0.1, memoryMb: 64 }, 'light'],
    [{ cpu: 0.5, memoryMb: 512 }, 'light'],
    [{ cpu: 0.5, memoryMb: 513 }, 'medium'],
    [{ cpu: 0.51, memoryMb: 512 }, 'medium'],
    [{ cpu: 0.75, memoryMb: 768 }, 'medium'],
    [{ cpu: 0.75, memoryMb: 769 }, 'heavy'],
    [{ cpu: 0.76, memoryMb: 768 }, 'heavy'],
    [{ cpu: 1, memoryMb: 1024 }, 'heavy'],
    [{ cpu: 0.1, memoryMb: 1024 }, 'heavy'],
    [{ cpu: 1, memoryMb: 64 }, 'heavy'],
  ])('maps %o to %s', (resources, tier) => {
    expect(tierFor(resources)).toBe(tier);
  });

  it('puts the default resources in the light tier', () => {
    expect(tierFor(DEFAULT_RESOURCES)).toBe('light');
  });

  it.each([
    [{ cpu: 1.01, memoryMb: 1024 }],
    [{ cpu: 1, memoryMb: 1025 }],
    [{ cpu: 2, memoryMb: 4096 }],
  ])('throws NoTierFitsError above the heavy tier: %o', (resources) => {
    let caught: unknown;
    try {
      tierFor(resources);
    } catch (error) {
      caught = error;
    }

    expect(caught).toBeInstanceOf(NoTierFitsError);
    expect(caught).toBeInstanceOf(FogschedError);
    const error = caught as NoTierFitsError;
    expect(error.code).toBe('NO_TIER_FITS');
    expect(error.status).toBe(422);
    expect(error.name).toBe('NoTierFitsError');
    expect(error.message).toContain('heavy');
    expect(error.message).toContain('1 cpu and 1024 MB');
    expect(error.message).toContain(`${resources.cpu} cpu and ${resources.memoryMb} MB`);
    expect(error.details).toEqual({ resources, largestTier: { name: 'heavy', maxCpu: 1, maxMemoryMb: 1024 } });
  });

  it('uses custom tiers and picks the lightest that fits', () => {
    const tiers: Tier[] = [
      { name: 'tiny', maxCpu: 0.25, maxMemoryMb: 128 },
      { name: 'big', maxCpu: 4, maxMemoryMb: 8192 },
    ];

    expect(tierFor({ cpu: 0.25, memoryMb: 128 }, tiers)).toBe('tiny');
    expect(tierFor({ cpu: 0.3, memoryMb: 128 }, tiers)).toBe('big');
    expect(tierFor({ cpu: 4, memoryMb: 8192 }, tiers)).toBe('big');
    expect(() => tierFor({ cpu: 4.5, memoryMb: 100 }, tiers)).toThrow(NoTierFitsError);
    expect(() => tierFor({ cpu: 4.5, memoryMb: 100 }, tiers)).toThrow(/largest tier \(big\) allows 4 cpu and 8192 MB/);
  });

  it('throws NoTierFitsError when there are no tiers at all', () => {
    expect(() => tierFor({ cpu: 0, memoryMb: 0 }, [])).toThrow(NoTierFitsError);
  });

  it('always returns a tier whose limits hold the resources (property)', () => {
    fc.assert(
      fc.property(fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 0, max: 1024 }), (cpu, memoryMb) => {
        const name = tierFor({ cpu, memoryMb });
        const index = DEFAULT_TIERS.findIndex((t) => t.name === name);
        const tier = DEFAULT_TIERS[index] as Tier;
        expect(cpu).toBeLessThanOrEqual(tier.maxCpu);
        expect(memoryMb).toBeLessThanOrEqual(tier.maxMemoryMb);
        // ... and no lighter tier would have done.
        for (const lighter of DEFAULT_TIERS.slice(0, index)) {
          expect(cpu <= lighter.maxCpu && memoryMb <= lighter.maxMemoryMb).toBe(false);
        }
      }),
      { numRuns: 200 },
    );
  });
});

describe('servedTiers', () => {
  it('serves its own tier first, then the lighter ones', () => {
    expect(servedTiers('light')).toEqual(['light']);
    expect(servedTiers('medium')).toEqual(['medium', 'light']);
    expect(servedTiers('heavy')).toEqual(['heavy', 'medium', 'light']);
  });

  it('serves only itself for a tier it does not know', () => {
    expect(servedTiers('gpu')).toEqual(['gpu']);
  });

  it('uses custom tiers', () => {
    const tiers: Tier[] = [
      { name: 'a', maxCpu: 1, maxMemoryMb: 1 },
      { name: 'b', maxCpu: 2, maxMemoryMb: 2 },
      { name: 'c', maxCpu: 3, maxMemoryMb: 3 },
      { name: 'd', maxCpu: 4, maxMemoryMb: 4 },
    ];

    expect(servedTiers('c', tiers)).toEqual(['c', 'b', 'a']);
    expect(servedTiers('heavy', tiers)).toEqual(['heavy']);
  });

  it('does not reorder the tiers it is given', () => {
    const tiers = [...DEFAULT_TIERS];
    servedTiers('heavy', tiers);

    expect(tiers).toEqual(DEFAULT_TIERS);
  });
});

describe('retryDelayMs', () => {
  const backoff: BackoffOptions = { baseMs: 1000, factor: 2, maxMs: 60_000 };
  /** The delay with random = 1 - epsilon is just below the full exponential value. */
  const ALMOST_ONE = 0.999_999_999;

  it('grows exponentially with the failed attempt', () => {
    // random = 0 gives the fixed half: exp / 2.
    expect([1, 2, 3, 4, 5].map((a) => retryDelayMs(a, backoff, 0))).toEqual([500, 1000, 2000, 4000, 8000]);
    expect([1, 2, 3, 4, 5].map((a) => retryDelayMs(a, backoff, ALMOST_ONE))).toEqual([1000, 2000, 4000, 8000, 16_000]);
  });

  it('is capped at maxMs', () => {
    expect(retryDelayMs(7, backoff, ALMOST_ONE)).toBe(60_000); // 1000 * 2^6 = 64000 > 60000
    expect(retryDelayMs(50, backoff, ALMOST_ONE)).toBe(60_000);
    expect(retryDelayMs(50, backoff, 0)).toBe(30_000);
    expect(retryDelayMs(1000, backoff, 0.5)).toBe(45_000);
  });

  it('treats attempt 0 or below like attempt 1', () => {
    expect(retryDelayMs(0, backoff, 0)).toBe(retryDelayMs(1, backoff, 0));
    expect(retryDelayMs(-3, backoff, 0)).toBe(retryDelayMs(1, backoff, 0));
  });

  it('adds half the exponential value times random', () => {
    expect(retryDelayMs(3, backoff, 0.5)).toBe(3000); // exp 4000: 2000 + 2000 * 0.5
    expect(retryDelayMs(3, backoff, 0.25)).toBe(2500);
  });

  it('stays within [exp / 2, exp] for any random in [0, 1) (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 3_600_000 }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (attempt, baseMs, factor, maxMs, random) => {
          const options = { baseMs, factor, maxMs };
          const exp = Math.min(maxMs, baseMs * factor ** (attempt - 1));
          const delay = retryDelayMs(attempt, options, random);
          expect(Number.isInteger(delay)).toBe(true);
          expect(delay).toBeGreaterThanOrEqual(exp / 2);
          expect(delay).toBeLessThanOrEqual(exp);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('never shrinks as the attempt grows, for the same random (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 30 }), fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), (attempt, random) => {
        expect(retryDelayMs(attempt + 1, backoff, random)).toBeGreaterThanOrEqual(retryDelayMs(attempt, backoff, random));
      }),
      { numRuns: 200 },
    );
  });
});

describe('taskRoutingKey', () => {
  it('joins tier and priority', () => {
    expect(taskRoutingKey('medium', 'high')).toBe('medium.high');
  });
});

describe('slotsFor', () => {
  it('derives a node\'s slots from its tier memory: as many default-sized (64 MB) tasks as it holds, at least one', () => {
    expect(DEFAULT_TIERS.map((t) => [t.name, slotsFor(t)])).toEqual([
      ['light', 8],
      ['medium', 12],
      ['heavy', 16],
    ]);
    expect(slotsFor({ name: 'tiny', maxCpu: 0.1, maxMemoryMb: 32 })).toBe(1);
  });
});

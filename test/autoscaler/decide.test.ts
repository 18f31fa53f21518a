import { describe, expect, it } from 'vitest';
import { decideScale, type ScaleHistory, type ScalePolicy, type TierMeasurement } from '../../src/autoscaler/decide.js';

const policy: ScalePolicy = {
  min: 1,
  max: 4,
  slotsPerReplica: 4,
  upDepth: 10,
  downDepth: 2,
  upWaitMs: 5000,
  downWaitMs: 1000,
  upCooldownMs: 30_000,
  downCooldownMs: 120_000,
};
const NOW = 1_000_000_000;
const never: ScaleHistory = { lastUpAt: null, lastDownAt: null };
const idle: TierMeasurement = { depth: 0, queued: 0, running: 0, oldestWaitMs: null, avgWaitMs: null };
const m = (over: Partial<TierMeasurement>): TierMeasurement => ({ ...idle, ...over });

describe('decideScale: clamps', () => {
  it('raises a tier below its minimum at once, cooldown or not', () => {
    expect(decideScale(0, idle, { lastUpAt: NOW - 1, lastDownAt: NOW - 1 }, policy, NOW)).toMatchObject({ from: 0, to: 1, trigger: 'below-min' });
  });
  it('lowers a tier above its maximum at once, even with a backlog', () => {
    expect(decideScale(6, m({ depth: 500 }), { lastUpAt: NOW - 1, lastDownAt: null }, policy, NOW)).toMatchObject({ from: 6, to: 4, trigger: 'above-max' });
  });
  it('never goes past max when the backlog asks for more, nor below min when idle', () => {
    expect(decideScale(2, m({ depth: 1000 }), never, policy, NOW)).toMatchObject({ to: 4, trigger: 'backlog' });
    expect(decideScale(4, m({ depth: 1000 }), never, policy, NOW)).toBeNull();
    expect(decideScale(1, idle, never, policy, NOW)).toBeNull();
  });
});

describe('decideScale: up', () => {
  it('adds as many replicas as the backlog needs at upDepth each, at least one', () => {
    expect(decideScale(1, m({ depth: 11 }), never, policy, NOW)).toMatchObject({ to: 2, trigger: 'backlog' });
    expect(decideScale(1, m({ depth: 35 }), never, policy, NOW)).toMatchObject({ to: 4 });
  });
  it('scales on a long wait even with a shallow queue, and says the figures', () => {
    const d = decideScale(1, m({ depth: 3, queued: 7, running: 4, oldestWaitMs: 6000, avgWaitMs: 2500 }), never, policy, NOW);
    expect(d).toMatchObject({ from: 1, to: 2, trigger: 'wait' });
    expect(d?.reason).toBe('wait: oldest wait above 5.0 s (depth 3, queued 7, running 4, oldest wait 6.0 s, average wait 2.5 s)');
  });
  it('starts a first replica of a tier with min 0 as soon as work is queued', () => {
    expect(decideScale(0, m({ depth: 1 }), never, { ...policy, min: 0 }, NOW)).toMatchObject({ to: 1, trigger: 'backlog' });
    expect(decideScale(0, idle, never, { ...policy, min: 0 }, NOW)).toBeNull();
  });
  it('waits out the scale-up cooldown, counted from the last scale-up only', () => {
    const busy = m({ depth: 50 });
    expect(decideScale(2, busy, { lastUpAt: NOW - 29_999, lastDownAt: null }, policy, NOW)).toBeNull();
    expect(decideScale(2, busy, { lastUpAt: NOW - 30_000, lastDownAt: null }, policy, NOW)).toMatchObject({ to: 4 });
    expect(decideScale(2, busy, { lastUpAt: null, lastDownAt: NOW - 1 }, policy, NOW)).toMatchObject({ to: 4 });
  });
});

describe('decideScale: down and hysteresis', () => {
  it('removes one replica at a time when the work fits in one fewer', () => {
    expect(decideScale(4, idle, never, policy, NOW)).toMatchObject({ from: 4, to: 3, trigger: 'idle' });
  });
  it('holds inside the band between the down and up marks (no flapping)', () => {
    // 2 replicas, 8 ready: 4 per replica is below upDepth (10), and with one replica fewer 8 > downDepth (2).
    expect(decideScale(2, m({ depth: 8, queued: 0, running: 0 }), never, policy, NOW)).toBeNull();
    // A wait between downWaitMs and upWaitMs holds too.
    expect(decideScale(2, m({ oldestWaitMs: 3000, queued: 1 }), never, policy, NOW)).toBeNull();
  });
  it('keeps replicas whose slots the running and queued tasks need', () => {
    expect(decideScale(3, m({ running: 9 }), never, policy, NOW)).toBeNull();
    expect(decideScale(3, m({ running: 8 }), never, policy, NOW)).toMatchObject({ to: 2 });
  });
  it('never scales down blind when task_current could not be read', () => {
    expect(decideScale(3, m({ queued: null, running: null }), never, policy, NOW)).toBeNull();
  });
  it('waits out the scale-down cooldown, counted from any scaling', () => {
    expect(decideScale(3, idle, { lastUpAt: NOW - 119_999, lastDownAt: null }, policy, NOW)).toBeNull();
    expect(decideScale(3, idle, { lastUpAt: null, lastDownAt: NOW - 119_999 }, policy, NOW)).toBeNull();
    expect(decideScale(3, idle, { lastUpAt: NOW - 120_000, lastDownAt: NOW - 200_000 }, policy, NOW)).toMatchObject({ to: 2 });
  });
  it('goes to 0 only for a tier with min 0 and nothing at all to do', () => {
    const zero = { ...policy, min: 0 };
    expect(decideScale(1, idle, never, zero, NOW)).toMatchObject({ to: 0, trigger: 'idle' });
    expect(decideScale(1, m({ depth: 1 }), never, zero, NOW)).toBeNull();
    expect(decideScale(1, m({ running: 1 }), never, zero, NOW)).toBeNull();
  });
});

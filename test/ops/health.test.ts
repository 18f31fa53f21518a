import { describe, expect, it } from 'vitest';
import { createHealthTracker, DEFAULT_GRACE_MS } from '../../src/infra/health.js';

/** The pure rule behind /healthz: a loop is stalled when it has not beaten within its interval plus grace (plus a wait it announced). */
describe('health tracker', () => {
  const clock = () => {
    let t = 1_000;
    return { now: () => t, advance: (ms: number) => (t += ms) };
  };

  it('is healthy with no loops, and while a loop beats within interval + grace', () => {
    const c = clock();
    const health = createHealthTracker(c.now);
    expect(health.status()).toEqual({ healthy: true, loops: {} });
    const relay = health.loop('relay', { intervalMs: 1000, graceMs: 5000 });
    for (let i = 0; i < 10; i++) {
      c.advance(5999);
      relay.beat();
      expect(health.status().healthy).toBe(true);
    }
  });

  it('turns unhealthy when progress stops, and healthy again at the next beat', () => {
    const c = clock();
    const health = createHealthTracker(c.now);
    const relay = health.loop('relay', { intervalMs: 1000, graceMs: 5000 });
    c.advance(6000);
    expect(health.status().loops.relay).toEqual({ ok: true, sinceProgressMs: 6000, allowedMs: 6000 });
    c.advance(1);
    expect(health.status()).toEqual({ healthy: false, loops: { relay: { ok: false, sinceProgressMs: 6001, allowedMs: 6000 } } });
    relay.beat();
    expect(health.status().healthy).toBe(true);
  });

  it('counts only progress: time alone, however the loop is doing, decides nothing else', () => {
    const c = clock();
    const health = createHealthTracker(c.now);
    health.loop('ingest', { intervalMs: 1000, graceMs: 0 }); // never beats
    const other = health.loop('scheduler', { intervalMs: 1000, graceMs: 0 });
    c.advance(900);
    other.beat();
    c.advance(900); // ingest 1800 ms without a beat, the scheduler 900
    expect(health.status().loops.ingest?.ok).toBe(false);
    expect(health.status().loops.scheduler?.ok).toBe(true);
    expect(health.status().healthy).toBe(false); // one stalled loop makes the process unhealthy
  });

  it('an announced wait (a backoff) moves the deadline out by that much, once', () => {
    const c = clock();
    const health = createHealthTracker(c.now);
    const relay = health.loop('relay', { intervalMs: 1000, graceMs: 1000 });
    relay.beat(30_000); // a round failed: 30 s of backoff before the next one
    c.advance(31_000);
    expect(health.status().healthy).toBe(true);
    c.advance(1);
    expect(health.status().healthy).toBe(false);
    relay.beat(); // the next turn announces no wait: back to interval + grace
    c.advance(2001);
    expect(health.status().healthy).toBe(false);
  });

  it('a disposed loop (its role stopped) no longer counts; names repeat as name#2', () => {
    const c = clock();
    const health = createHealthTracker(c.now);
    const a = health.loop('fog-node', { intervalMs: 10 });
    health.loop('fog-node', { intervalMs: 10 });
    expect(Object.keys(health.status().loops)).toEqual(['fog-node', 'fog-node#2']);
    c.advance(DEFAULT_GRACE_MS + 11);
    expect(health.status().healthy).toBe(false);
    a.dispose();
    expect(Object.keys(health.status().loops)).toEqual(['fog-node#2']);
  });

  it('the default grace is at least DEFAULT_GRACE_MS and twice the interval', () => {
    const c = clock();
    const health = createHealthTracker(c.now);
    health.loop('fast', { intervalMs: 100 });
    health.loop('slow', { intervalMs: 30_000 });
    expect(health.status().loops.fast?.allowedMs).toBe(100 + DEFAULT_GRACE_MS);
    expect(health.status().loops.slow?.allowedMs).toBe(30_000 + 60_000);
  });
});

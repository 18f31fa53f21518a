import { describe, expect, it } from 'vitest';
import { createRecentMap } from '../../src/fog-node/recent-map.js';

describe('createRecentMap', () => {
  it('keeps entries until their ttl passes', () => {
    const m = createRecentMap<string, number>({ max: 10, ttlMs: 1000 });
    m.set('a', 1, 0);
    expect(m.get('a', 999)).toBe(1);
    expect(m.get('a', 1000)).toBeUndefined();
    expect(m.size).toBe(0);
  });

  it('forgets the least recently set entry beyond max', () => {
    const m = createRecentMap<string, number>({ max: 2, ttlMs: 60_000 });
    m.set('a', 1, 0);
    m.set('b', 2, 1);
    m.set('a', 3, 2); // set again: now the newest
    m.set('c', 4, 3);
    expect(m.get('b', 4)).toBeUndefined();
    expect(m.get('a', 4)).toBe(3);
    expect(m.get('c', 4)).toBe(4);
    expect(m.size).toBe(2);
  });

  it('drops expired entries when new ones come, so an idle node does not hold them', () => {
    const m = createRecentMap<string, number>({ max: 100, ttlMs: 10 });
    for (let i = 0; i < 50; i++) m.set(String(i), i, i);
    m.set('late', 0, 100);
    expect(m.size).toBe(1);
    m.delete('late');
    expect(m.get('late', 100)).toBeUndefined();
  });
});

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { brokerUrls, shuffled, withHeartbeat } from '../../src/broker/index.js';

describe('brokerUrls', () => {
  it('splits a cluster list, trimming spaces and dropping empty entries', () => {
    expect(brokerUrls(' amqp://a:5672 , amqp://b:5672,,amqp://c:5672 ')).toEqual(['amqp://a:5672', 'amqp://b:5672', 'amqp://c:5672']);
    expect(brokerUrls('amqp://a')).toEqual(['amqp://a']);
    expect(brokerUrls(['amqp://a', ' '])).toEqual(['amqp://a']);
    expect(brokerUrls('')).toEqual([]);
  });
});

describe('shuffled', () => {
  it('is a permutation of the list and leaves the list alone (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.string(), { maxLength: 12 }), fc.infiniteStream(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true })), (items, stream) => {
        const before = [...items];
        const it = stream[Symbol.iterator]();
        const out = shuffled(items, () => it.next().value as number);
        expect(items).toEqual(before);
        expect([...out].sort()).toEqual([...items].sort());
      }),
      { numRuns: 300 },
    );
  });

  it('puts each node first about equally often over many processes, not always the first of the list', () => {
    const urls = ['amqp://a', 'amqp://b', 'amqp://c'];
    const firsts = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const first = shuffled(urls)[0] as string;
      firsts.set(first, (firsts.get(first) ?? 0) + 1);
    }
    // 1000 each expected; 800 is more than 7 standard deviations below.
    for (const u of urls) expect(firsts.get(u) ?? 0, u).toBeGreaterThan(800);
  });

  it('keeps the order for random close to 1 and reverses a pair for random 0', () => {
    expect(shuffled(['a', 'b', 'c'], () => 0.999)).toEqual(['a', 'b', 'c']);
    expect(shuffled(['a', 'b'], () => 0)).toEqual(['b', 'a']);
    expect(shuffled([], () => 0)).toEqual([]);
  });
});

describe('withHeartbeat', () => {
  it('adds the heartbeat to a URL that sets none', () => {
    expect(withHeartbeat('amqp://guest:guest@127.0.0.1:5672', 10)).toBe('amqp://guest:guest@127.0.0.1:5672?heartbeat=10');
    expect(withHeartbeat('amqp://u:p@host/fog?frameMax=131072', 7)).toBe('amqp://u:p@host/fog?frameMax=131072&heartbeat=7');
  });

  it("keeps the URL's own heartbeat, 0 (off) included", () => {
    expect(withHeartbeat('amqp://host?heartbeat=30', 10)).toBe('amqp://host?heartbeat=30');
    expect(withHeartbeat('amqp://host?heartbeat=0', 10)).toBe('amqp://host?heartbeat=0');
  });
});

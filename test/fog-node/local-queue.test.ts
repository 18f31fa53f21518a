import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PRIORITIES, type Priority } from '../../src/domain/index.js';
import { createLocalQueue, type Queued } from '../../src/fog-node/local-queue.js';

interface Item extends Queued {
  readonly id: string;
}

const item = (id: string, priority: Priority, receivedAt = 0, tierRank = 0): Item => ({ id, priority, receivedAt, tierRank });

/** Picks everything at `now`, in order. */
function pickAll(q: ReturnType<typeof createLocalQueue<Item>>, now: number): string[] {
  const out: string[] = [];
  for (let next = q.pick(now); next; next = q.pick(now)) out.push(next.id);
  return out;
}

describe('the local queue of a fog node', () => {
  it('takes high before normal before low, first come first within a priority', () => {
    const q = createLocalQueue<Item>(60_000);
    for (const it of [item('l1', 'low'), item('n1', 'normal'), item('h1', 'high'), item('n2', 'normal'), item('h2', 'high')]) q.push(it);
    expect(q.size).toBe(5);
    expect(pickAll(q, 1)).toEqual(['h1', 'h2', 'n1', 'n2', 'l1']);
    expect(q.size).toBe(0);
    expect(q.pick(1)).toBeUndefined();
  });

  it('takes its own tier before a lighter one it also serves, within one priority only', () => {
    const q = createLocalQueue<Item>(60_000);
    q.push(item('light-n', 'normal', 0, 1));
    q.push(item('own-low', 'low', 0, 0));
    q.push(item('lighter-n', 'normal', 0, 2));
    q.push(item('own-n', 'normal', 0, 0));
    q.push(item('own-n2', 'normal', 0, 0));
    expect(pickAll(q, 1)).toEqual(['own-n', 'own-n2', 'light-n', 'lighter-n', 'own-low']);
  });

  it('lets an item that waited past agingMs go first, the longest-waiting of the aged heads', () => {
    const q = createLocalQueue<Item>(1000);
    q.push(item('low-old', 'low', 200));
    q.push(item('normal-older', 'normal', 100));
    q.push(item('high-new', 'high', 900));
    // At 1000 nothing waited more than 1000 ms.
    expect(q.pick(1000)?.id).toBe('high-new');
    // At 1600 both heads are aged; normal-older waited longer.
    expect(q.pick(1600)?.id).toBe('normal-older');
    expect(q.pick(1600)?.id).toBe('low-old');
  });

  it('an aged head goes first even when it is from a lighter tier', () => {
    const q = createLocalQueue<Item>(100);
    q.push(item('lighter-old', 'low', 0, 1));
    q.push(item('own-high', 'high', 150, 0));
    expect(q.pick(200)?.id).toBe('lighter-old');
  });

  it('remove takes out what matches and keeps the rest in order', () => {
    const q = createLocalQueue<Item>(60_000);
    for (const id of ['a', 'b', 'c', 'd']) q.push(item(id, id === 'c' ? 'high' : 'normal'));
    expect(q.remove((i) => i.id === 'b' || i.id === 'c').map((i) => i.id).sort()).toEqual(['b', 'c']);
    expect(q.size).toBe(2);
    expect(q.remove().map((i) => i.id)).toEqual(['a', 'd']);
    expect(q.size).toBe(0);
  });

  it('returns every item pushed exactly once, whatever the order and times', () => {
    const arbItem = fc.record({ priority: fc.constantFrom(...PRIORITIES), receivedAt: fc.integer({ min: 0, max: 5000 }), tierRank: fc.integer({ min: 0, max: 2 }) });
    fc.assert(
      fc.property(fc.array(arbItem, { maxLength: 60 }), fc.integer({ min: 0, max: 3000 }), fc.array(fc.integer({ min: 0, max: 8000 }), { minLength: 1, maxLength: 10 }), (items, agingMs, nows) => {
        const q = createLocalQueue<Item>(agingMs);
        items.forEach((it, i) => q.push({ ...it, id: String(i) }));
        const seen: string[] = [];
        for (let k = 0; q.size > 0; k++) seen.push((q.pick(nows[k % nows.length] as number) as Item).id);
        expect(seen.sort()).toEqual(items.map((_, i) => String(i)).sort());
        // Without an aged item, the picked one is never of a lower priority than one that waits.
        const q2 = createLocalQueue<Item>(1_000_000);
        items.forEach((it, i) => q2.push({ ...it, id: String(i) }));
        const first = q2.pick(0);
        if (first) for (const rest of q2.remove()) expect(PRIORITIES.indexOf(rest.priority)).toBeGreaterThanOrEqual(PRIORITIES.indexOf(first.priority));
      }),
    );
  });
});

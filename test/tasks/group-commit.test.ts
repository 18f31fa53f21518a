import { describe, expect, it } from 'vitest';
import { createGroupCommit, type GroupCommitOptions } from '../../src/tasks/group-commit.js';

interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Lets every pending promise callback run (no timers involved). */
async function flush(rounds = 20): Promise<void> {
  for (let i = 0; i < rounds; i++) await Promise.resolve();
}

/** Settles a promise into a plain record, so rejections can be asserted without unhandled-rejection noise. */
function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

/** A fake `run` that doubles numbers and records every batch it was handed. */
function recordingRun(impl: (items: readonly number[]) => Promise<readonly (number | Error)[]> = async (items) => items.map((n) => n * 2)) {
  const calls: number[][] = [];
  const run: GroupCommitOptions<number, number>['run'] = (items) => {
    calls.push([...items]);
    return impl(items);
  };
  return { calls, run };
}

class ConnectionLost extends Error {}

describe('createGroupCommit', () => {
  it('puts items submitted in the same tick into one batch and answers each caller', async () => {
    const { calls, run } = recordingRun();
    const group = createGroupCommit({ maxBatch: 10, run, isolate: () => true });

    const results = await Promise.all([group.submit(1), group.submit(2), group.submit(3)]);

    expect(calls).toEqual([[1, 2, 3]]);
    expect(results).toEqual([2, 4, 6]);
  });

  it('does not start a batch before the current tick ends', async () => {
    const { calls, run } = recordingRun();
    const group = createGroupCommit({ maxBatch: 10, run, isolate: () => true });

    const p = group.submit(1);
    expect(calls).toEqual([]);
    await p;
    expect(calls).toEqual([[1]]);
  });

  it('respects maxBatch', async () => {
    const { calls, run } = recordingRun();
    const group = createGroupCommit({ maxBatch: 2, run, isolate: () => true });

    const results = await Promise.all([1, 2, 3, 4, 5].map((n) => group.submit(n)));

    expect(results).toEqual([2, 4, 6, 8, 10]);
    expect(calls).toEqual([[1, 2], [3, 4], [5]]);
    for (const batch of calls) expect(batch.length).toBeLessThanOrEqual(2);
  });

  it('never runs more transactions at once than its concurrency', async () => {
    const gates: Deferred<void>[] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const { calls, run } = recordingRun(async (items) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      const gate = deferred<void>();
      gates.push(gate);
      await gate.promise;
      inFlight--;
      return items.map((n) => n * 2);
    });
    const group = createGroupCommit({ maxBatch: 1, concurrency: 2, run, isolate: () => true });

    const all = Promise.all([1, 2, 3, 4].map((n) => group.submit(n)));
    await flush();
    expect(calls).toEqual([[1], [2]]);
    expect(inFlight).toBe(2);

    gates[0]?.resolve();
    await flush();
    expect(calls).toEqual([[1], [2], [3]]);

    for (let i = 1; i < 4; i++) {
      gates[i]?.resolve();
      await flush();
    }
    expect(await all).toEqual([2, 4, 6, 8]);
    expect(maxInFlight).toBe(2);
  });

  it('groups items that arrive while a transaction runs into the next one', async () => {
    const first = deferred<void>();
    let call = 0;
    const { calls, run } = recordingRun(async (items) => {
      if (call++ === 0) await first.promise;
      return items.map((n) => n * 2);
    });
    const group = createGroupCommit({ maxBatch: 10, concurrency: 1, run, isolate: () => true });

    const p1 = group.submit(1);
    await flush();
    expect(calls).toEqual([[1]]);

    const later = [group.submit(2), group.submit(3)];
    await flush();
    const p4 = group.submit(4);
    await flush();
    expect(calls).toEqual([[1]]); // still waiting on the first transaction

    first.resolve();
    expect(await Promise.all([p1, ...later, p4])).toEqual([2, 4, 6, 8]);
    expect(calls).toEqual([[1], [2, 3, 4]]);
  });

  it('splits a long queue over the free slots, so the transactions run side by side', async () => {
    const gate = deferred<void>();
    const { calls, run } = recordingRun(async (items) => {
      await gate.promise;
      return items.map((n) => n * 2);
    });
    const group = createGroupCommit({ maxBatch: 100, concurrency: 2, run, isolate: () => true });
    const items = Array.from({ length: 20 }, (_, i) => i + 1);
    const all = Promise.all(items.map((n) => group.submit(n)));
    await flush();
    expect(calls).toEqual([items.slice(0, 10), items.slice(10)]);
    gate.resolve();
    expect(await all).toEqual(items.map((n) => n * 2));
  });

  it('while a transaction runs, gathers items arriving one by one for gatherMs before starting another', async () => {
    const first = deferred<void>();
    let call = 0;
    const { calls, run } = recordingRun(async (items) => {
      if (call++ === 0) await first.promise;
      return items.map((n) => n * 2);
    });
    const group = createGroupCommit({ maxBatch: 10, concurrency: 2, gatherMs: 40, run, isolate: () => true });
    const p1 = group.submit(1);
    await flush();
    expect(calls).toEqual([[1]]); // nothing was running: no wait
    const p2 = group.submit(2);
    await flush();
    const p3 = group.submit(3);
    await flush();
    expect(calls).toEqual([[1]]); // a slot is free, but the window is open
    expect(await Promise.all([p2, p3])).toEqual([4, 6]);
    expect(calls).toEqual([[1], [2, 3]]);
    first.resolve();
    expect(await p1).toBe(2);
  });

  it('rejects only the item whose result is an Error', async () => {
    const bad = new Error('item 2 is invalid');
    const { calls, run } = recordingRun(async (items) => items.map((n) => (n === 2 ? bad : n * 2)));
    const group = createGroupCommit({ maxBatch: 10, run, isolate: () => true });

    const results = await Promise.all([1, 2, 3].map((n) => outcome(group.submit(n))));

    expect(calls).toEqual([[1, 2, 3]]);
    expect(results).toEqual([
      { ok: true, value: 2 },
      { ok: false, error: bad },
      { ok: true, value: 6 },
    ]);
  });

  it('rejects an item for which run returned no result', async () => {
    const { run } = recordingRun(async (items) => items.slice(0, 1).map((n) => n * 2));
    const group = createGroupCommit({ maxBatch: 10, run, isolate: () => true });

    const [a, b] = await Promise.all([outcome(group.submit(1)), outcome(group.submit(2))]);

    expect(a).toEqual({ ok: true, value: 2 });
    expect(b.ok).toBe(false);
    expect(b.ok ? null : (b.error as Error).message).toMatch(/no result/);
  });

  it('retries a thrown batch one item at a time when isolate() says so, failing only the bad item', async () => {
    const bad = new Error('constraint violated by item 2');
    const isolated: unknown[] = [];
    const { calls, run } = recordingRun(async (items) => {
      if (items.includes(2)) throw bad;
      return items.map((n) => n * 2);
    });
    const group = createGroupCommit({
      maxBatch: 10,
      run,
      isolate: (error) => {
        isolated.push(error);
        return true;
      },
    });

    const results = await Promise.all([1, 2, 3].map((n) => outcome(group.submit(n))));

    expect(results).toEqual([
      { ok: true, value: 2 },
      { ok: false, error: bad },
      { ok: true, value: 6 },
    ]);
    expect(calls).toEqual([[1, 2, 3], [1], [2], [3]]);
    expect(isolated).toEqual([bad]);
  });

  it('honours per-item Errors returned during the one-by-one retry', async () => {
    const itemError = new Error('item 3 rejected');
    const { calls, run } = recordingRun(async (items) => {
      if (items.length > 1) throw new Error('batch failed');
      return items.map((n) => (n === 3 ? itemError : n * 2));
    });
    const group = createGroupCommit({ maxBatch: 10, run, isolate: () => true });

    const results = await Promise.all([1, 3].map((n) => outcome(group.submit(n))));

    expect(results).toEqual([
      { ok: true, value: 2 },
      { ok: false, error: itemError },
    ]);
    expect(calls).toEqual([[1, 3], [1], [3]]);
  });

  it('rejects every item with the thrown error when isolate() is false, without retrying', async () => {
    const down = new ConnectionLost('connection lost');
    const { calls, run } = recordingRun(async () => {
      throw down;
    });
    const group = createGroupCommit({ maxBatch: 10, run, isolate: (error) => !(error instanceof ConnectionLost) });

    const results = await Promise.all([1, 2, 3].map((n) => outcome(group.submit(n))));

    expect(results).toEqual([
      { ok: false, error: down },
      { ok: false, error: down },
      { ok: false, error: down },
    ]);
    expect(calls).toEqual([[1, 2, 3]]);
  });

  it('does not retry a batch of one item that threw', async () => {
    const bad = new Error('bad');
    const { calls, run } = recordingRun(async () => {
      throw bad;
    });
    const group = createGroupCommit({ maxBatch: 10, run, isolate: () => true });

    expect(await outcome(group.submit(1))).toEqual({ ok: false, error: bad });
    expect(calls).toEqual([[1]]);
  });

  it('treats a synchronous throw from run like a rejected promise', async () => {
    const bad = new Error('sync throw');
    const group = createGroupCommit<number, number>({
      maxBatch: 10,
      run: () => {
        throw bad;
      },
      isolate: () => false,
    });

    const results = await Promise.all([outcome(group.submit(1)), outcome(group.submit(2))]);

    expect(results).toEqual([
      { ok: false, error: bad },
      { ok: false, error: bad },
    ]);
  });

  it('keeps working after a failed batch', async () => {
    let fail = true;
    const { calls, run } = recordingRun(async (items) => {
      if (fail) throw new Error('transient');
      return items.map((n) => n * 2);
    });
    const group = createGroupCommit({ maxBatch: 10, run, isolate: () => false });

    expect((await outcome(group.submit(1))).ok).toBe(false);
    fail = false;
    expect(await group.submit(2)).toBe(4);
    expect(calls).toEqual([[1], [2]]);
  });

  describe('idle()', () => {
    it('resolves at once when nothing was submitted', async () => {
      const { run } = recordingRun();
      const group = createGroupCommit({ maxBatch: 10, run, isolate: () => true });

      await expect(group.idle()).resolves.toBeUndefined();
    });

    it('resolves only when every queued and running batch is done', async () => {
      const gates: Deferred<void>[] = [];
      const settled: number[] = [];
      const { run } = recordingRun(async (items) => {
        const gate = deferred<void>();
        gates.push(gate);
        await gate.promise;
        return items.map((n) => n * 2);
      });
      const group = createGroupCommit({ maxBatch: 1, concurrency: 1, run, isolate: () => true });

      const submits = [1, 2, 3].map((n) => group.submit(n).then((v) => settled.push(v)));
      let idle = false;
      const idlePromise = group.idle().then(() => {
        idle = true;
      });

      await flush();
      expect(idle).toBe(false);

      gates[0]?.resolve();
      await flush();
      expect(settled).toEqual([2]);
      expect(idle).toBe(false);

      gates[1]?.resolve();
      await flush();
      expect(idle).toBe(false);

      gates[2]?.resolve();
      await idlePromise;
      expect(idle).toBe(true);
      await Promise.all(submits);
      expect(settled).toEqual([2, 4, 6]);
    });

    it('resolves after a drain even when items failed, and every idle() caller is answered', async () => {
      const { run } = recordingRun(async () => {
        throw new Error('down');
      });
      const group = createGroupCommit({ maxBatch: 10, run, isolate: () => false });

      const results = [outcome(group.submit(1)), outcome(group.submit(2))];
      await Promise.all([group.idle(), group.idle()]);

      for (const r of await Promise.all(results)) expect(r.ok).toBe(false);
      await expect(group.idle()).resolves.toBeUndefined();
    });
  });

  it('maxQueued bounds the items waiting: past it submit rejects at once with onFull(), and takes items again once the queue drains', async () => {
    const gate = deferred<void>();
    const { calls, run } = recordingRun(async (items) => {
      await gate.promise;
      return items.map((n) => n * 2);
    });
    class Full extends Error {}
    const group = createGroupCommit({ maxBatch: 10, concurrency: 1, maxQueued: 2, onFull: () => new Full('full'), run, isolate: () => true });

    const first = group.submit(1);
    await flush(); // 1 is running (held by the gate)
    const waiting = [group.submit(2), group.submit(3)];
    expect(group.queued()).toBe(2);
    const refused = await outcome(group.submit(4));
    expect(refused.ok).toBe(false);
    expect((refused as { error: unknown }).error).toBeInstanceOf(Full);
    expect(group.queued()).toBe(2);

    gate.resolve();
    expect(await Promise.all([first, ...waiting])).toEqual([2, 4, 6]);
    expect(calls).toEqual([[1], [2, 3]]);
    expect(group.queued()).toBe(0);
    expect(await group.submit(5)).toBe(10);
  });
});

/**
 * Group commit: callers hand in one item each; items that arrive while a
 * transaction is running wait and go together into the next one. Each caller
 * is answered only after the transaction holding its item committed.
 *
 * `run` returns one result per item (a value or an Error for that item alone);
 * if it throws, the batch is retried one item at a time when `isolate` says the
 * error may come from a single item, so one bad item cannot fail its neighbours.
 */
export interface GroupCommitOptions<I, O> {
  readonly maxBatch: number;
  /** Transactions in flight at once. Default 3: with PostgreSQL on 2 cores, two run while one commits (measured: 2 → 3 took 50 submitting clients from ~3,500 to ~4,100 tasks/s). */
  readonly concurrency?: number;
  /**
   * While all but one slot are taken, the last starts only once this many ms passed since its
   * oldest item arrived (or a full batch is waiting), so requests arriving one by one gather into
   * one transaction instead of many small ones. Under lighter load an item starts at once. Default 2.
   */
  readonly gatherMs?: number;
  /**
   * Items that may wait (not counting those in running transactions); past it `submit` rejects
   * at once with `onFull()`, so a database slower than the arrivals costs refusals, not memory.
   * Default unbounded.
   */
  readonly maxQueued?: number;
  readonly onFull?: () => Error;
  readonly run: (items: readonly I[]) => Promise<readonly (O | Error)[]>;
  readonly isolate: (error: unknown) => boolean;
}

export interface GroupCommit<I, O> {
  submit(item: I): Promise<O>;
  /** Items waiting for a transaction. */
  queued(): number;
  /** Resolves when nothing is queued or running. */
  idle(): Promise<void>;
}

interface Waiter<I, O> {
  readonly item: I;
  readonly at: number;
  readonly resolve: (value: O) => void;
  readonly reject: (error: unknown) => void;
}

const SPLIT_MIN = 8;

export function createGroupCommit<I, O>(options: GroupCommitOptions<I, O>): GroupCommit<I, O> {
  const queue: Waiter<I, O>[] = [];
  const concurrency = options.concurrency ?? 3;
  const gatherMs = options.gatherMs ?? 2;
  let running = 0;
  let gatherTimer: NodeJS.Timeout | undefined;
  let idleWaiters: (() => void)[] = [];

  const settle = (waiters: readonly Waiter<I, O>[], results: readonly (O | Error)[]) => {
    waiters.forEach((w, i) => {
      const r = results[i];
      if (r instanceof Error) w.reject(r);
      else if (r === undefined) w.reject(new Error('group commit returned no result for an item'));
      else w.resolve(r);
    });
  };

  const runBatch = async (batch: Waiter<I, O>[]) => {
    try {
      settle(batch, await options.run(batch.map((w) => w.item)));
    } catch (error) {
      if (batch.length > 1 && options.isolate(error)) {
        for (const w of batch) {
          try {
            settle([w], await options.run([w.item]));
          } catch (single) {
            w.reject(single);
          }
        }
      } else {
        for (const w of batch) w.reject(error);
      }
    }
  };

  const pump = () => {
    // Only items that arrived while all but one slot were taken wait for the window (under light
    // load an item starts at once); a queue that built up meanwhile is split over the free slots.
    const busy = running > 0 && running >= concurrency - 1;
    while (running < concurrency && queue.length > 0) {
      const waited = performance.now() - (queue[0] as Waiter<I, O>).at;
      if (busy && queue.length < options.maxBatch && waited < gatherMs) {
        gatherTimer ??= setTimeout(() => {
          gatherTimer = undefined;
          pump();
        }, gatherMs - waited);
        break;
      }
      // Split a long queue over the free slots: two half batches run in two backends at once, where
      // one full batch would leave the other slot idle until it commits. A short queue stays whole
      // (below SPLIT_MIN items, a transaction's own cost outweighs a second backend).
      const share = Math.max(SPLIT_MIN, Math.ceil(queue.length / (concurrency - running)));
      const batch = queue.splice(0, Math.min(options.maxBatch, share));
      running++;
      void runBatch(batch).finally(() => {
        running--;
        pump();
      });
    }
    if (running === 0 && queue.length === 0) {
      const waiters = idleWaiters;
      idleWaiters = [];
      for (const w of waiters) w();
    }
  };

  return {
    submit(item) {
      if (options.maxQueued !== undefined && queue.length >= options.maxQueued) {
        return Promise.reject(options.onFull?.() ?? new Error(`group commit queue is full (${options.maxQueued} waiting)`));
      }
      return new Promise<O>((resolve, reject) => {
        queue.push({ item, at: performance.now(), resolve, reject });
        // Let requests arriving in the same tick join before the first batch starts.
        if (queue.length === 1) queueMicrotask(pump);
      });
    },
    queued: () => queue.length,
    idle() {
      if (running === 0 && queue.length === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
  };
}

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
  /** Transactions in flight at once (one building while one commits). Default 2. */
  readonly concurrency?: number;
  readonly run: (items: readonly I[]) => Promise<readonly (O | Error)[]>;
  readonly isolate: (error: unknown) => boolean;
}

export interface GroupCommit<I, O> {
  submit(item: I): Promise<O>;
  /** Resolves when nothing is queued or running. */
  idle(): Promise<void>;
}

interface Waiter<I, O> {
  readonly item: I;
  readonly resolve: (value: O) => void;
  readonly reject: (error: unknown) => void;
}

export function createGroupCommit<I, O>(options: GroupCommitOptions<I, O>): GroupCommit<I, O> {
  const queue: Waiter<I, O>[] = [];
  const concurrency = options.concurrency ?? 2;
  let running = 0;
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
    while (running < concurrency && queue.length > 0) {
      const batch = queue.splice(0, options.maxBatch);
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
      return new Promise<O>((resolve, reject) => {
        queue.push({ item, resolve, reject });
        // Let requests arriving in the same tick join before the first batch starts.
        if (queue.length === 1) queueMicrotask(pump);
      });
    },
    idle() {
      if (running === 0 && queue.length === 0) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
  };
}

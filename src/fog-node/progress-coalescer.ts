/** One progress report of a run. */
export interface ProgressReport {
  readonly fraction: number;
  readonly message: string | null;
  /** The node's clock at the report (ISO-8601). */
  readonly at: string;
}

/** Timers, injectable so the logic is tested without waiting. */
export interface CoalescerClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realClock: CoalescerClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/**
 * Coalesces one run's progress reports: the first goes out at once, then at most one per
 * `minIntervalMs`; a report that comes sooner replaces any waiting one and goes out when the
 * interval is over. `flush()` sends the waiting one now (before the run's outcome, so the last
 * value is never lost) and stops the timer; after it nothing more is sent.
 */
export function createProgressCoalescer(minIntervalMs: number, emit: (report: ProgressReport) => void, clock: CoalescerClock = realClock) {
  let lastEmitAt = -Infinity;
  let waiting: ProgressReport | undefined;
  let timer: unknown;
  let closed = false;

  const send = () => {
    timer = undefined;
    if (!waiting || closed) return;
    const r = waiting;
    waiting = undefined;
    lastEmitAt = clock.now();
    emit(r);
  };

  return {
    report(r: ProgressReport): void {
      if (closed) return;
      waiting = r;
      const due = lastEmitAt + minIntervalMs;
      if (clock.now() >= due) {
        if (timer !== undefined) clock.clearTimeout(timer);
        send();
      } else timer ??= clock.setTimeout(send, due - clock.now());
    },
    /** Sends what waits, then ignores further reports. */
    flush(): void {
      if (timer !== undefined) clock.clearTimeout(timer);
      timer = undefined;
      send();
      closed = true;
    },
  };
}
export type ProgressCoalescer = ReturnType<typeof createProgressCoalescer>;

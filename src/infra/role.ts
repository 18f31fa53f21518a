/** A long-running part of fogsched (api, relay, ingest, fog-node, coordinator). */
export interface Role {
  readonly name: string;
  start(): Promise<void>;
  /** Idempotent: drains, then closes what start() opened, in reverse. */
  stop(): Promise<void>;
}

/** Sleeps `ms`, waking early (resolving) when the signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

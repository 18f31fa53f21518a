import type { ServerResponse } from 'node:http';
import { FogschedError } from '../domain/index.js';

/** How the server-sent event streams behave; set from the environment variables named. */
export interface SseSettings {
  /** SSE_HEARTBEAT_MS: a `: hb` comment line this often (keeps proxies and idle timers from closing the stream). */
  readonly heartbeatMs: number;
  /** SSE_MAX_CONNECTIONS_PER_TENANT: open streams one tenant may hold on one api process (429 TOO_MANY_STREAMS past it). */
  readonly maxConnectionsPerTenant: number;
  /** SSE_MAX_BUFFER_BYTES: bytes waiting in the socket's write buffer past which a client is dropped. */
  readonly maxBufferBytes: number;
  /** SSE_STALL_TIMEOUT_MS: a client that takes nothing from a full write buffer for this long is dropped. */
  readonly stallTimeoutMs: number;
  /** SSE_POLL_MS: readers look at the log this often even without a notification. */
  readonly pollMs: number;
}

export const DEFAULT_SSE_SETTINGS: SseSettings = Object.freeze({
  heartbeatMs: 15_000,
  maxConnectionsPerTenant: 20,
  maxBufferBytes: 1024 * 1024,
  stallTimeoutMs: 30_000,
  pollMs: 1000,
});

export class TooManyStreamsError extends FogschedError {
  constructor(tenant: string, limit: number) {
    super({
      code: 'TOO_MANY_STREAMS',
      status: 429,
      message: `this tenant already has ${limit} open event streams on this server (SSE_MAX_CONNECTIONS_PER_TENANT); close one or retry later`,
      details: { tenant, maxStreams: limit, retryAfterSeconds: 5 },
    });
  }
}

/** Open streams per tenant, on this process. */
export function createStreamSlots(limit: () => number) {
  const open = new Map<string, number>();
  return {
    /** Takes a slot of `tenant` or throws TooManyStreamsError; the returned function gives it back (once). */
    acquire(tenant: string): () => void {
      const n = open.get(tenant) ?? 0;
      if (n >= limit()) throw new TooManyStreamsError(tenant, limit());
      open.set(tenant, n + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        const left = (open.get(tenant) ?? 1) - 1;
        if (left <= 0) open.delete(tenant);
        else open.set(tenant, left);
      };
    },
    count: (tenant: string) => open.get(tenant) ?? 0,
  };
}

/**
 * One text/event-stream answer on a raw response. Writes wait while the socket's buffer is full
 * (the next event is read from the log only once the client took the last ones), so a stream
 * never holds more than one event beyond the socket's high-water mark; a client that takes
 * nothing for `stallTimeoutMs`, or whose buffer passes `maxBufferBytes`, is dropped with a final
 * `event: dropped` naming the reason.
 */
export class SseStream {
  readonly #res: ServerResponse;
  readonly #settings: SseSettings;
  readonly #abort = new AbortController();
  readonly #heartbeat: NodeJS.Timeout;
  #dropReason: string | null = null;

  constructor(res: ServerResponse, settings: SseSettings) {
    this.#res = res;
    this.#settings = settings;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no', // nginx: pass each event on at once
    });
    res.flushHeaders();
    res.once('close', () => this.#close());
    this.#heartbeat = setInterval(() => this.#write(': hb\n\n'), settings.heartbeatMs);
    // A client that hung up while the route was still reading PostgreSQL: its 'close' has
    // already fired and will not again, so end the stream now (releasing its tenant's slot).
    if (res.closed || res.destroyed || res.socket?.destroyed === true) queueMicrotask(() => this.#close());
    // Browsers reconnect after `retry` ms and send Last-Event-ID.
    this.#write('retry: 2000\n\n');
  }

  /** Aborted when the client went away or the stream was ended or dropped. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  get dropReason(): string | null {
    return this.#dropReason;
  }

  /** Writes one event once the client has room for it; false when the stream is over (gone or dropped). */
  async send(id: number, event: string, data: unknown): Promise<boolean> {
    if (this.#abort.signal.aborted) return false;
    if (this.#res.writableNeedDrain && !(await this.#drained())) return false;
    this.#write(`id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    if (this.#res.writableLength > this.#settings.maxBufferBytes) {
      this.drop(`the client's write buffer holds ${this.#res.writableLength} bytes, over ${this.#settings.maxBufferBytes} (SSE_MAX_BUFFER_BYTES)`);
      return false;
    }
    return !this.#abort.signal.aborted;
  }

  /** Ends the stream with a final `event: dropped` saying why; the socket is closed if the client does not take it. */
  drop(reason: string): void {
    if (this.#abort.signal.aborted) return;
    this.#dropReason = reason;
    this.#write(`event: dropped\ndata: ${JSON.stringify({ reason })}\n\n`);
    const socket = this.#res.socket;
    this.end();
    // A client that reads nothing never lets end() finish: its connection goes after a grace period
    // (long enough for a client that wakes up to read the reason).
    setTimeout(() => socket?.destroy(), Math.max(this.#settings.stallTimeoutMs, 5000)).unref();
  }

  /** Ends the stream normally. */
  end(): void {
    if (!this.#res.writableEnded) this.#res.end();
    this.#close();
  }

  #write(text: string): void {
    if (!this.#res.writableEnded && !this.#res.destroyed) this.#res.write(text);
  }

  #drained(): Promise<boolean> {
    return new Promise((resolve) => {
      const signal = this.#abort.signal;
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.#res.off('drain', onDrain);
        signal.removeEventListener('abort', onAbort);
        resolve(ok);
      };
      const onDrain = () => done(true);
      const onAbort = () => done(false);
      const timer = setTimeout(() => {
        done(false);
        this.drop(`the client took nothing for ${this.#settings.stallTimeoutMs} ms with ${this.#res.writableLength} bytes waiting (SSE_STALL_TIMEOUT_MS)`);
      }, this.#settings.stallTimeoutMs);
      this.#res.on('drain', onDrain);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  #close(): void {
    clearInterval(this.#heartbeat);
    this.#abort.abort();
  }
}

/** Resolves after `ms`, or at once when `signal` aborts or `wake` is called. */
export function waitForWake(signal: AbortSignal, register: (wake: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      signal.removeEventListener('abort', done);
      resolve();
    };
    signal.addEventListener('abort', done, { once: true });
    register(done);
  });
}

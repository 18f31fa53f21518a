import pg from 'pg';
import { createBackoff } from './backoff.js';
import type { Logger } from './logger.js';

/**
 * One LISTEN connection per process, fanned out in memory: every subscriber is woken on a
 * notification of `channel`, when the connection is (re)made (a notification may have been missed
 * while it was down), and every `pollMs` as a safety net (the log's horizon can move without a
 * notification: a transaction that held it back may end without writing an event). A wake only
 * says "read again"; subscribers read the data from the table.
 */
export interface PgListener {
  /** Calls `wake` on every wake-up until the returned function is called. */
  subscribe(wake: () => void): () => void;
  /** Whether the LISTEN connection is up (else only the poll wakes). */
  readonly listening: boolean;
  close(): Promise<void>;
}

export interface PgListenerOptions {
  readonly url: string;
  readonly channel: string;
  readonly pollMs: number;
  readonly logger?: Logger;
  readonly applicationName?: string;
}

export function createPgListener(options: PgListenerOptions): PgListener {
  const subscribers = new Set<() => void>();
  const backoff = createBackoff({ baseMs: 100, maxMs: 5000 });
  let client: pg.Client | undefined;
  let listening = false;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;
  const wakeAll = () => {
    for (const wake of subscribers) wake();
  };
  const poll = setInterval(wakeAll, options.pollMs);
  poll.unref();

  const connect = async () => {
    if (closed) return;
    const c = new pg.Client({ connectionString: options.url, connectionTimeoutMillis: 5000, application_name: options.applicationName ?? 'fogsched-listen', keepAlive: true });
    client = c;
    let lost = false;
    const onLost = (why: string) => {
      if (lost) return;
      lost = true;
      listening = false;
      c.removeAllListeners('notification');
      c.on('error', () => {});
      void c.end().catch(() => {});
      if (closed) return;
      options.logger?.warn({ channel: options.channel, err: why }, 'listen connection lost; reconnecting');
      retry = setTimeout(() => void connect(), backoff.next());
    };
    c.on('error', (error: Error) => onLost(error.message));
    c.on('end', () => onLost('connection ended'));
    c.on('notification', wakeAll);
    try {
      await c.connect();
      await c.query(`LISTEN ${pg.escapeIdentifier(options.channel)}`);
      if (closed) return void (await c.end().catch(() => {}));
      listening = true;
      backoff.reset();
      wakeAll();
    } catch (error) {
      onLost(error instanceof Error ? error.message : String(error));
    }
  };
  void connect();

  let closing: Promise<void> | undefined;
  return {
    subscribe(wake) {
      subscribers.add(wake);
      return () => void subscribers.delete(wake);
    },
    get listening() {
      return listening;
    },
    close: () =>
      (closing ??= (async () => {
        closed = true;
        clearInterval(poll);
        clearTimeout(retry);
        subscribers.clear();
        listening = false;
        const c = client;
        if (c) {
          c.removeAllListeners('end');
          c.on('error', () => {});
          await c.end().catch(() => {});
        }
      })()),
  };
}

/** A listener without a connection: wakes only every `pollMs` (an api built without LISTEN, e.g. in tests). */
export function createPollingWaker(pollMs: number): PgListener {
  const subscribers = new Set<() => void>();
  const poll = setInterval(() => {
    for (const wake of subscribers) wake();
  }, pollMs);
  poll.unref();
  return {
    subscribe(wake) {
      subscribers.add(wake);
      return () => void subscribers.delete(wake);
    },
    listening: false,
    close: async () => {
      clearInterval(poll);
      subscribers.clear();
    },
  };
}

import type { Socket } from 'node:net';
import amqp, { type Channel, type ChannelModel } from 'amqplib';
import { createBackoff, type BackoffSettings } from '../infra/backoff.js';
import { redactUrl, type Logger } from '../infra/logger.js';
import { sleep } from '../infra/role.js';
import { wrapChannel, wrapConfirmChannel, type BrokerChannel, type ConfirmingChannel } from './channel.js';
import { brokerUrls, shuffled, withHeartbeat } from './urls.js';

export interface BrokerClientOptions {
  /** AMQP_URL: one URL, or a comma-separated list of a cluster's nodes. */
  readonly urls: string | readonly string[];
  /** The connection's name on the broker (`rabbitmqctl list_connections client_properties`). */
  readonly name: string;
  readonly logger: Logger;
  /** AMQP heartbeat in seconds for a URL that sets none (default 10). */
  readonly heartbeatS?: number;
  /** One connection attempt, TCP and AMQP handshake, gives up after this (default 5000 ms). */
  readonly connectTimeoutMs?: number;
  /** Delay between failed attempts (default 100 ms doubling up to 5000 ms, jittered). */
  readonly backoff?: BackoffSettings;
  /** Randomness of the shuffle (tests). */
  readonly random?: () => number;
}

/**
 * A role's way to the broker cluster. It shuffles the cluster's URLs once (so the
 * connections of many processes spread over the nodes) and connects to them in turn;
 * each new connection starts with the node after the one it used last, so a node that
 * dropped us (or a node that hangs, whose attempt times out) is not tried first again.
 */
export interface BrokerClient {
  /** The URLs in the order this client tries them. */
  readonly urls: readonly string[];
  /**
   * Connects to the next reachable broker, retrying over the list with backoff until
   * `signal` aborts; undefined then (a connection that opens after the abort is closed).
   */
  connect(signal: AbortSignal): Promise<BrokerConnection | undefined>;
}

/** One AMQP connection: channels with generations, and a close that never hangs. */
export interface BrokerConnection {
  readonly model: ChannelModel;
  /** The broker it is connected to, password hidden. */
  readonly broker: string;
  /** Resolves once the connection closed, from either side; never rejects. */
  readonly closed: Promise<void>;
  isOpen(): boolean;
  /** A channel for consuming (manual acks) or declaring; `purpose` names it in logs. */
  channel(purpose: string): Promise<BrokerChannel>;
  /** A channel in confirm mode, for publishing. */
  confirmChannel(purpose: string): Promise<ConfirmingChannel>;
  /**
   * Closes gracefully when the broker answers within `waitMs` (default 1000), else destroys the
   * socket, which fails every confirm still awaited. Idempotent; never rejects.
   */
  close(waitMs?: number): Promise<void>;
}

const DEFAULT_HEARTBEAT_S = 10;
const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
const DEFAULT_BACKOFF: BackoffSettings = { baseMs: 100, maxMs: 5000 };
const DEFAULT_CLOSE_WAIT_MS = 1000;

export function createBrokerClient(options: BrokerClientOptions): BrokerClient {
  const urls = Object.freeze(shuffled(brokerUrls(options.urls), options.random));
  if (urls.length === 0) throw new Error('no broker URL given');
  const logger = options.logger;
  const heartbeatS = options.heartbeatS ?? DEFAULT_HEARTBEAT_S;
  const timeout = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  /** Index in `urls` of the next one to try. */
  let cursor = 0;
  /** Channel generations of every connection of this client: rising, never reused. */
  let generations = 0;
  let connections = 0;

  // noDelay: amqplib leaves Nagle's algorithm on, so a small frame written while an earlier one
  // is unacknowledged waited for the broker's (delayed, up to ~40 ms) ACK: a dispatch or a start
  // report could sit in the socket for tens of ms. Frames of one tick are corked into one write
  // (coalesceWrites), so Nagle has nothing left to gather.
  const open = (url: string): Promise<ChannelModel> =>
    amqp.connect(withHeartbeat(url, heartbeatS), { timeout, noDelay: true, clientProperties: { connection_name: options.name } });

  const wrap = (model: ChannelModel, url: string): BrokerConnection => {
    let isOpen = true;
    coalesceWrites((model.connection as unknown as { stream?: Socket }).stream);
    // An 'error' without a listener would crash the process; 'close' follows it and roles watch that.
    model.on('error', (error: unknown) => logger.warn({ err: error, broker: redactUrl(url) }, 'amqp connection error'));
    const closed = new Promise<void>((resolve) =>
      model.once('close', () => {
        isOpen = false;
        resolve();
      }),
    );
    let closing: Promise<void> | undefined;
    return {
      model,
      broker: redactUrl(url),
      closed,
      isOpen: () => isOpen,
      async channel(purpose) {
        const raw: Channel = await model.createChannel();
        return wrapChannel(raw, ++generations, purpose, logger);
      },
      async confirmChannel(purpose) {
        const raw = await model.createConfirmChannel();
        return wrapConfirmChannel(raw, ++generations, purpose, logger);
      },
      close(waitMs = DEFAULT_CLOSE_WAIT_MS) {
        closing ??= (async () => {
          if (!isOpen) return;
          let timer: NodeJS.Timeout | undefined;
          const done = await Promise.race([
            model.close().then(() => true, () => true),
            new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), waitMs))),
          ]);
          clearTimeout(timer);
          // amqplib has no abort of its own; its Connection keeps the socket as `stream`.
          if (!done) (model.connection as unknown as { stream?: Socket }).stream?.destroy(new Error('connection closed without the broker answering'));
        })();
        return closing;
      },
    };
  };

  return {
    urls,
    async connect(signal) {
      const retry = createBackoff(options.backoff ?? DEFAULT_BACKOFF);
      while (!signal.aborted) {
        const url = urls[cursor] as string;
        cursor = (cursor + 1) % urls.length;
        try {
          const model = await untilAborted(open(url), signal);
          if (!model) return undefined;
          if (retry.failures > 0 || connections > 0) logger.info({ broker: redactUrl(url), failures: retry.failures }, 'amqp connected');
          connections++;
          return wrap(model, url);
        } catch (error) {
          const delay = retry.next();
          if (retry.failures === 1 || retry.failures % 10 === 0) {
            logger.warn({ broker: redactUrl(url), attempt: retry.failures, retryInMs: delay, err: (error as Error).message }, 'amqp connect failed');
          }
          await sleep(delay, signal);
        }
      }
      return undefined;
    },
  };
}

/**
 * Resolves with the connection, or with undefined as soon as `signal` aborts; a connection that
 * opens after that is closed. amqplib's connect cannot be cancelled itself.
 */
function untilAborted(connecting: Promise<ChannelModel>, signal: AbortSignal): Promise<ChannelModel | undefined> {
  const closeLate = () =>
    void connecting.then(
      (c) => {
        c.on('error', () => {});
        return c.close().catch(() => {});
      },
      () => {},
    );
  if (signal.aborted) {
    closeLate();
    return Promise.resolve(undefined);
  }
  return new Promise<ChannelModel | undefined>((resolve, reject) => {
    const onAbort = () => {
      closeLate();
      resolve(undefined);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    connecting.then(
      (c) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) return; // onAbort resolved already and closes it
        resolve(c);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/**
 * Opens and closes one connection to `url`, within `timeoutMs` in all: a health probe. Resolves
 * with the broker's version; rejects with why it could not connect. A connection that opens
 * after the deadline is closed when it does.
 */
export async function probeBroker(url: string, opts: { readonly timeoutMs: number; readonly name: string }): Promise<{ readonly version: string | undefined }> {
  let timer: NodeJS.Timeout | undefined;
  const connecting = amqp.connect(url, { timeout: opts.timeoutMs, clientProperties: { connection_name: opts.name } });
  try {
    const model = await Promise.race([
      connecting,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${opts.timeoutMs} ms`)), opts.timeoutMs))),
    ]);
    model.on('error', () => {});
    const version = (model.connection.serverProperties as { version?: unknown }).version;
    await model.close().catch(() => {});
    return { version: typeof version === 'string' ? version : undefined };
  } catch (error) {
    void connecting.then((c) => c.close().catch(() => {}), () => {});
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * amqplib writes each frame to the socket on its own (a publish is two or three, every ack one),
 * and each write is a system call. Corked from the first write of a tick until the next tick,
 * the writes of one burst (a batch of publishes, the acks of a confirmed batch) leave in one
 * writev; nothing waits longer than the current tick.
 */
export function coalesceWrites(socket: Socket | undefined): void {
  if (!socket || typeof socket.cork !== 'function') return;
  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  let corked = false;
  const uncork = () => {
    corked = false;
    socket.uncork();
  };
  (socket as unknown as { write: (...args: unknown[]) => boolean }).write = (...args: unknown[]) => {
    if (!corked && !socket.destroyed) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    return write(...args);
  };
}

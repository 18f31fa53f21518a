import amqp, { type ChannelModel } from 'amqplib';
import { redactUrl, type Logger } from './logger.js';
import { sleep } from './role.js';

/**
 * Connects to the first reachable broker of a comma-separated URL list
 * (a cluster), trying them in turn with capped exponential backoff until
 * `signal` aborts. Returns undefined only when aborted.
 */
export async function connectAmqp(
  urls: string,
  opts: { logger: Logger; signal: AbortSignal; name: string; maxBackoffMs?: number; heartbeatS?: number },
): Promise<ChannelModel | undefined> {
  const list = urls.split(',').map((u) => u.trim()).filter(Boolean);
  let attempt = 0;
  while (!opts.signal.aborted) {
    const url = list[attempt % list.length] as string;
    try {
      const u = new URL(url);
      if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(opts.heartbeatS ?? 10));
      const connection = await amqp.connect(u.toString(), { timeout: 5000, clientProperties: { connection_name: opts.name } });
      // An 'error' without a listener would crash the process; 'close' follows it and roles watch that.
      connection.on('error', (error: unknown) => opts.logger.warn({ err: error }, 'amqp connection error'));
      if (attempt > 0) opts.logger.info({ broker: redactUrl(url) }, 'amqp connected');
      return connection;
    } catch (error) {
      attempt++;
      const delay = Math.min(opts.maxBackoffMs ?? 5000, 100 * 2 ** Math.min(attempt, 10));
      if (attempt === 1 || attempt % 10 === 0) {
        opts.logger.warn({ broker: redactUrl(url), attempt, retryInMs: delay, err: (error as Error).message }, 'amqp connect failed');
      }
      await sleep(delay, opts.signal);
    }
  }
  return undefined;
}

import { createWriteStream } from 'node:fs';
import amqp, { type Channel, type ChannelModel } from 'amqplib';
import type { ResultBatch } from '../domain/index.js';
import type { ObservedRecord } from './checker.js';
import { sleep } from './util.js';

/**
 * Watches what the fog nodes report, beside ingest: a quorum queue of its own bound to the
 * results exchange receives a copy of every result message. The event log cannot show a run
 * that decide turned into no event (a start after a cancel), so this is how the checker sees
 * every run. A copy the spy misses only hides a run, it never invents one.
 */
export interface ResultSpy {
  /** Records seen so far (a redelivered copy appears again). */
  readonly records: readonly ObservedRecord[];
  /** Messages seen (a redelivered copy counts again). */
  messages(): number;
  /** Waits until the spy queue is empty (or `timeoutMs` passed), then disconnects. */
  stop(timeoutMs?: number): Promise<void>;
}

export const SPY_QUEUE = 'chaos.result-spy';

export async function startResultSpy(opts: { urls: readonly string[]; resultsExchange: string; recordPath: string; log?: (line: string) => void }): Promise<ResultSpy> {
  const log = opts.log ?? (() => {});
  const out = createWriteStream(opts.recordPath, { flags: 'a' });
  const records: ObservedRecord[] = [];
  let messages = 0;
  let stopping = false;
  let connection: ChannelModel | undefined;
  let channel: Channel | undefined;
  let lastDelivery = Date.now();

  const onMessage = (msg: amqp.ConsumeMessage | null) => {
    if (!msg || !channel) return;
    messages++;
    lastDelivery = Date.now();
    try {
      const batch = JSON.parse(msg.content.toString('utf8')) as ResultBatch;
      for (const r of batch.records ?? []) {
        out.write(`${JSON.stringify({ nodeId: batch.nodeId, ...r, output: undefined, error: 'error' in r ? r.error : undefined, seenAt: Date.now() })}\n`);
        records.push({ kind: r.kind, taskId: r.taskId, attempt: r.attempt, nodeId: batch.nodeId, at: Date.parse(r.at) });
      }
    } catch {
      // not a result batch: nothing to learn from it
    }
    channel.ack(msg);
  };

  const connect = async (): Promise<boolean> => {
    for (const url of opts.urls) {
      try {
        const conn = await amqp.connect(`${url}?heartbeat=5`, { timeout: 3000 });
        conn.on('error', () => {});
        const ch = await conn.createChannel();
        ch.on('error', () => {});
        // drop-head with a bound far above a run's messages: never pushes back on the fog nodes' publishes.
        await ch.assertQueue(SPY_QUEUE, { durable: true, arguments: { 'x-queue-type': 'quorum', 'x-max-length': 2_000_000, 'x-overflow': 'drop-head' } });
        await ch.assertExchange(opts.resultsExchange, 'topic', { durable: true });
        await ch.bindQueue(SPY_QUEUE, opts.resultsExchange, '#');
        await ch.prefetch(500);
        channel = ch;
        connection = conn;
        conn.once('close', () => {
          if (connection === conn) {
            connection = undefined;
            channel = undefined;
          }
          if (!stopping) void reconnect();
        });
        await ch.consume(SPY_QUEUE, onMessage, { noAck: false });
        return true;
      } catch {
        // next node
      }
    }
    return false;
  };

  let reconnecting = false;
  const reconnect = async () => {
    if (reconnecting) return;
    reconnecting = true;
    while (!stopping && !(await connect())) await sleep(500);
    reconnecting = false;
  };

  if (!(await connect())) throw new Error('the result spy could not reach any broker node');
  log(`result spy consuming ${SPY_QUEUE}`);

  return {
    records,
    messages: () => messages,
    async stop(timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      // Drained: nothing arrived for a second and the queue says it is empty.
      for (;;) {
        const ch = channel;
        let empty = false;
        if (ch) {
          try {
            empty = (await ch.checkQueue(SPY_QUEUE)).messageCount === 0;
          } catch {
            empty = false;
          }
        }
        if ((empty && Date.now() - lastDelivery > 1000) || Date.now() > deadline) break;
        await sleep(250);
      }
      stopping = true;
      await connection?.close().catch(() => {});
      await new Promise<void>((resolve) => out.end(() => resolve()));
    },
  };
}

import type { Channel, ConfirmChannel, Message, Options } from 'amqplib';
import type { Logger } from '../infra/logger.js';

/** How a delivery is settled: acked (`ack-up-to`: with every earlier one of the channel), or nacked back to its queue or to the dead-letter exchange. */
export type Settlement = 'ack' | 'ack-up-to' | 'requeue' | 'reject';

/**
 * An amqplib channel with its generation (unique within the client that opened it, rising)
 * and whether it is still open. Deliveries are settled through it, and dropped once it has
 * closed: the broker returned them to their queues when it went.
 */
export interface BrokerChannel<C extends Channel = Channel> {
  /** The amqplib channel, for declaring, consuming and prefetch. */
  readonly raw: C;
  readonly generation: number;
  /** Resolves once the channel closed (by us, by the broker, or with its connection); never rejects. */
  readonly closed: Promise<void>;
  isOpen(): boolean;
  /**
   * Settles a delivery of this channel; true when sent. On a closed channel it is dropped
   * (false) and nothing throws.
   */
  settle(msg: Message, how: Settlement): boolean;
  /** Closes it; resolves when it is closed or was already. Never rejects. */
  close(): Promise<void>;
}

/** A message to publish: where, the body, and amqplib's publish options (messageId, headers, persistent, mandatory...). */
export interface OutgoingMessage {
  readonly exchange: string;
  readonly routingKey: string;
  readonly body: Buffer;
  readonly options?: Options.Publish;
}

/**
 * Why a message was not confirmed: the broker nacked it (a queue full with reject-publish),
 * returned it as unroutable (a mandatory message no queue is bound for), or the channel
 * closed before its confirm came. Undefined: confirmed.
 */
export type PublishOutcome = string | undefined;

/** A channel in confirm mode: every publish is confirmed or refused by the broker. */
export interface ConfirmingChannel extends BrokerChannel<ConfirmChannel> {
  /**
   * Publishes one message; `done` runs once with its outcome. Returns false when the message
   * could not be sent at all (the channel is closed or broken; `done` has run then).
   * One callback per message and no promise: the relay sends hundreds back to back.
   */
  publish(message: OutgoingMessage, done: (outcome: PublishOutcome) => void): boolean;
  /** Publishes every message in order; resolves with each one's outcome once all settled. Never rejects. */
  publishAll(messages: readonly OutgoingMessage[]): Promise<PublishOutcome[]>;
  /** Publishes one message and resolves once the broker confirmed it; rejects with why not. */
  publishConfirmed(message: OutgoingMessage): Promise<void>;
}

/** Wraps an amqplib channel opened by a BrokerConnection. */
export function wrapChannel<C extends Channel>(raw: C, generation: number, purpose: string, logger: Logger): BrokerChannel<C> {
  let open = true;
  // An 'error' without a listener would crash the process; 'close' follows it.
  raw.on('error', (error: unknown) => logger.warn({ err: error, channel: purpose, generation }, 'amqp channel error'));
  const closed = new Promise<void>((resolve) =>
    raw.once('close', () => {
      open = false;
      resolve();
    }),
  );
  return {
    raw,
    generation,
    closed,
    isOpen: () => open,
    settle(msg, how) {
      if (!open) return false;
      try {
        if (how === 'ack') raw.ack(msg);
        else if (how === 'ack-up-to') raw.ack(msg, true);
        else raw.nack(msg, false, how === 'requeue');
        return true;
      } catch (error) {
        // Closed under us (the 'close' event is on its way): the broker returns the delivery by itself.
        logger.debug({ err: (error as Error).message, channel: purpose, generation }, 'settling a delivery failed; its channel is gone');
        return false;
      }
    },
    async close() {
      if (!open) return;
      await raw.close().catch(() => {});
    },
  };
}

/**
 * A confirm channel with its publishing. Returned messages (basic.return, which the broker sends
 * before the confirm of that message) are remembered by message id, so a mandatory message that
 * reached no queue counts as not sent although the broker acks it.
 */
export function wrapConfirmChannel(raw: ConfirmChannel, generation: number, purpose: string, logger: Logger): ConfirmingChannel {
  const base = wrapChannel(raw, generation, purpose, logger);
  const returned = new Set<string>();
  /** A publish threw after amqplib had queued its confirm callback: later confirms would land on the wrong messages. */
  let broken = false;
  raw.on('return', (msg: Message) => {
    const id: unknown = msg.properties.messageId;
    if (typeof id === 'string') returned.add(id);
  });

  const publish = (message: OutgoingMessage, done: (outcome: PublishOutcome) => void): boolean => {
    if (broken || !base.isOpen()) {
      done(broken ? 'not sent: the channel broke on an earlier publish' : 'not sent: channel closed');
      return false;
    }
    const { exchange, routingKey, body, options } = message;
    try {
      raw.publish(exchange, routingKey, body, options, (error: unknown) => {
        const id = options?.messageId;
        const wasReturned = options?.mandatory === true && id !== undefined && returned.delete(id);
        if (error) done(error instanceof Error ? error.message : 'nacked by the broker (queue full?)');
        else if (wasReturned) done(`unroutable: no queue bound to ${exchange}/${routingKey}`);
        else done(undefined);
      });
      return true;
    } catch (error) {
      // The channel is closed, or the frame could not be encoded: this message never went out.
      // amqplib queued a confirm callback for it that no delivery tag will ever match, so
      // confirms that follow on this channel would be taken for the wrong messages: give it up.
      broken = true;
      void base.close();
      done(`not sent: ${(error as Error).message ?? String(error)}`);
      return false;
    }
  };

  return {
    ...base,
    isOpen: () => !broken && base.isOpen(),
    publish,
    publishAll: (messages) =>
      new Promise((resolve) => {
        const outcomes = new Array<PublishOutcome>(messages.length);
        let waiting = messages.length;
        if (waiting === 0) return resolve(outcomes);
        messages.forEach((m, i) => {
          publish(m, (outcome) => {
            outcomes[i] = outcome;
            if (--waiting === 0) resolve(outcomes);
          });
        });
      }),
    publishConfirmed: (message) =>
      new Promise<void>((resolve, reject) => {
        publish(message, (outcome) => (outcome === undefined ? resolve() : reject(new Error(outcome))));
      }),
  };
}

/**
 * Which generation of a channel is the one in use. A consumer that replaces a lost channel
 * uses one of a later generation (BrokerChannel.generation rises); every delivery remembers the generation it came on, and is
 * settled (acked, nacked) only while that generation is still the one in use. A delivery of
 * an earlier one is dropped: the broker has returned it to its queue by itself when the
 * channel went, and an ack sent on the new channel with the old delivery tag would make the
 * broker close that one too (PRECONDITION_FAILED, unknown delivery tag).
 *
 * Pure bookkeeping, no broker: a channel is whatever the caller keeps with it.
 *
 * ### Example
 * ```ts
 * const slot = createChannelSlot<BrokerChannel>();
 * slot.use(ch.generation, ch);         // its deliveries may be settled from now on
 * slot.of(delivery.generation)?.settle(delivery.msg, 'ack');
 * slot.lose(ch.generation);            // closed, or its consumer cancelled by the broker
 * ```
 */
export interface ChannelSlot<C> {
  /** The latest generation put in use (0 before the first). */
  readonly generation: number;
  /** The channel in use and its generation; undefined while there is none. */
  readonly current: { readonly channel: C; readonly generation: number } | undefined;
  /**
   * `channel` of `generation` is the one in use now, replacing any earlier one. False, and
   * nothing changes, when `generation` is not later than every generation used before.
   */
  use(generation: number, channel: C): boolean;
  /** The channel of `generation` while it is the one in use; undefined once it was lost or replaced. */
  of(generation: number): C | undefined;
  /** Whether deliveries of `generation` may still be settled. */
  isCurrent(generation: number): boolean;
  /** `generation` is gone: nothing more is settled on it. True when it was the one in use. */
  lose(generation: number): boolean;
}

export function createChannelSlot<C>(): ChannelSlot<C> {
  let last = 0;
  let current: { readonly channel: C; readonly generation: number } | undefined;
  return {
    get generation() {
      return last;
    },
    get current() {
      return current;
    },
    use(generation, channel) {
      if (generation <= last) return false;
      last = generation;
      current = { channel, generation };
      return true;
    },
    of: (generation) => (current !== undefined && current.generation === generation ? current.channel : undefined),
    isCurrent: (generation) => current !== undefined && current.generation === generation,
    lose(generation) {
      if (current?.generation !== generation) return false;
      current = undefined;
      return true;
    },
  };
}

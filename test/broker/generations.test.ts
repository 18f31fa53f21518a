import { describe, expect, it } from 'vitest';
import { createChannelSlot } from '../../src/broker/index.js';

describe('ChannelSlot', () => {
  it('settles on the channel in use only: a delivery of a lost or replaced generation finds none', () => {
    const slot = createChannelSlot<string>();
    expect(slot.current).toBeUndefined();
    expect(slot.of(1)).toBeUndefined();

    expect(slot.use(1, 'first')).toBe(true);
    expect(slot.of(1)).toBe('first');
    expect(slot.isCurrent(1)).toBe(true);

    // The broker closed it: its deliveries are dropped from now on.
    expect(slot.lose(1)).toBe(true);
    expect(slot.of(1)).toBeUndefined();
    expect(slot.isCurrent(1)).toBe(false);
    expect(slot.lose(1)).toBe(false);

    // Its replacement: deliveries of the old generation still find nothing.
    expect(slot.use(3, 'second')).toBe(true);
    expect(slot.of(1)).toBeUndefined();
    expect(slot.of(3)).toBe('second');
    expect(slot.current).toEqual({ channel: 'second', generation: 3 });
    expect(slot.generation).toBe(3);
  });

  it('a later generation replaces the one in use; losing the old one afterwards changes nothing', () => {
    const slot = createChannelSlot<string>();
    slot.use(1, 'old');
    slot.use(2, 'new');
    expect(slot.lose(1)).toBe(false);
    expect(slot.of(2)).toBe('new');
  });

  it('refuses a generation that is not later than every one used before (a late setup of a channel already given up)', () => {
    const slot = createChannelSlot<string>();
    slot.use(5, 'five');
    slot.lose(5);
    expect(slot.use(4, 'four')).toBe(false);
    expect(slot.use(5, 'five again')).toBe(false);
    expect(slot.current).toBeUndefined();
    expect(slot.of(4)).toBeUndefined();
  });
});

import { describe, expect, it } from 'vitest';
import { validate, version } from 'uuid';
import { uuidv7 } from '../../src/infra/ids.js';

describe('uuidv7 (pooled random bits)', () => {
  it('gives valid, unique version-7 ids that sort in the order they were made, within a millisecond too', () => {
    const ids = Array.from({ length: 50_000 }, () => uuidv7());
    for (const id of ids.slice(0, 1000)) {
      expect(validate(id)).toBe(true);
      expect(version(id)).toBe(7);
    }
    expect(new Set(ids).size).toBe(ids.length);
    for (let i = 1; i < ids.length; i++) if ((ids[i - 1] as string) >= (ids[i] as string)) expect.fail(`${ids[i - 1]} before ${ids[i]}`);
    // The time prefix is now's.
    const ms = parseInt((ids.at(-1) as string).replace(/-/g, '').slice(0, 12), 16);
    expect(Math.abs(ms - Date.now())).toBeLessThan(5000);
  });
});

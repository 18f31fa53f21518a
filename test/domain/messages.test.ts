import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { invalidResultBatch, laneOf } from '../../src/domain/index.js';

const taskId = '0b7f3c1e-8d4a-4f7e-9a51-3c2d1e0f9a8b';
const at = '2026-11-27T10:00:00.000Z';

describe('invalidResultBatch', () => {
  it('accepts every record kind a fog node sends, returned included', () => {
    expect(
      invalidResultBatch({
        nodeId: 'n1',
        tier: 'light',
        records: [
          { kind: 'started', taskId, attempt: 1, at },
          { kind: 'succeeded', taskId, attempt: 1, startedAt: at, at, durationMs: 1, output: null },
          { kind: 'failed', taskId, attempt: 2, startedAt: at, at, durationMs: 1, error: { message: 'm', code: 'crashed', retryable: true } },
          { kind: 'returned', taskId, attempt: 3, at, reason: 'node-shutdown' },
        ],
      }),
    ).toBeNull();
  });

  it('refuses a returned record without a known reason, and unknown kinds', () => {
    expect(invalidResultBatch({ nodeId: 'n1', records: [{ kind: 'returned', taskId, attempt: 1, at }] })).toBe('returned record has an unknown reason undefined');
    expect(invalidResultBatch({ nodeId: 'n1', records: [{ kind: 'lost', taskId, attempt: 1, at }] })).toBe('unknown record kind lost');
  });
});

describe('laneOf', () => {
  it('puts a task in one lane for good, spreads tasks over every lane, and is lane 0 without lanes', () => {
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) {
      const id = randomUUID();
      const lane = laneOf(id, 4);
      expect(laneOf(id, 4)).toBe(lane);
      counts[lane] = (counts[lane] ?? 0) + 1;
    }
    // Even within a few percent: no lane gets half again its share.
    for (const c of counts) {
      expect(c).toBeGreaterThan(800);
      expect(c).toBeLessThan(1200);
    }
    expect(laneOf(taskId, 0)).toBe(0);
    expect(laneOf(taskId, 1)).toBe(0);
    expect(laneOf(taskId, 64)).toBeLessThan(64);
  });
});

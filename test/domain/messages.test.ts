import { describe, expect, it } from 'vitest';
import { invalidResultBatch } from '../../src/domain/index.js';

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

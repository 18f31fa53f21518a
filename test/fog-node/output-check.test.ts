import { describe, expect, it } from 'vitest';
import { checkOutput, MAX_ERROR_MESSAGE_CHARS, storableTaskError, storableText } from '../../src/fog-node/output-check.js';

describe('checkOutput: what a fog node may publish as a task output', () => {
  it('accepts JSON values PostgreSQL stores, and gives their size', () => {
    expect(checkOutput({ a: [1, 'two', null, true], 'ключ': 'é' }, 1024)).toEqual({ ok: true, bytes: Buffer.byteLength(JSON.stringify({ a: [1, 'two', null, true], 'ключ': 'é' })) });
    expect(checkOutput(undefined, 1024)).toEqual({ ok: true, bytes: 4 });
    expect(checkOutput(null, 4)).toEqual({ ok: true, bytes: 4 });
    expect(checkOutput('😀 a full surrogate pair', 1024).ok).toBe(true);
    // A backslash followed by "u0000" is plain text, not a NUL.
    expect(checkOutput({ s: '\\u0000' }, 1024).ok).toBe(true);
    expect(checkOutput(new Date(0), 1024).ok).toBe(true);
  });

  it('refuses U+0000 in a string, nested or at the top', () => {
    const nested = checkOutput({ a: [{ text: 'x\u0000y' }] }, 1024);
    expect(nested).toEqual({ ok: false, message: expect.stringContaining('under key "text" that contains U+0000') });
    expect(checkOutput('a\u0000', 1024)).toEqual({ ok: false, message: expect.stringContaining('string that contains U+0000') });
    expect(checkOutput({ toJSON: () => 'late\u0000' }, 1024).ok).toBe(false);
  });

  it('refuses U+0000 in an object key', () => {
    expect(checkOutput({ ['k\u0000']: 1 }, 1024)).toEqual({ ok: false, message: expect.stringContaining('object key "k\\u0000" that contains U+0000') });
  });

  it('refuses an unpaired surrogate (jsonb refuses its escape)', () => {
    expect(checkOutput({ s: 'broken \ud83d pair' }, 1024)).toEqual({ ok: false, message: expect.stringContaining('unpaired UTF-16 surrogate') });
    expect(checkOutput({ s: '\ude00' }, 1024).ok).toBe(false);
  });

  it('refuses what JSON cannot carry', () => {
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    expect(checkOutput(cycle, 1024)).toEqual({ ok: false, message: expect.stringContaining('not JSON-serialisable') });
    expect(checkOutput({ n: 10n }, 1024)).toEqual({ ok: false, message: expect.stringContaining('not JSON-serialisable') });
  });

  it('refuses an output larger than the limit, counted in UTF-8 bytes of its JSON', () => {
    expect(checkOutput('é'.repeat(10), 22).ok).toBe(true); // 2 quotes + 20 bytes
    expect(checkOutput('é'.repeat(10), 21)).toEqual({ ok: false, message: 'output is 22 bytes of JSON, more than this node\'s limit of 21 (FOG_NODE_MAX_OUTPUT_BYTES)' });
  });
});

describe('storable task errors', () => {
  it('replaces U+0000 and unpaired surrogates, keeps the rest', () => {
    expect(storableText('a\u0000b\ud800c😀', 100)).toBe('a\uFFFDb\uFFFDc😀');
    expect(storableTaskError({ message: 'bad\u0000', code: 'c\u0000', retryable: false })).toEqual({ message: 'bad\uFFFD', code: 'c\uFFFD', retryable: false });
  });

  it('cuts long messages without leaving half a surrogate pair', () => {
    const long = 'x'.repeat(MAX_ERROR_MESSAGE_CHARS - 1) + '😀😀';
    const cut = storableTaskError({ message: long, code: 'c', retryable: true }).message;
    expect(cut).toHaveLength(MAX_ERROR_MESSAGE_CHARS);
    expect(cut.endsWith('\uFFFD')).toBe(true);
  });

  it('fills in a code and retryable a handler left out', () => {
    expect(storableTaskError({ message: 'm', code: '', retryable: undefined as unknown as boolean })).toEqual({ message: 'm', code: 'handler_error', retryable: true });
  });
});

import { describe, expect, it } from 'vitest';
import { isStorableText, storableBody, storableJson, storableText } from '../../src/ingest/storable.js';

describe('storable input', () => {
  it('replaces NUL and lone surrogates, keeps pairs and everything else', () => {
    expect(storableText('a\u0000b')).toBe('a\uFFFDb');
    expect(storableText('x\uD800y\uDC00')).toBe('x\uFFFDy\uFFFD');
    expect(storableText('ok 😀 ü')).toBe('ok 😀 ü');
    // Cut inside a pair: the half left over is replaced, never stored alone.
    expect(storableText('ab😀', 3)).toBe('ab\uFFFD');
    expect(isStorableText('a\u0000')).toBe(false);
    expect(isStorableText('😀')).toBe(true);
  });

  it('makes every string and key of a JSON value storable, Buffers and Dates in their JSON form', () => {
    expect(storableJson({ 'k\u0000': ['v\u0000', 1, null, { d: new Date(0) }], b: Buffer.from('hi') })).toEqual({
      'k\uFFFD': ['v\uFFFD', 1, null, { d: '1970-01-01T00:00:00.000Z' }],
      b: { type: 'Buffer', data: [104, 105] },
    });
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    expect(storableJson(cycle)).toBe('[object Object]');
    expect(storableJson(undefined)).toBeNull();
  });

  it('keeps a body as text when PostgreSQL can store it, else a readable copy and the exact bytes in base64', () => {
    expect(storableBody(Buffer.from('{"a":"ü"}'))).toEqual({ body: '{"a":"ü"}' });
    const nul = Buffer.from('a\u0000b');
    expect(storableBody(nul)).toEqual({ body: 'a\uFFFDb', bodyBase64: nul.toString('base64') });
    const invalid = Buffer.from([0x61, 0xff, 0x62]);
    expect(storableBody(invalid)).toEqual({ body: 'a\uFFFDb', bodyBase64: invalid.toString('base64') });
    expect(storableBody(Buffer.from('abcdef'), 3)).toEqual({ body: 'abc', truncated: true });
  });
});

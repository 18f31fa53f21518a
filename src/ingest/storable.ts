/**
 * Making untrusted input storable: what ingest records about a message or record it could not
 * apply must itself always be writable, whatever the message held. PostgreSQL refuses a NUL
 * character in text and jsonb (22P05, 22021) and a lone UTF-16 surrogate in jsonb (22P02);
 * everything else JSON can say, it stores.
 */

// eslint-disable-next-line no-control-regex -- NUL is what PostgreSQL refuses: finding it is the point
const NUL = /\u0000/g;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** `text` with every NUL and lone surrogate replaced by U+FFFD, cut to `maxChars` (a pair cut in two shows as U+FFFD). */
export function storableText(text: string, maxChars = Infinity): string {
  const cut = text.length > maxChars ? text.slice(0, maxChars) : text;
  return cut.replace(NUL, '\uFFFD').replace(LONE_SURROGATE, '\uFFFD');
}

/** Whether PostgreSQL stores `text` as it is. */
export function isStorableText(text: string): boolean {
  // eslint-disable-next-line no-control-regex -- as NUL above
  return !/\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(text);
}

/**
 * `value` as plain JSON (Buffers, Dates and the like in their JSON form) with every string and
 * key made storable. A value JSON cannot hold (a cycle, a BigInt) becomes its string form.
 */
export function storableJson(value: unknown): unknown {
  let plain: unknown;
  try {
    const text = JSON.stringify(value);
    plain = text === undefined ? null : (JSON.parse(text) as unknown);
  } catch {
    return storableText(String(value));
  }
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return storableText(v);
    if (Array.isArray(v)) return v.map(walk);
    if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [storableText(k), walk(x)]));
    return v;
  };
  return walk(plain);
}

/** A message body as kept in the log: `body` is readable text; `bodyBase64` holds the exact bytes when the text is not them. */
export interface StoredBody {
  readonly body: string;
  readonly bodyBase64?: string;
  /** The body was longer than what is kept. */
  readonly truncated?: true;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The first `maxBytes` of a message body, storable: as text when they are valid UTF-8 that
 * PostgreSQL stores as it is, else as a readable copy (invalid bytes, NUL and lone surrogates
 * shown as U+FFFD) plus the exact bytes in base64.
 */
export function storableBody(content: Buffer, maxBytes = 100_000): StoredBody {
  const kept = content.length > maxBytes ? content.subarray(0, maxBytes) : content;
  const truncated = content.length > maxBytes ? ({ truncated: true } as const) : {};
  let text: string | undefined;
  try {
    text = UTF8.decode(kept);
  } catch {
    text = undefined; // invalid UTF-8 (or a character cut at maxBytes)
  }
  if (text !== undefined && isStorableText(text)) return { body: text, ...truncated };
  return { body: storableText(kept.toString('utf8')), bodyBase64: kept.toString('base64'), ...truncated };
}

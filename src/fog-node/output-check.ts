import type { TaskError } from '../domain/index.js';

/** A UTF-16 surrogate without its other half: JSON.stringify escapes it, and PostgreSQL's jsonb refuses the escape. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const LONE_SURROGATES = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** Why a string cannot be stored in a jsonb value, or null when it can. */
function unstorableText(text: string): string | null {
  if (text.includes('\u0000')) return 'contains U+0000';
  if (LONE_SURROGATE.test(text)) return 'contains an unpaired UTF-16 surrogate';
  return null;
}

const preview = (text: string) => JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text);

export type OutputCheck =
  /** `bytes`: size of the output's JSON text (UTF-8). */
  | { readonly ok: true; readonly bytes: number }
  | { readonly ok: false; readonly message: string };

/**
 * Checks that a handler's output can be stored in PostgreSQL's jsonb as the
 * node sends it: it serialises as JSON, no string or key holds U+0000 (or an
 * unpaired surrogate), and its JSON text is at most `maxBytes` (UTF-8) long.
 * `undefined` (and a function) counts as `null`, as the node reports it.
 *
 * ### Example
 * ```ts
 * checkOutput({ text: 'a\u0000b' }, 1024); // { ok: false, message: 'output has a string under key "text" that contains U+0000; ...' }
 * ```
 */
export function checkOutput(output: unknown, maxBytes: number): OutputCheck {
  // Set inside the replacer, which flow analysis does not see: typed so, not narrowed to null.
  let problem = null as string | null;
  let json: string | undefined;
  try {
    // One pass: the replacer sees every key and every value after toJSON, as the broker message will carry them.
    json = JSON.stringify(output ?? null, (key: string, value: unknown) => {
      if (problem) return undefined;
      const keyProblem = unstorableText(key);
      if (keyProblem) problem = `output has an object key ${preview(key)} that ${keyProblem}`;
      else if (typeof value === 'string') {
        const valueProblem = unstorableText(value);
        if (valueProblem) problem = `output has a string${key === '' ? '' : ` under key ${preview(key)}`} that ${valueProblem}`;
      }
      return value;
    });
  } catch (error) {
    return { ok: false, message: `output is not JSON-serialisable: ${String((error as Error)?.message ?? error)}` };
  }
  if (problem) return { ok: false, message: `${problem}; PostgreSQL jsonb cannot store it` };
  // A function or symbol serialises to nothing (null at the top), as JSON drops them anywhere else.
  const bytes = json === undefined ? 4 : Buffer.byteLength(json, 'utf8');
  if (bytes > maxBytes) return { ok: false, message: `output is ${bytes} bytes of JSON, more than this node's limit of ${maxBytes} (FOG_NODE_MAX_OUTPUT_BYTES)` };
  return { ok: true, bytes };
}

/** Longest message a failed record carries; the rest is cut. */
export const MAX_ERROR_MESSAGE_CHARS = 2000;
const MAX_ERROR_CODE_CHARS = 100;

/** Makes text storable in jsonb: U+0000 → U+FFFD, unpaired surrogates → U+FFFD, cut to `max` characters without splitting a pair. */
export function storableText(text: string, max: number): string {
  let out = text.length > max ? text.slice(0, max) : text;
  out = out.replaceAll('\u0000', '\uFFFD');
  return LONE_SURROGATE.test(out) ? out.replace(LONE_SURROGATES, '\uFFFD') : out;
}

/** A task error whose message and code PostgreSQL can store, whatever the handler threw. */
export function storableTaskError(error: TaskError): TaskError {
  return {
    message: storableText(typeof error.message === 'string' ? error.message : String(error.message), MAX_ERROR_MESSAGE_CHARS),
    code: storableText(typeof error.code === 'string' && error.code ? error.code : 'handler_error', MAX_ERROR_CODE_CHARS),
    retryable: typeof error.retryable === 'boolean' ? error.retryable : true,
    // The class name of what the handler threw, when it says more than `Error`.
    ...(typeof error.name === 'string' && error.name && error.name !== 'Error' ? { name: storableText(error.name, MAX_ERROR_CODE_CHARS) } : {}),
  };
}

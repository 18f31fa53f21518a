/**
 * Errors a handler throws, and how they cross the worker-thread boundary: structured clone keeps
 * an Error's message but not its class or its own fields, so a handler error travels as
 * `{ name, message, code, retryable }` and is rebuilt on the other side with the same name.
 */

/** What travels from the worker thread for a thrown error. */
export interface SerializedError {
  readonly name: string;
  readonly message: string;
  readonly code: string;
  readonly retryable: boolean;
}

/**
 * An error a handler throws on purpose, with a stable `code` and whether a retry can help.
 *
 * ### Examples
 * ```ts
 * throw new HandlerError('mailbox full', { code: 'mailbox_full', retryable: false });
 * ```
 */
export class HandlerError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  constructor(message: string, opts: { code?: string; retryable?: boolean; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'HandlerError';
    this.code = opts.code ?? 'handler_error';
    this.retryable = opts.retryable ?? true;
  }
}

/** A HandlerError: `retryable` defaults to true, `code` to `handler_error`. */
export function handlerError(message: string, opts: { code?: string; retryable?: boolean; cause?: unknown } = {}): HandlerError {
  return new HandlerError(message, opts);
}

/** Wraps anything thrown into an Error (a string, a plain object), keeping the original as `cause`. */
export function toError(thrown: unknown): Error {
  if (thrown instanceof Error) return thrown;
  const message = typeof thrown === 'string' ? thrown : (() => {
    try {
      return JSON.stringify(thrown) ?? String(thrown);
    } catch {
      return String(thrown);
    }
  })();
  return new Error(message, { cause: thrown });
}

/** Marks an error as worth retrying (the attempt fails, the task is retried within maxAttempts); its class, message and code are kept. */
export function retryable<E = Error>(error: E): E extends Error ? E : Error {
  return Object.assign(toError(error), { retryable: true }) as unknown as E extends Error ? E : Error;
}

/** Marks an error as permanent (the task fails now, no retry); its class, message and code are kept. */
export function permanent<E = Error>(error: E): E extends Error ? E : Error {
  return Object.assign(toError(error), { retryable: false }) as unknown as E extends Error ? E : Error;
}

/** The wire form of a thrown value: its class name, message, `code` (default `handler_error`) and `retryable` (default true). */
export function serializeError(thrown: unknown): SerializedError {
  const e = toError(thrown) as Error & { code?: unknown; retryable?: unknown };
  const name = typeof e.name === 'string' && e.name ? e.name : (e.constructor?.name ?? 'Error');
  return {
    // A subclass that did not set `name` still shows as `Error`: its constructor's name is better.
    name: name === 'Error' && e.constructor?.name && e.constructor.name !== 'Object' ? e.constructor.name : name,
    message: String(e.message),
    code: typeof e.code === 'string' && e.code ? e.code : 'handler_error',
    retryable: typeof e.retryable === 'boolean' ? e.retryable : true,
  };
}

/** Rebuilds a serialized error as an Error with the same name, message, code and retryable (the class itself cannot cross a thread). */
export function deserializeError(s: SerializedError): Error & { code: string; retryable: boolean } {
  const error = new Error(s.message) as Error & { code: string; retryable: boolean };
  error.name = s.name;
  error.code = s.code;
  error.retryable = s.retryable;
  return error;
}

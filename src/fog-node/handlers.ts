import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

/** How a task type runs: inline on the node's event loop, or in a worker thread. */
export type Handler =
  | { readonly kind: 'inline'; run(payload: unknown, signal: AbortSignal, context: HandlerContext): unknown /* a value, or a promise of one */ }
  | { readonly kind: 'thread'; readonly module: string; readonly exportName: string };

/** What a handler knows of the run it is part of. */
export interface HandlerContext {
  readonly taskId: string;
  readonly attempt: number;
}

/** An error a handler throws may say whether a retry can help (default: it can). */
export function handlerError(message: string, opts: { code?: string; retryable?: boolean } = {}): Error {
  return Object.assign(new Error(message), { code: opts.code ?? 'handler_error', retryable: opts.retryable ?? true });
}

const THREAD_HANDLERS = import.meta.url.endsWith('.ts')
  ? new URL('../../dist/fog-node/thread-handlers.js', import.meta.url).href
  : new URL('./thread-handlers.js', import.meta.url).href;

/** The built-ins: noop, sleep {ms}, fail {message, retryable, code}, flaky {failTimes}, echo {value, nul}; in threads: checksum {bytes, rounds}, crash {mode}, spin {ms}. */
export function builtinHandlers(): Map<string, Handler> {
  return new Map<string, Handler>([
    ['noop', { kind: 'inline', run: () => null }],
    [
      'sleep',
      {
        kind: 'inline',
        run: (payload, signal) =>
          new Promise((resolvePromise, reject) => {
            const ms = Math.max(0, Number(((payload ?? {}) as { ms?: number }).ms ?? 100));
            const timer = setTimeout(() => {
              signal.removeEventListener('abort', onAbort);
              resolvePromise({ sleptMs: ms });
            }, ms);
            const onAbort = () => {
              clearTimeout(timer);
              reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
            };
            signal.addEventListener('abort', onAbort, { once: true });
          }),
      },
    ],
    [
      'fail',
      {
        kind: 'inline',
        run: (payload) => {
          const p = (payload ?? {}) as { message?: string; retryable?: boolean; code?: string };
          throw handlerError(p.message ?? 'failed on purpose', { code: p.code ?? 'fail', retryable: p.retryable ?? false });
        },
      },
    ],
    [
      'flaky',
      {
        kind: 'inline',
        // Fails (retryably) on its first `failTimes` attempts, then succeeds: exercises retries.
        run: (payload, _signal, context) => {
          const failTimes = Number(((payload ?? {}) as { failTimes?: number }).failTimes ?? 1);
          if (context.attempt <= failTimes) throw handlerError(`flaky failure on attempt ${context.attempt}`, { code: 'flaky', retryable: true });
          return { attempt: context.attempt };
        },
      },
    ],
    [
      'echo',
      {
        kind: 'inline',
        // Returns `value`. With `nul: true` the output carries a U+0000, which PostgreSQL's jsonb
        // refuses (a payload cannot carry one: it is stored as jsonb too): exercises the output check.
        run: (payload) => {
          const p = (payload ?? {}) as { value?: unknown; nul?: boolean };
          return p.nul ? { value: p.value ?? null, text: 'before\u0000after' } : (p.value ?? null);
        },
      },
    ],
    ['checksum', { kind: 'thread', module: THREAD_HANDLERS, exportName: 'checksum' }],
    ['crash', { kind: 'thread', module: THREAD_HANDLERS, exportName: 'crash' }],
    ['spin', { kind: 'thread', module: THREAD_HANDLERS, exportName: 'spin' }],
  ]);
}

/**
 * Built-ins plus every function a user module exports (FOG_NODE_HANDLERS).
 * User handlers run in worker threads with the heap limit, as
 * `(payload, signal) => output`; a thrown error's `retryable` and `code` are kept.
 */
export async function loadHandlers(userModule: string): Promise<Map<string, Handler>> {
  const handlers = builtinHandlers();
  if (!userModule) return handlers;
  const href = pathToFileURL(isAbsolute(userModule) ? userModule : resolve(process.cwd(), userModule)).href;
  const mod = (await import(href)) as Record<string, unknown>;
  const exports = { ...((mod.default as Record<string, unknown> | undefined) ?? {}), ...mod };
  for (const [name, value] of Object.entries(exports)) {
    if (typeof value === 'function') handlers.set(name, { kind: 'thread', module: href, exportName: name });
  }
  return handlers;
}

import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { handlerError } from '../worker/errors.js';

export { handlerError };

/** How a task type runs: inline on the node's event loop, or in a worker thread. */
export type Handler =
  | { readonly kind: 'inline'; run(payload: unknown, signal: AbortSignal, context: HandlerContext): unknown /* a value, or a promise of one */ }
  | { readonly kind: 'thread'; readonly module: string; readonly exportName: string };

/** What a handler knows of the run it is part of. */
export interface HandlerContext {
  readonly taskId: string;
  readonly attempt: number;
  /** The dependencies' outcomes by task id (TaskMessage.dependencies; {} without). */
  readonly dependencies: Readonly<Record<string, { readonly state: string; readonly output: unknown }>>;
  readonly dependenciesTruncated: boolean;
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
 * Built-ins plus the task types of a user module (FOG_NODE_HANDLERS): a default export made by
 * defineHandlers (`fogsched/worker`), and plain exported functions `(payload, signal, ctx)`.
 * The module is never imported here: `describe` imports it in a worker thread and returns its
 * type names, so its top-level code runs in worker threads only. A user type named like a
 * built-in replaces it.
 */
export async function loadHandlers(userModule: string, describe: (href: string) => Promise<string[]>): Promise<Map<string, Handler>> {
  const handlers = builtinHandlers();
  if (!userModule) return handlers;
  const href = pathToFileURL(isAbsolute(userModule) ? userModule : resolve(process.cwd(), userModule)).href;
  for (const name of await describe(href)) handlers.set(name, { kind: 'thread', module: href, exportName: name });
  return handlers;
}

import { pino, type Logger } from 'pino';
import { MAX_PROGRESS_MESSAGE_CHARS } from '../domain/index.js';
import { permanent, retryable } from './errors.js';
import { isDefinedHandlers, type HandlerContext, type TaskHandler } from './define.js';

/**
 * The worker-thread side of the SDK: finds a handler in a loaded handlers module, lists its task
 * types, and builds the `ctx` a handler gets. Used by the fog node's handler worker and by
 * runHandler; nothing here runs in a node's main thread.
 */

/** A handler as found in a module: an SDK handler `(payload, ctx)`, or a plain export `(payload, signal, ctx)`. */
export type FoundHandler = { readonly style: 'sdk'; readonly fn: TaskHandler } | { readonly style: 'plain'; readonly fn: (payload: unknown, signal: AbortSignal, ctx: HandlerContext) => unknown };

type Module = Record<string, unknown>;

/** The task types a handlers module defines: defineHandlers' keys (default export), then plain exported functions. */
export function typeNamesOf(mod: Module): string[] {
  const names = new Set<string>();
  if (isDefinedHandlers(mod.default)) for (const name of Object.keys(mod.default.handlers)) names.add(name);
  else if (typeof mod.default === 'object' && mod.default !== null) {
    for (const [name, value] of Object.entries(mod.default as Module)) if (typeof value === 'function') names.add(name);
  }
  for (const [name, value] of Object.entries(mod)) if (name !== 'default' && typeof value === 'function') names.add(name);
  return [...names];
}

/** The handler of `type` in a loaded module, or undefined. */
export function findHandler(mod: Module, type: string): FoundHandler | undefined {
  if (isDefinedHandlers(mod.default)) {
    const fn = mod.default.handlers[type];
    if (fn) return { style: 'sdk', fn };
  }
  const plain = type !== 'default' ? (mod[type] ?? (typeof mod.default === 'object' && mod.default !== null && !isDefinedHandlers(mod.default) ? (mod.default as Module)[type] : undefined)) : undefined;
  if (typeof plain === 'function') return { style: 'plain', fn: plain as (payload: unknown, signal: AbortSignal, ctx: HandlerContext) => unknown };
  return undefined;
}

/** What a node knows of the run, sent to the thread with the payload. */
export interface RunInfo {
  readonly taskId: string;
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly tenant: string;
  readonly type: string;
  readonly tier: string;
  readonly deadline: string | null;
  readonly traceId: string | null;
  /** The task message's dependencies (absent: none). */
  readonly dependencies?: Readonly<Record<string, { readonly state: string; readonly output: unknown }>>;
  readonly dependenciesTruncated?: boolean;
}

/** Throws a RangeError unless `fraction` is in [0, 1] and `message` a string of at most 1,000 characters (or absent). */
export function checkProgress(fraction: unknown, message: unknown): void {
  if (typeof fraction !== 'number' || !Number.isFinite(fraction) || fraction < 0 || fraction > 1) {
    throw new RangeError(`ctx.progress: fraction must be a number in [0, 1], got ${String(fraction)}`);
  }
  if (message !== undefined && message !== null && typeof message !== 'string') throw new RangeError(`ctx.progress: message must be a string, got ${typeof message}`);
  if (typeof message === 'string' && message.length > MAX_PROGRESS_MESSAGE_CHARS) {
    throw new RangeError(`ctx.progress: message is ${message.length} characters, at most ${MAX_PROGRESS_MESSAGE_CHARS} allowed`);
  }
}

/** A pino logger whose JSON lines go to `write` (the node's main thread, which writes them to its log). */
export function threadLogger(write: (line: string) => void, level: string): Logger {
  return pino({ level, base: undefined }, { write });
}

/** The ctx of one run. */
export function createContext(
  info: RunInfo,
  deps: { signal: AbortSignal; log: Logger; progress: (fraction: number, message: string | null) => void },
): HandlerContext {
  const log = deps.log.child({ taskId: info.taskId, attempt: info.attempt, ...(info.traceId ? { traceId: info.traceId } : {}) });
  return Object.freeze({
    taskId: info.taskId,
    attempt: info.attempt,
    maxAttempts: info.maxAttempts,
    tenant: info.tenant,
    type: info.type,
    tier: info.tier,
    deadline: info.deadline,
    dependencies: Object.freeze({ ...(info.dependencies ?? {}) }),
    dependenciesTruncated: info.dependenciesTruncated === true,
    signal: deps.signal,
    log,
    progress(fraction: number, message?: string) {
      checkProgress(fraction, message);
      deps.progress(fraction, message ?? null);
    },
    retryable,
    permanent,
  });
}

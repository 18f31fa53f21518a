/** defineHandlers and the types of a handler and its ctx (see index.ts). */
import type { Logger } from 'pino';

/** What a handler knows of the run it is part of, and what it may do besides returning. */
export interface HandlerContext {
  readonly taskId: string;
  /** 1-based; a retry runs with the next attempt. */
  readonly attempt: number;
  /** The task's attempt budget (counted from its last requeue). */
  readonly maxAttempts: number;
  readonly tenant: string;
  /** The task type (the key in defineHandlers). */
  readonly type: string;
  /** The tier the task was routed to. */
  readonly tier: string;
  /** ISO-8601 time after which the result is of no use, or null. */
  readonly deadline: string | null;
  /**
   * The outcomes of the task's dependencies (`dependsOn`), by task id, read when the task was
   * dispatched: `state` ('succeeded', or 'failed'/'cancelled' for a task submitted with
   * `onDependencyFailure: 'run'`) and `output` (a succeeded task's output, else null). `{}` for a
   * task without dependencies.
   */
  readonly dependencies: Readonly<Record<string, TaskDependency>>;
  /** True when some outputs were left out of `dependencies` (their state kept, output null) because together they passed 4 MiB. */
  readonly dependenciesTruncated: boolean;
  /** Aborted when the task is cancelled, times out, or the node stops past its grace: stop then (throwing is fine). */
  readonly signal: AbortSignal;
  /** A pino logger bound to taskId, attempt and traceId; its lines go to the node's log. */
  readonly log: Logger;
  /**
   * Reports how far the run got: `fraction` in [0, 1], an optional message of at most 1,000
   * characters (anything else throws a RangeError). Cheap to call often: the node sends at
   * most one TaskProgressed per PROGRESS_MIN_INTERVAL_MS (default 1,000) and always the last.
   * A report also tells the scheduler the run is alive (it extends the running lease).
   */
  progress(fraction: number, message?: string): void;
  /** Marks an error as worth a retry: `throw ctx.retryable(err)`. */
  retryable<E>(error: E): E extends Error ? E : Error;
  /** Marks an error as permanent (the task fails now): `throw ctx.permanent(err)`. */
  permanent<E>(error: E): E extends Error ? E : Error;
}

/** One dependency's outcome in ctx.dependencies. */
export interface TaskDependency {
  readonly state: 'succeeded' | 'failed' | 'cancelled' | (string & {});
  readonly output: unknown;
}

/** Payload and output types per task type: `{ 'email.send': { in: {...}; out: {...} } }`. */
export type HandlerTypes = Record<string, { in: unknown; out: unknown }>;

/**
 * One handler. Declared as a method so a handler of a module without HandlerTypes may annotate its
 * payload parameter with its own type.
 */
export type TaskHandler<In = unknown, Out = unknown> = {
  bivarianceHack(payload: In, ctx: HandlerContext): Out | Promise<Out>;
}['bivarianceHack'];

/** The handlers of a module, one per task type of `T`. */
export type HandlerMap<T extends HandlerTypes> = { readonly [K in keyof T & string]: TaskHandler<T[K]['in'], T[K]['out']> };

/** Brands what defineHandlers returns; Symbol.for so two copies of fogsched in one process still agree. */
export const HANDLERS_BRAND: unique symbol = Symbol.for('fogsched.handlers') as never;

/** What defineHandlers returns: default-export it from the FOG_NODE_HANDLERS module. */
export interface DefinedHandlers<T extends HandlerTypes = HandlerTypes> {
  readonly [HANDLERS_BRAND]: true;
  readonly handlers: Readonly<Record<string, TaskHandler>>;
  /** Type-level only (never set): the payload and output types, for typed clients and tests. */
  readonly types?: T;
}

/** Any string names a task type: `email.send`, `image/resize`, `report:monthly`; not an empty one. */
const TYPE_NAME = /^\S(?:.{0,198}\S)?$/u;

/**
 * Defines the task types of a handlers module. Any non-empty string (up to 200 characters, no
 * leading or trailing space) is a type name. Payload and output types come from the generic.
 */
export function defineHandlers<T extends HandlerTypes = Record<string, { in: unknown; out: unknown }>>(handlers: HandlerMap<T>): DefinedHandlers<T> {
  if (typeof handlers !== 'object' || handlers === null) throw new TypeError('defineHandlers takes an object of { "type.name": handler }');
  const copy: Record<string, TaskHandler> = {};
  for (const [name, fn] of Object.entries(handlers as Record<string, unknown>)) {
    if (!TYPE_NAME.test(name)) throw new TypeError(`defineHandlers: ${JSON.stringify(name)} is not a task type name (1 to 200 characters, no leading or trailing space)`);
    if (typeof fn !== 'function') throw new TypeError(`defineHandlers: the handler of ${name} is not a function`);
    copy[name] = fn as TaskHandler;
  }
  return Object.freeze({ [HANDLERS_BRAND]: true as const, handlers: Object.freeze(copy) });
}

/** Is `value` what defineHandlers returned (possibly from another copy of fogsched)? */
export function isDefinedHandlers(value: unknown): value is DefinedHandlers {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[HANDLERS_BRAND] === true;
}


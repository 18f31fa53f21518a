/**
 * The handler SDK (`fogsched/worker`): what a module named by FOG_NODE_HANDLERS uses to define
 * its task types. A fog node loads that module in its worker threads only.
 *
 * ### Examples
 * ```ts
 * import { defineHandlers } from 'fogsched/worker';
 *
 * export default defineHandlers<{ 'email.send': { in: { to: string }; out: { id: string } } }>({
 *   'email.send': async (payload, ctx) => {
 *     ctx.log.info({ to: payload.to }, 'sending');
 *     ctx.progress(0.5, 'rendered');
 *     return { id: `${ctx.taskId}/${ctx.attempt}` };
 *   },
 * });
 * ```
 */
export { HandlerError, handlerError, permanent, retryable, type SerializedError } from './errors.js';
export {
  defineHandlers,
  isDefinedHandlers,
  HANDLERS_BRAND,
  type DefinedHandlers,
  type HandlerContext,
  type HandlerMap,
  type HandlerTypes,
  type TaskDependency,
  type TaskHandler,
} from './define.js';
export type { Logger } from 'pino';
export { runHandler, type RunHandlerOptions, type RunHandlerResult } from './testing.js';

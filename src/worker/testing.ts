import { randomUUID } from 'node:crypto';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createThreadPool, HandlerError, WorkerCrashedError } from '../fog-node/thread-pool.js';
import { deserializeError } from './errors.js';

/** How runHandler runs a handler; every field has a default. */
export interface RunHandlerOptions {
  /** The handlers module (path or file: URL); default FOG_NODE_HANDLERS. */
  readonly module?: string | URL;
  readonly taskId?: string;
  /** Default 1. */
  readonly attempt?: number;
  /** Default 3. */
  readonly maxAttempts?: number;
  /** Default 'default'. */
  readonly tenant?: string;
  /** Default 'light'. */
  readonly tier?: string;
  readonly deadline?: string | null;
  /** The thread's heap limit, as resources.memoryMb sets it on a node; default 64. */
  readonly memoryMb?: number;
  /** Aborts ctx.signal after this long and fails with code `timeout`, as a node does; default none. */
  readonly timeoutMs?: number;
  /** Aborts ctx.signal (as a cancel does). */
  readonly signal?: AbortSignal;
  /** Level of ctx.log; default 'info'. */
  readonly logLevel?: string;
  /** ctx.dependencies, as a node passes a released task's dependency outcomes; default {}. */
  readonly dependencies?: Readonly<Record<string, { readonly state: string; readonly output: unknown }>>;
  /** ctx.dependenciesTruncated; default false. */
  readonly dependenciesTruncated?: boolean;
}

/** What a run reported besides its output: every ctx.progress call (not coalesced) and every ctx.log line. */
export interface RunHandlerResult<Out = unknown> {
  readonly output: Out;
  readonly progress: readonly { fraction: number; message: string | null; at: string }[];
  readonly logs: readonly Record<string, unknown>[];
}

/**
 * Runs one handler as a fog node does: in a fresh worker thread with the task's heap limit, the
 * same ctx (log, progress, signal), the same error handling. Resolves with the output and what
 * the handler reported; rejects with the handler's error rebuilt on this side (same `name`,
 * `message`, `code`, `retryable`), or with code `out-of-memory`, `crashed` or `timeout`.
 *
 * ### Examples
 * ```ts
 * const { output, progress } = await runHandler('email.send', { to: 'a@b.c' }, { module: new URL('../handlers.js', import.meta.url), attempt: 2 });
 * ```
 */
export async function runHandler<Out = unknown>(type: string, payload: unknown, opts: RunHandlerOptions = {}): Promise<RunHandlerResult<Out>> {
  const raw = opts.module ?? process.env.FOG_NODE_HANDLERS;
  if (!raw) throw new TypeError('runHandler: say which handlers module to load (opts.module or FOG_NODE_HANDLERS)');
  const module = raw instanceof URL ? raw.href : raw.startsWith('file:') ? raw : pathToFileURL(isAbsolute(raw) ? raw : resolve(process.cwd(), raw)).href;
  const pool = createThreadPool({ keepIdle: 0, idleMs: 0 });
  const progress: { fraction: number; message: string | null; at: string }[] = [];
  const logs: Record<string, unknown>[] = [];
  const controller = new AbortController();
  const onAbort = () => controller.abort(Object.assign(new Error('cancelled'), { code: 'cancelled', retryable: false }));
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();
  const timer =
    opts.timeoutMs === undefined
      ? undefined
      : setTimeout(() => controller.abort(Object.assign(new Error(`timed out after ${opts.timeoutMs} ms`), { code: 'timeout', retryable: true })), opts.timeoutMs);
  const attempt = opts.attempt ?? 1;
  try {
    const output = await pool.run(
      {
        module,
        exportName: type,
        payload,
        heapMb: opts.memoryMb ?? 64,
        logLevel: opts.logLevel ?? 'info',
        info: {
          taskId: opts.taskId ?? randomUUID(),
          attempt,
          maxAttempts: opts.maxAttempts ?? Math.max(3, attempt),
          tenant: opts.tenant ?? 'default',
          type,
          tier: opts.tier ?? 'light',
          deadline: opts.deadline ?? null,
          traceId: null,
          dependencies: opts.dependencies ?? {},
          dependenciesTruncated: opts.dependenciesTruncated ?? false,
        },
      },
      controller.signal,
      {
        onProgress: (fraction, message, at) => progress.push({ fraction, message, at }),
        onLog: (line) => {
          try {
            logs.push(JSON.parse(line) as Record<string, unknown>);
          } catch {
            logs.push({ line });
          }
        },
      },
    );
    return { output: output as Out, progress, logs };
  } catch (error) {
    // As on a node: once the run was aborted (timeout, cancel), the abort is its outcome.
    if (controller.signal.aborted) throw controller.signal.reason;
    if (error instanceof HandlerError) {
      const t = error.taskError;
      throw deserializeError({ name: t.name ?? 'Error', message: t.message, code: t.code, retryable: t.retryable });
    }
    if (error instanceof WorkerCrashedError) {
      throw deserializeError({ name: 'WorkerCrashedError', message: error.message, code: error.reason, retryable: error.reason !== 'out-of-memory' });
    }
    throw error;
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
    await pool.close();
  }
}

import { Worker } from 'node:worker_threads';
import type { TaskError } from '../domain/index.js';
import type { SerializedError } from '../worker/errors.js';
import type { RunInfo } from '../worker/runtime.js';

/** Why a worker thread died under its handler. */
export type CrashReason = 'out-of-memory' | 'crashed';

/** The thread died under the handler (exit, out of memory): the outcome is unknown. */
export class WorkerCrashedError extends Error {
  constructor(
    readonly exitCode: number | null,
    detail: string,
    /** `out-of-memory`: V8 stopped the thread at its heap limit (ERR_WORKER_OUT_OF_MEMORY). */
    readonly reason: CrashReason = 'crashed',
  ) {
    super(`worker thread died: ${detail}`);
  }
}

/** A handler error with its task error shape (`name`: the class of what the handler threw). */
export class HandlerError extends Error {
  constructor(readonly taskError: TaskError) {
    super(taskError.message);
  }
}

// Under vitest the sources are .ts and a worker cannot load them; the build (which
// `npm test` runs first) has the compiled worker.
const WORKER_URL = import.meta.url.endsWith('.ts')
  ? new URL('../../dist/fog-node/handler-worker.js', import.meta.url)
  : new URL('./handler-worker.js', import.meta.url);

/** Smallest heap a thread gets, whatever the task asks (V8 and the handler module need some). */
export const MIN_THREAD_HEAP_MB = 32;

interface Slot {
  readonly worker: Worker;
  readonly heapMb: number;
  idleTimer?: NodeJS.Timeout;
}

/** What a run reports besides its outcome. */
export interface RunHooks {
  /** A progress report of the handler (already validated in the thread). */
  onProgress?(fraction: number, message: string | null, at: string): void;
  /** One pino JSON line the handler logged through ctx.log. */
  onLog?(line: string): void;
}

export interface ThreadRun {
  readonly module: string;
  readonly exportName: string;
  readonly payload: unknown;
  readonly info: RunInfo;
  /** The thread's old-generation heap limit (maxOldGenerationSizeMb); at least MIN_THREAD_HEAP_MB. */
  readonly heapMb: number;
  readonly logLevel?: string;
}

type FromThread =
  | { kind: 'result'; ok: true; value: unknown }
  | { kind: 'result'; ok: false; error: SerializedError }
  | { kind: 'progress'; fraction: number; message: string | null; at: string }
  | { kind: 'log'; line: string }
  | { kind: 'described'; names?: string[]; error?: SerializedError };

/**
 * Runs handlers in worker threads, each with the heap limit its task asks for. Idle threads are
 * kept per heap size (so a thread is reused only by a task with the same limit); a thread whose
 * handler crashed it, or ignored an abort, is thrown away.
 */
export function createThreadPool(opts: { keepIdle: number; idleMs: number }) {
  const idle = new Map<number, Slot[]>();
  const busy = new Set<Slot>();
  let idleCount = 0;

  const take = (heapMb: number): Slot => {
    const slot = idle.get(heapMb)?.pop();
    if (slot) {
      idleCount--;
      clearTimeout(slot.idleTimer);
      return slot;
    }
    const worker = new Worker(WORKER_URL, { resourceLimits: { maxOldGenerationSizeMb: heapMb, maxYoungGenerationSizeMb: Math.min(64, Math.max(4, Math.floor(heapMb / 8))) } });
    worker.unref();
    return { worker, heapMb };
  };

  const removeIdle = (slot: Slot) => {
    const list = idle.get(slot.heapMb) ?? [];
    const i = list.indexOf(slot);
    if (i >= 0) {
      list.splice(i, 1);
      idleCount--;
    }
  };

  const giveBack = (slot: Slot) => {
    busy.delete(slot);
    if (idleCount >= opts.keepIdle) {
      // Make room by ending the oldest idle thread of another size rather than this one.
      const other = [...idle.values()].flat().find((s) => s.heapMb !== slot.heapMb);
      if (!other) {
        void slot.worker.terminate();
        return;
      }
      removeIdle(other);
      clearTimeout(other.idleTimer);
      void other.worker.terminate();
    }
    slot.idleTimer = setTimeout(() => {
      removeIdle(slot);
      void slot.worker.terminate();
    }, opts.idleMs);
    slot.idleTimer.unref();
    idle.set(slot.heapMb, [...(idle.get(slot.heapMb) ?? []), slot]);
    idleCount++;
  };

  /** Posts `request` to a thread and settles on its `result`/`described` message; a thread that dies rejects with WorkerCrashedError. */
  const exchange = <T>(heapMb: number, request: unknown, signal: AbortSignal | undefined, hooks: RunHooks, accept: (m: FromThread) => { value: T } | { error: Error } | undefined): Promise<T> => {
    const slot = take(Math.max(MIN_THREAD_HEAP_MB, Math.ceil(heapMb)));
    busy.add(slot);
    const { worker } = slot;
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      let killTimer: NodeJS.Timeout | undefined;
      const finish = (fn: () => void, keep: boolean) => {
        if (settled) return;
        settled = true;
        clearTimeout(killTimer);
        signal?.removeEventListener('abort', onAbort);
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
        if (keep) giveBack(slot);
        else {
          busy.delete(slot);
          void worker.terminate();
        }
        fn();
      };
      const onMessage = (m: FromThread) => {
        if (m.kind === 'progress') return hooks.onProgress?.(m.fraction, m.message, m.at);
        if (m.kind === 'log') return hooks.onLog?.(m.line);
        const outcome = accept(m);
        if (!outcome) return;
        if ('value' in outcome) finish(() => resolve(outcome.value), true);
        else finish(() => reject(outcome.error), !signal?.aborted);
      };
      const onError = (error: Error & { code?: string }) =>
        finish(
          () =>
            reject(
              error.code === 'ERR_WORKER_OUT_OF_MEMORY'
                ? new WorkerCrashedError(null, `out of memory: the handler went past its heap limit of ${slot.heapMb} MB (resources.memoryMb)`, 'out-of-memory')
                : new WorkerCrashedError(null, error.message),
            ),
          false,
        );
      const onExit = (code: number) => finish(() => reject(new WorkerCrashedError(code, `exit code ${code}`)), false);
      const onAbort = () => {
        worker.postMessage({ kind: 'abort' });
        // A handler deaf to its signal gets its thread terminated.
        killTimer = setTimeout(() => finish(() => reject(signal?.reason), false), 250);
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      worker.postMessage(request);
    });
  };

  return {
    /** Runs `exportName` of `module` with the payload; rejects with HandlerError, WorkerCrashedError or the abort reason. */
    run(run: ThreadRun, signal: AbortSignal, hooks: RunHooks = {}): Promise<unknown> {
      const request = { kind: 'run', module: run.module, exportName: run.exportName, payload: run.payload, info: run.info, logLevel: run.logLevel ?? 'info' };
      return exchange<unknown>(run.heapMb, request, signal, hooks, (m) => {
        if (m.kind !== 'result') return undefined;
        if (m.ok) return { value: m.value };
        const { name, ...rest } = m.error;
        // `name` only when it says more than `Error`.
        return { error: new HandlerError(name && name !== 'Error' ? { ...rest, name } : rest) };
      });
    },
    /** Imports `module` in a thread and returns the task types it defines (the main thread never imports it). */
    describe(module: string, heapMb: number): Promise<string[]> {
      return exchange<string[]>(heapMb, { kind: 'describe', module }, undefined, {}, (m) => {
        if (m.kind !== 'described') return undefined;
        if (m.names) return { value: m.names };
        const e = m.error as SerializedError;
        return { error: Object.assign(new Error(`handlers module ${module} failed to load: ${e.name}: ${e.message}`), { code: 'HANDLERS_MODULE_INVALID' }) };
      });
    },
    async close() {
      const all = [...[...idle.values()].flat(), ...busy];
      for (const s of all) clearTimeout(s.idleTimer);
      await Promise.all(all.map((s) => s.worker.terminate()));
      idle.clear();
      idleCount = 0;
      busy.clear();
    },
  };
}
export type ThreadPool = ReturnType<typeof createThreadPool>;

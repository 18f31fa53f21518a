import { Worker } from 'node:worker_threads';
import type { TaskError } from '../domain/index.js';

/** The thread died under the handler (exit, out of memory): the outcome is unknown. */
export class WorkerCrashedError extends Error {
  constructor(readonly exitCode: number | null, detail: string) {
    super(`worker thread died: ${detail}`);
  }
}

/** A handler error with its task error shape. */
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

interface Slot {
  readonly worker: Worker;
  idleTimer?: NodeJS.Timeout;
}

/**
 * Runs handlers in worker threads with a heap limit. Threads are reused; a
 * thread whose handler crashed it, or ignored an abort, is thrown away.
 */
export function createThreadPool(opts: { memoryMb: number; keepIdle: number; idleMs: number }) {
  const idle: Slot[] = [];
  const busy = new Set<Slot>();

  const take = (): Slot => {
    const slot = idle.pop();
    if (slot) {
      clearTimeout(slot.idleTimer);
      return slot;
    }
    const worker = new Worker(WORKER_URL, { resourceLimits: { maxOldGenerationSizeMb: opts.memoryMb, maxYoungGenerationSizeMb: Math.max(4, Math.floor(opts.memoryMb / 8)) } });
    worker.unref();
    return { worker };
  };

  const giveBack = (slot: Slot) => {
    busy.delete(slot);
    if (idle.length >= opts.keepIdle) {
      void slot.worker.terminate();
      return;
    }
    slot.idleTimer = setTimeout(() => {
      const i = idle.indexOf(slot);
      if (i >= 0) idle.splice(i, 1);
      void slot.worker.terminate();
    }, opts.idleMs);
    slot.idleTimer.unref();
    idle.push(slot);
  };

  return {
    /** Runs `exportName` of `module` with the payload; rejects with HandlerError, WorkerCrashedError or the abort reason. */
    run(module: string, exportName: string, payload: unknown, signal: AbortSignal): Promise<unknown> {
      const slot = take();
      busy.add(slot);
      const { worker } = slot;
      return new Promise<unknown>((resolve, reject) => {
        let settled = false;
        let killTimer: NodeJS.Timeout | undefined;
        const finish = (fn: () => void, keep: boolean) => {
          if (settled) return;
          settled = true;
          clearTimeout(killTimer);
          signal.removeEventListener('abort', onAbort);
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
        const onMessage = (m: { ok: boolean; value?: unknown; error?: TaskError }) =>
          m.ok ? finish(() => resolve(m.value), true) : finish(() => reject(new HandlerError(m.error as TaskError)), !signal.aborted);
        const onError = (error: Error) => finish(() => reject(new WorkerCrashedError(null, error.message)), false);
        const onExit = (code: number) => finish(() => reject(new WorkerCrashedError(code, `exit code ${code}`)), false);
        const onAbort = () => {
          worker.postMessage({ kind: 'abort' });
          // A handler deaf to its signal gets its thread terminated.
          killTimer = setTimeout(() => finish(() => reject(signal.reason), false), 250);
        };
        worker.on('message', onMessage);
        worker.on('error', onError);
        worker.on('exit', onExit);
        if (signal.aborted) return onAbort();
        signal.addEventListener('abort', onAbort, { once: true });
        worker.postMessage({ kind: 'run', module, exportName, payload });
      });
    },
    async close() {
      await Promise.all([...idle, ...busy].map((s) => s.worker.terminate()));
      idle.length = 0;
      busy.clear();
    },
  };
}
export type ThreadPool = ReturnType<typeof createThreadPool>;

import { parentPort } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';

/** Worker-thread side of the thread pool: runs one handler call at a time. */
interface RunRequest {
  readonly kind: 'run';
  readonly module: string;
  readonly exportName: string;
  readonly payload: unknown;
}

const port = parentPort;
if (!port) throw new Error('handler-worker must run in a worker thread');
let controller: AbortController | undefined;

port.on('message', (message: RunRequest | { kind: 'abort' }) => {
  if (message.kind === 'abort') {
    controller?.abort();
    return;
  }
  controller = new AbortController();
  const signal = controller.signal;
  void (async () => {
    try {
      const mod = (await import(message.module.startsWith('file:') ? message.module : pathToFileURL(message.module).href)) as Record<string, unknown>;
      const fn = mod[message.exportName] ?? (mod.default as Record<string, unknown> | undefined)?.[message.exportName];
      if (typeof fn !== 'function') throw Object.assign(new Error(`handler ${message.exportName} is not a function`), { code: 'unknown_handler', retryable: false });
      const value: unknown = await (fn as (p: unknown, s: AbortSignal) => unknown)(message.payload, signal);
      port.postMessage({ ok: true, value: value === undefined ? null : value });
    } catch (error) {
      const e = error as { message?: string; code?: unknown; retryable?: unknown };
      port.postMessage({
        ok: false,
        error: {
          message: String(e?.message ?? error),
          code: typeof e?.code === 'string' ? e.code : 'handler_error',
          retryable: typeof e?.retryable === 'boolean' ? e.retryable : true,
        },
      });
    }
  })();
});

import { parentPort } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { serializeError } from '../worker/errors.js';
import { createContext, findHandler, threadLogger, typeNamesOf, type RunInfo } from '../worker/runtime.js';

/**
 * Worker-thread side of the thread pool: runs one handler call at a time, and lists a module's
 * task types when asked (the node's main thread never imports a handlers module).
 *
 * Messages in: `run` (module, type, payload, run info), `abort`, `describe` (module).
 * Messages out: `log` (a pino JSON line), `progress` (fraction, message, at), `result`
 * (ok + value, or the error as { name, message, code, retryable }), `described` (names or error).
 */
type Request =
  | { readonly kind: 'run'; readonly module: string; readonly exportName: string; readonly payload: unknown; readonly info: RunInfo; readonly logLevel: string }
  | { readonly kind: 'abort' }
  | { readonly kind: 'describe'; readonly module: string };

const port = parentPort;
if (!port) throw new Error('handler-worker must run in a worker thread');
let controller: AbortController | undefined;

const load = async (module: string) => (await import(module.startsWith('file:') ? module : pathToFileURL(module).href)) as Record<string, unknown>;

port.on('message', (message: Request) => {
  if (message.kind === 'abort') {
    controller?.abort();
    return;
  }
  if (message.kind === 'describe') {
    void load(message.module).then(
      (mod) => port.postMessage({ kind: 'described', names: typeNamesOf(mod) }),
      (error: unknown) => port.postMessage({ kind: 'described', error: serializeError(error) }),
    );
    return;
  }
  controller = new AbortController();
  const signal = controller.signal;
  void (async () => {
    try {
      const mod = await load(message.module);
      const found = findHandler(mod, message.exportName);
      if (!found) throw Object.assign(new Error(`handler ${message.exportName} is not a function`), { code: 'unknown_handler', retryable: false });
      const log = threadLogger((line) => port.postMessage({ kind: 'log', line }), message.logLevel);
      const ctx = createContext(message.info, {
        signal,
        log,
        progress: (fraction, text) => port.postMessage({ kind: 'progress', fraction, message: text, at: new Date().toISOString() }),
      });
      const value: unknown = found.style === 'sdk' ? await found.fn(message.payload, ctx) : await found.fn(message.payload, signal, ctx);
      port.postMessage({ kind: 'result', ok: true, value: value === undefined ? null : value });
    } catch (error) {
      port.postMessage({ kind: 'result', ok: false, error: serializeError(error) });
    }
  })();
});

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { onHardExit, sleep } from './util.js';

const run = promisify(execFile);

/** The built CLI, as an operator runs it. */
export const FOGSCHED_BIN = fileURLToPath(new URL('../../bin/fogsched.js', import.meta.url));

/** One fogsched process of the system under test (`fogsched start --roles ...`). */
export interface ProcessSpec {
  /** Unique label, e.g. `api-1`, `fog-light-2`. */
  readonly name: string;
  /** The role it runs (`api`, `relay`, `fog-node`, ...). */
  readonly role: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
}

export interface Supervised {
  readonly spec: ProcessSpec;
  /** The pid of the running incarnation, or null while it is down. */
  pid(): number | null;
  /** Times (ms since epoch) this process was started, the first one included. */
  readonly starts: number[];
  /** Exits seen: when, the code or signal, and whether the harness caused it (`signal()`, `stop()`). */
  readonly exits: { at: number; code: number | null; signal: string | null; byHarness: boolean }[];
  /** Sends a signal to the running incarnation; an exit that follows a SIGKILL or SIGTERM sent here counts as caused by the harness. */
  signal(signal: NodeJS.Signals): boolean;
}

/**
 * Runs each process and restarts it after it exits (as Swarm would), until `stop()`.
 * Output goes to `<logDir>/<name>.log`.
 */
export interface Supervisor {
  readonly processes: readonly Supervised[];
  start(spec: ProcessSpec): Supervised;
  /** SIGTERM to every process (SIGKILL after `graceMs`), no more restarts. */
  stop(graceMs?: number): Promise<void>;
}

export function createSupervisor(opts: { logDir: string; restartDelayMs: number; log?: (line: string) => void }): Supervisor {
  const log = opts.log ?? (() => {});
  const processes: (Supervised & { proc?: ChildProcess; exited?: Promise<void>; expectExit?: boolean })[] = [];
  let stopping = false;
  onHardExit(() => {
    stopping = true;
    for (const p of processes) p.proc?.kill('SIGKILL');
  });

  const launch = (entry: (typeof processes)[number]) => {
    const fd = openSync(join(opts.logDir, `${entry.spec.name}.log`), 'a');
    writeSync(fd, `--- ${new Date().toISOString()} start ${entry.spec.args.join(' ')}\n`);
    const proc = spawn(process.execPath, [FOGSCHED_BIN, ...entry.spec.args], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', OPS_PORT: '0', ...entry.spec.env },
      stdio: ['ignore', fd, fd],
    });
    closeSync(fd);
    entry.proc = proc;
    entry.starts.push(Date.now());
    entry.exited = new Promise((resolve) =>
      proc.once('exit', (code, signal) => {
        entry.exits.push({ at: Date.now(), code, signal, byHarness: stopping || entry.expectExit === true });
        entry.expectExit = false;
        entry.proc = undefined;
        resolve();
        if (stopping) return;
        log(`${entry.spec.name} exited (${signal ?? code}); restarting in ${opts.restartDelayMs} ms`);
        setTimeout(() => {
          if (!stopping) launch(entry);
        }, opts.restartDelayMs);
      }),
    );
  };

  return {
    processes,
    start(spec) {
      const entry: (typeof processes)[number] = {
        spec,
        starts: [],
        exits: [],
        pid: () => entry.proc?.pid ?? null,
        signal(sig) {
          const proc = entry.proc;
          if (!proc) return false;
          if (sig === 'SIGKILL' || sig === 'SIGTERM') entry.expectExit = true;
          try {
            return proc.kill(sig);
          } catch {
            return false;
          }
        },
      };
      processes.push(entry);
      launch(entry);
      return entry;
    },
    async stop(graceMs = 10_000) {
      stopping = true;
      await Promise.all(
        processes.map(async (p) => {
          const proc = p.proc;
          if (!proc) return;
          try {
            proc.kill('SIGCONT'); // a paused process cannot act on SIGTERM
            proc.kill('SIGTERM');
          } catch {
            // gone
          }
          const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
          await p.exited;
          clearTimeout(timer);
        }),
      );
    },
  };
}

/** Runs a one-shot fogsched command (migrate, projections verify, audit verify); never throws on a non-zero exit. */
export async function runFogsched(args: readonly string[], env: Readonly<Record<string, string>>, timeoutMs = 300_000): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [FOGSCHED_BIN, ...args], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', ...env },
      timeout: timeoutMs,
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, output: `${stdout}${stderr}` };
  } catch (error) {
    const e = error as { code?: number | string; stdout?: string; stderr?: string; message: string };
    return { code: typeof e.code === 'number' ? e.code : -1, output: `${e.stdout ?? ''}${e.stderr ?? ''}${typeof e.code === 'number' ? '' : e.message}` };
  }
}

/** Waits until an API answers /readyz with 200. */
export async function waitApiReady(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(2000) });
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`the API on port ${port} was not ready within ${timeoutMs} ms`);
    await sleep(200);
  }
}

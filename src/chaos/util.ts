import { readFileSync } from 'node:fs';
import net from 'node:net';

/** Small helpers of the chaos harness (and of the test helpers that re-export its cluster). */

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value (or stops throwing) or the deadline passes; then throws the last error. */
export async function eventually<T>(check: () => Promise<T> | T, opts: { timeoutMs?: number; intervalMs?: number; message?: string } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      lastError = new Error(opts.message ?? 'condition not met');
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw lastError;
    await sleep(opts.intervalMs ?? 50);
  }
}

/** A TCP port nothing listens on right now (on 127.0.0.1). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
    server.once('error', reject);
  });
}

/** uid and gid of a local user, from /etc/passwd. */
export function userIds(name: string): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${name}:`));
  const parts = line?.split(':');
  if (!parts) throw new Error(`no user ${name}`);
  return { uid: Number(parts[2]), gid: Number(parts[3]) };
}

/** Does something accept TCP connections at host:port (within `timeoutMs`)? */
export function canConnect(host: string, port: number, timeoutMs = 1500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * A seeded pseudo-random generator (mulberry32): the same seed gives the same fault
 * schedule and the same task mix, so a failing run can be repeated.
 */
export function seededRandom(seed: string | number): () => number {
  let h = 1779033703 ^ String(seed).length;
  for (const ch of String(seed)) {
    h = Math.imul(h ^ ch.charCodeAt(0), 3432918353);
    h = (h << 13) | (h >>> 19);
  }
  let a = h >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type Random = () => number;

export const pickOne = <T>(random: Random, items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
export const between = (random: Random, lo: number, hi: number): number => lo + Math.floor(random() * (hi - lo + 1));

const hardExitCleanups = new Set<() => void>();

/**
 * Registers a synchronous last-resort cleanup (SIGKILL what a component started), for an exit
 * that cannot wait for the orderly one (a second Ctrl-C). Returns its unregistration.
 */
export function onHardExit(cleanup: () => void): () => void {
  hardExitCleanups.add(cleanup);
  return () => hardExitCleanups.delete(cleanup);
}

/** Runs every registered last-resort cleanup; never throws. */
export function runHardExitCleanups(): void {
  for (const cleanup of hardExitCleanups) {
    try {
      cleanup();
    } catch {
      // best effort
    }
  }
  hardExitCleanups.clear();
}

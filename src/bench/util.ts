import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

export const BIN = fileURLToPath(new URL('../../bin/fogsched.js', import.meta.url));
export const PG_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://root@127.0.0.1:5432/postgres';
export const AMQP_URL = process.env.BENCH_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
export const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
export const suffix = () => randomBytes(4).toString('hex');

export function withDatabase(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = `/${db}`;
  return u.toString();
}

export async function adminQuery(text: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    return await c.query(text, params);
  } finally {
    await c.end();
  }
}

export async function createDatabase(name: string): Promise<string> {
  await adminQuery(`CREATE DATABASE ${name}`);
  return withDatabase(PG_URL, name);
}

export async function dropDatabase(name: string): Promise<void> {
  await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
}

/** One short-lived query against a database. */
export async function dbQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(url: string, text: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await c.query<R>(text, params);
  } finally {
    await c.end();
  }
}

/** Polls `count()` every `everyMs` until it reaches `target`; returns ms since `t0` or throws after the timeout. */
export async function waitForCount(count: () => Promise<number>, target: number, t0: number, timeoutMs: number, everyMs = 50): Promise<number> {
  const deadline = t0 + timeoutMs;
  for (;;) {
    const n = await count();
    if (n >= target) return performance.now() - t0;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms at ${n}/${target}`);
    await sleep(everyMs);
  }
}

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

export interface Proc {
  readonly proc: ChildProcess;
  readonly pid: number;
  output(): string;
  readonly exited: Promise<number | null>;
  stop(): Promise<void>;
}

const live = new Set<Proc>();

/** Spawns `node bin/fogsched.js <args>` with LOG_LEVEL=warn and the given environment. */
export function spawnFogsched(args: string[], env: Record<string, string>): Proc {
  const proc = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, LOG_LEVEL: 'warn', OPS_PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d: Buffer) => (out = (out + d.toString()).slice(-20_000));
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const p: Proc = {
    proc,
    pid: proc.pid ?? -1,
    output: () => out,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 8000);
        await exited;
        clearTimeout(t);
      }
    },
  };
  live.add(p);
  void exited.then(() => live.delete(p));
  return p;
}

/** SIGKILLs every process this bench spawned and still runs. */
export function killAllSpawned(): void {
  for (const p of live) if (p.proc.exitCode === null && p.proc.signalCode === null) p.proc.kill('SIGKILL');
}

export async function waitReady(port: number, p: Proc, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (p.proc.exitCode !== null) throw new Error(`fogsched exited early: ${p.output().slice(-2000)}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`not ready in ${timeoutMs} ms: ${p.output().slice(-2000)}`);
    await sleep(100);
  }
}

/** VmRSS of a process in MiB, or NaN when it is gone. */
export function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Samples the RSS of `pid` every `everyMs`; `stop()` returns the peak. */
export function sampleRss(pid: number, everyMs = 100): { stop(): number } {
  let peak = rssMb(pid);
  const t = setInterval(() => {
    const v = rssMb(pid);
    if (v > peak || Number.isNaN(peak)) peak = v;
  }, everyMs);
  return {
    stop() {
      clearInterval(t);
      return peak;
    },
  };
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

/** POSTs JSON over a keep-alive agent; resolves with the status and the raw body. */
export function postJson(port: number, path: string, body: unknown): Promise<{ status: number; body: string }> {
  const data = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path, method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': data.length } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function latencySummary(values: number[], prefix: string): Record<string, number> {
  const s = [...values].sort((a, b) => a - b);
  return {
    [`${prefix}P50Ms`]: percentile(s, 50),
    [`${prefix}P95Ms`]: percentile(s, 95),
    [`${prefix}P99Ms`]: percentile(s, 99),
    [`${prefix}MaxMs`]: s.length ? (s[s.length - 1] as number) : NaN,
  };
}

/** Runs `clients` loops that each call `op` back to back for `seconds`; returns ops done and errors. */
export async function closedLoop(clients: number, seconds: number, op: () => Promise<number>): Promise<{ done: number; errors: number; elapsedMs: number; firstError?: string }> {
  let done = 0;
  let errors = 0;
  let firstError: string | undefined;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (performance.now() < end) {
        try {
          // Not `done += await op()`: that reads `done` before the await, and concurrent loops
          // would overwrite each other's counts.
          const n = await op();
          done += n;
        } catch (error) {
          errors++;
          firstError ??= (error as Error).message;
        }
      }
    }),
  );
  return { done, errors, elapsedMs: performance.now() - t0, ...(firstError ? { firstError } : {}) };
}

/** Calls `op(i)` at `ratePerS` for `seconds` without waiting for answers (open loop); resolves when all answered. */
export async function openLoop(ratePerS: number, seconds: number, op: (i: number) => Promise<void>): Promise<{ sent: number; errors: number; firstError?: string }> {
  const total = Math.round(ratePerS * seconds);
  const t0 = performance.now();
  const pending: Promise<void>[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let i = 0;
  while (i < total) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) / 1000) * ratePerS) + 1);
    while (i < due) {
      pending.push(
        op(i).catch((error: unknown) => {
          errors++;
          firstError ??= (error as Error).message;
        }),
      );
      i++;
    }
    await sleep(2);
  }
  await Promise.all(pending);
  return { sent: total, errors, ...(firstError ? { firstError } : {}) };
}

/** CPU seconds (user + system) so far of the processes named by `comm` and of the given pids. */
export interface CpuSnapshot {
  readonly byComm: Map<string, number>;
  readonly byPid: Map<number, number>;
}

const CLOCK_TICKS = 100;

/**
 * Reads /proc: per command name the CPU time of every live process plus what its exited,
 * reaped children used (the postmaster's cutime holds the backends that ended), and per pid.
 * The difference of two snapshots is what each group used in between: a backend alive at the
 * first and gone at the second moves from its own count to its parent's child count.
 */
export function cpuSnapshot(): CpuSnapshot {
  const byComm = new Map<string, number>();
  const byPid = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
      const own = ((f[11] ?? 0) + (f[12] ?? 0)) / CLOCK_TICKS;
      const children = ((f[13] ?? 0) + (f[14] ?? 0)) / CLOCK_TICKS;
      byComm.set(comm, (byComm.get(comm) ?? 0) + own + children);
      byPid.set(Number(entry), own);
    } catch {
      // gone between readdir and read
    }
  }
  return { byComm, byPid };
}

/** CPU seconds between two snapshots: PostgreSQL, RabbitMQ (beam.smp), Redis, and each named pid. */
export function cpuBetween(a: CpuSnapshot, b: CpuSnapshot, pids: Record<string, number | undefined>): Record<string, number> {
  const comm = (name: string) => Math.round(((b.byComm.get(name) ?? 0) - (a.byComm.get(name) ?? 0)) * 100) / 100;
  const out: Record<string, number> = { postgres: comm('postgres'), rabbitmq: comm('beam.smp'), redis: comm('redis-server') };
  for (const [label, pid] of Object.entries(pids)) {
    if (pid === undefined) continue;
    out[label] = Math.round(((b.byPid.get(pid) ?? 0) - (a.byPid.get(pid) ?? 0)) * 100) / 100;
  }
  return out;
}

/** `postgres 3.1 s, rabbitmq 2.4 s, ...`, largest first. */
export function cpuText(cpu: Record<string, number>): string {
  return Object.entries(cpu)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v.toFixed(1)} s`)
    .join(', ');
}

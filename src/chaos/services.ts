import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { canConnect, eventually, freePort, onHardExit, userIds } from './util.js';

const run = promisify(execFile);

export const PG_BIN = '/usr/lib/postgresql/15/bin';

/** Why the chaos run cannot start its own services here, or null when it can. */
export function ownServicesUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'the chaos run starts its own PostgreSQL (as user postgres) and RabbitMQ nodes (as user rabbitmq): run it as root';
  if (!existsSync(join(PG_BIN, 'initdb'))) return `PostgreSQL 15 binaries are not installed (${PG_BIN}/initdb missing)`;
  try {
    userIds('postgres');
  } catch {
    return 'there is no user postgres to run initdb as';
  }
  return null;
}

/**
 * A PostgreSQL server of the chaos run's own: initdb into a temp folder (as user postgres),
 * trust auth, fsync on, on a free port. The nemesis stops it in immediate mode (in-flight
 * transactions die, as in a crash) and starts it again on the same data.
 */
export interface OwnPostgres {
  readonly port: number;
  /** postgres://fogsched@127.0.0.1:<port>/<database> */
  url(database: string): string;
  start(): Promise<void>;
  /** `pg_ctl stop -m immediate`: no checkpoint, clients cut off; the next start replays the WAL. */
  stopImmediate(): Promise<void>;
  /** Stops it (immediate) and removes its data. Idempotent. */
  destroy(): Promise<void>;
}

export async function startOwnPostgres(opts: { log?: (line: string) => void } = {}): Promise<OwnPostgres> {
  const log = opts.log ?? (() => {});
  const { uid, gid } = userIds('postgres');
  const root = mkdtempSync(join(tmpdir(), 'fogsched-chaos-pg-'));
  chownSync(root, uid, gid);
  const data = join(root, 'data');
  const port = await freePort();
  const asPostgres = (bin: string, args: string[], timeoutMs = 120_000) =>
    run(join(PG_BIN, bin), args, { uid, gid, cwd: root, timeout: timeoutMs, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' } });
  // -N: initdb's own files need no fsync (nothing lives there yet); the server runs with fsync on.
  await asPostgres('initdb', ['-D', data, '-U', 'fogsched', '--auth=trust', '-E', 'UTF8', '--locale=C.UTF-8', '-N']);
  const serverOptions = [
    `-p ${port}`,
    `-k ${root}`,
    "-c listen_addresses='127.0.0.1'",
    '-c fsync=on',
    '-c synchronous_commit=on',
    '-c max_connections=300',
    '-c shared_buffers=128MB',
  ].join(' ');
  let destroyed: Promise<void> | undefined;
  const pg: OwnPostgres = {
    port,
    url: (database) => `postgres://fogsched@127.0.0.1:${port}/${database}`,
    async start() {
      await asPostgres('pg_ctl', ['-D', data, '-l', join(root, 'postgres.log'), '-o', serverOptions, '-w', '-t', '120', 'start']);
      await eventually(() => canConnect('127.0.0.1', port), { timeoutMs: 30_000, intervalMs: 100 });
    },
    async stopImmediate() {
      await asPostgres('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'], 60_000);
    },
    destroy: () =>
      (destroyed ??= (async () => {
        if (existsSync(join(data, 'postmaster.pid'))) await pg.stopImmediate().catch(() => killPostmaster(data));
        rmSync(root, { recursive: true, force: true });
      })()),
  };
  onHardExit(() => {
    killPostmaster(data);
    rmSync(root, { recursive: true, force: true });
  });
  await pg.start();
  log(`postgresql up on 127.0.0.1:${port} (${data})`);
  return pg;
}

/** Last resort when pg_ctl cannot stop it: SIGQUIT (immediate shutdown) to the postmaster named in its pid file. */
function killPostmaster(data: string): void {
  try {
    const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    if (pid > 0) process.kill(pid, 'SIGQUIT');
  } catch {
    // not running
  }
}

/** A redis-server of the chaos run's own (no persistence: a restart comes back empty, as a lost Redis would). */
export interface OwnRedis {
  readonly port: number;
  readonly url: string;
  start(): Promise<void>;
  /** SIGKILL: Redis is gone, with everything in it. */
  kill(): Promise<void>;
  destroy(): Promise<void>;
}

export async function startOwnRedis(opts: { dir: string; log?: (line: string) => void }): Promise<OwnRedis> {
  const log = opts.log ?? (() => {});
  const port = await freePort();
  const dir = join(opts.dir, 'redis');
  mkdirSync(dir, { recursive: true });
  let proc: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const redis: OwnRedis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start() {
      const out = openSync(join(dir, 'redis.log'), 'a');
      const p = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', out, out] });
      proc = p;
      exited = new Promise((resolve) => p.once('exit', () => resolve()));
      await eventually(() => (p.exitCode === null ? canConnect('127.0.0.1', port) : Promise.reject(new Error(`redis-server exited with ${p.exitCode}; see ${dir}/redis.log`))), {
        timeoutMs: 20_000,
        intervalMs: 50,
      });
    },
    async kill() {
      if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
    destroy: () => redis.kill(),
  };
  onHardExit(() => proc?.kill('SIGKILL'));
  await redis.start();
  log(`redis up on 127.0.0.1:${port}`);
  return redis;
}

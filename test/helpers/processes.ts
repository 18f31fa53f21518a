import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import amqp from 'amqplib';
import pg from 'pg';
import { topology } from '../../src/outbox/index.js';
import { adminQuery, withDatabase } from './services.js';

/** Deletes every queue and exchange of a prefix from the shared broker (quorum queues left behind cost it memory). */
export async function deleteTopology(prefix: string): Promise<void> {
  const t = topology({ prefix, tiers: ['light', 'medium', 'heavy'], taskQueueMaxLength: 1, deliveryLimit: 1, metricsQueueMaxLength: 1, ingestLanes: 8 });
  const connection = await amqp.connect(inject('amqpUrl'));
  connection.on('error', () => {});
  try {
    const channel = await connection.createChannel();
    channel.on('error', () => {});
    for (const q of t.queues) await channel.deleteQueue(q.name);
    for (const e of t.exchanges) await channel.deleteExchange(e.name);
  } finally {
    await connection.close().catch(() => {});
  }
}

const BIN = fileURLToPath(new URL('../../bin/fogsched.js', import.meta.url));

export interface Spawned {
  readonly proc: ChildProcess;
  readonly output: () => string;
  readonly exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

const live = new Set<Spawned>();

/** Runs the built CLI (`npm run build` first) with extra environment; output is kept for failure messages. */
export function spawnFogsched(args: string[], env: Record<string, string>): Spawned {
  // OPS_PORT 0: many processes on one machine, each with an ops port of its own (logged as opsPort).
  const proc = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, LOG_LEVEL: 'warn', OPS_PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  proc.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const spawned: Spawned = {
    proc,
    output: () => out,
    exited,
    async kill(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
  live.add(spawned);
  void exited.then(() => live.delete(spawned));
  return spawned;
}

/** SIGKILLs whatever a test left running (use in afterEach/afterAll). */
export async function killAll(): Promise<void> {
  await Promise.all([...live].map((s) => s.kill('SIGKILL')));
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

/** A fresh environment: own database (created by the CLI), own queue prefix, own port. */
export async function testEnv(label: string): Promise<{ env: Record<string, string>; db: string; prefix: string; port: number; dbUrl: string; drop(): Promise<void> }> {
  const suffix = randomBytes(3).toString('hex');
  const db = `fogsched_e2e_${label}_${suffix}`;
  const prefix = `e2e${suffix}_`;
  const port = await freePort();
  const dbUrl = withDatabase(inject('postgresUrl'), db);
  return {
    db,
    prefix,
    port,
    dbUrl,
    env: { DATABASE_URL: dbUrl, AMQP_URL: inject('amqpUrl'), REDIS_URL: inject('redisUrl'), AMQP_PREFIX: prefix, REDIS_PREFIX: prefix, PORT: String(port), RELAY_POLL_INTERVAL_MS: '200' },
    async drop() {
      await adminQuery(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
      await deleteTopology(prefix);
    },
  };
}

const e2eTeardowns: (() => Promise<void>)[] = [];

/**
 * A test's own environment (testEnv) and a small pool on its database, with `q` (rows) and
 * `count` (the `n` column of the first row). `dropE2eEnvs()` in afterEach removes them all.
 */
export async function e2eEnv(label: string) {
  const env = await testEnv(label);
  const pool = new pg.Pool({ connectionString: env.dbUrl, max: 2 });
  pool.on('error', () => {}); // the database is dropped WITH (FORCE) at the end
  e2eTeardowns.push(async () => {
    await pool.end();
    await env.drop();
  });
  const q = async <T = Record<string, unknown>>(text: string, values: unknown[] = []) => (await pool.query(text, values)).rows as T[];
  const count = async (text: string, values: unknown[] = []) => Number((await q<{ n: string }>(text, values))[0]?.n ?? 0);
  return { ...env, q, count, base: `http://127.0.0.1:${env.port}` };
}

/** SIGKILLs what the test started, then drops each e2eEnv at once: quorum queues hold broker file handles. */
export async function dropE2eEnvs(): Promise<void> {
  await killAll();
  for (const teardown of e2eTeardowns.splice(0)) await teardown();
}

/**
 * A TCP proxy in front of a service: `down()` closes every connection and stops
 * listening (the service looks gone), `up()` listens again on the same port.
 */
export async function tcpProxy(target: { host: string; port: number }) {
  const port = await freePort();
  const sockets = new Set<net.Socket>();
  let server: net.Server | undefined;
  const up = () =>
    new Promise<void>((resolve, reject) => {
      server = net.createServer((client) => {
        const upstream = net.connect(target.port, target.host);
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('close', () => sockets.delete(s));
          s.on('error', () => {
            client.destroy();
            upstream.destroy();
          });
        }
        client.pipe(upstream);
        upstream.pipe(client);
      });
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
  const down = async () => {
    const s = server;
    server = undefined;
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => (s ? s.close(() => resolve()) : resolve()));
  };
  await up();
  return { port, up, down };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- test code reads arbitrary JSON
export async function postJson(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json() };
}

/** Waits until the API answers /readyz with 200. */
export async function waitReady(port: number, spawned: Spawned, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (spawned.proc.exitCode !== null) throw new Error(`fogsched exited early:\n${spawned.output()}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`not ready in ${timeoutMs} ms:\n${spawned.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- test code reads arbitrary JSON
export async function getJson(url: string): Promise<any> {
  return (await fetch(url)).json();
}

/** The ops port a process picked (OPS_PORT=0) and logged (`"opsPort":N` in "ops server listening"; needs LOG_LEVEL info). */
export async function opsPortOf(p: Spawned, timeoutMs = 60_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (p.proc.exitCode !== null) throw new Error(`fogsched exited early:\n${p.output()}`);
    const m = /"opsPort":(\d+)/.exec(p.output());
    if (m) return Number(m[1]);
    if (Date.now() > deadline) throw new Error(`no ops port logged in ${timeoutMs} ms:\n${p.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

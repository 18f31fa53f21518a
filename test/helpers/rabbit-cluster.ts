import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { eventually } from './database.js';
import { freePort } from './processes.js';

const run = promisify(execFile);

/** The scripts behind Debian's /usr/sbin wrappers; run directly as the `rabbitmq` user with our own environment. */
const RABBIT_BIN = '/usr/lib/rabbitmq/bin';

export interface RabbitCluster {
  /** amqp://guest:guest@127.0.0.1:<port>, one per node. */
  readonly urls: readonly string[];
  /** Erlang node names (`fogt-<run>-<i>@localhost`). */
  readonly nodeNames: readonly string[];
  /** All URLs as one comma-separated list (what AMQP_URL takes). */
  readonly urlList: string;
  /** `node=url,...` (what COORDINATOR_BROKERS takes). */
  readonly brokersEnv: string;
  /** SIGKILLs node i's Erlang VM (beam.smp). */
  kill(i: number): Promise<void>;
  /** Starts node i again (same data dir: it rejoins the cluster) and waits until it takes AMQP connections. */
  restart(i: number): Promise<void>;
  /** Runs rabbitmqctl against node i. */
  ctl(i: number, ...args: string[]): Promise<string>;
  /** Kills every node and removes the temp folder. Idempotent. */
  stop(): Promise<void>;
}

/** Why the cluster tests cannot run here, or null when they can. */
export function rabbitClusterUnavailable(): string | null {
  if (!existsSync(join(RABBIT_BIN, 'rabbitmq-server'))) return `rabbitmq-server is not installed (${RABBIT_BIN}/rabbitmq-server missing)`;
  return null;
}

function userIds(name: string): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${name}:`));
  const parts = line?.split(':');
  if (!parts) throw new Error(`no user ${name}`);
  return { uid: Number(parts[2]), gid: Number(parts[3]) };
}

interface NodeSpec {
  readonly name: string;
  readonly port: number;
  readonly distPort: number;
  readonly dir: string;
  proc?: ChildProcess;
  exited?: Promise<void>;
}

/**
 * Starts three extra RabbitMQ nodes on this machine (free ports, own data, log,
 * config and pid files under a temp folder the `rabbitmq` user owns, one Erlang
 * cookie of their own) and clusters them with join_cluster. Quorum queues
 * declared on it get three replicas. Call `stop()` in afterAll.
 *
 * Checked with 3.10.8; Erlang is heavy on 2 cores, so keep the users of this few.
 */
export async function startRabbitCluster(
  opts: {
    size?: number;
    log?: (line: string) => void;
    /** Extra lines for every node's rabbitmq.conf (e.g. `consumer_timeout = 3000`). */
    conf?: readonly string[];
    /** An advanced.config for every node, for settings rabbitmq.conf cannot take (e.g. `[{rabbit, [{channel_tick_interval, 500}]}].`). */
    advancedConfig?: string;
  } = {},
): Promise<RabbitCluster> {
  const size = opts.size ?? 3;
  const log = opts.log ?? (() => {});
  const { uid, gid } = userIds('rabbitmq');
  const runId = randomBytes(3).toString('hex');
  const root = mkdtempSync(join(tmpdir(), `fogsched-rmq-${runId}-`));
  const home = join(root, 'home');
  mkdirSync(home);
  // Our own cookie: the machine's node (rabbit@localhost) is never reachable from these.
  writeFileSync(join(home, '.erlang.cookie'), randomBytes(20).toString('hex').toUpperCase(), { mode: 0o400 });
  writeFileSync(join(root, 'enabled_plugins'), '[].\n');
  writeFileSync(join(root, 'rabbitmq-env.conf'), '');
  const nodes: NodeSpec[] = [];
  for (let i = 0; i < size; i++) {
    const name = `fogt-${runId}-${i + 1}@localhost`;
    const dir = join(root, `n${i + 1}`);
    mkdirSync(join(dir, 'log'), { recursive: true });
    mkdirSync(join(dir, 'mnesia'), { recursive: true });
    const port = await freePort();
    let distPort = await freePort();
    while (distPort === port) distPort = await freePort();
    writeFileSync(
      join(dir, 'rabbitmq.conf'),
      [`listeners.tcp.local = 127.0.0.1:${port}`, 'loopback_users = none', 'disk_free_limit.absolute = 50MB', 'vm_memory_high_watermark.relative = 0.2', ...(opts.conf ?? []), ''].join('\n'),
    );
    if (opts.advancedConfig) writeFileSync(join(dir, 'advanced.config'), `${opts.advancedConfig}\n`);
    nodes.push({ name, port, distPort, dir });
  }
  for (const p of [root, home, join(home, '.erlang.cookie'), join(root, 'enabled_plugins'), join(root, 'rabbitmq-env.conf'), ...nodes.flatMap((n) => [n.dir, join(n.dir, 'log'), join(n.dir, 'mnesia'), join(n.dir, 'rabbitmq.conf'), ...(opts.advancedConfig ? [join(n.dir, 'advanced.config')] : [])])]) {
    chownSync(p, uid, gid);
  }

  const envOf = (n: NodeSpec): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: home,
    LANG: 'C.UTF-8',
    RABBITMQ_CONF_ENV_FILE: join(root, 'rabbitmq-env.conf'),
    RABBITMQ_NODENAME: n.name,
    RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
    RABBITMQ_NODE_PORT: String(n.port),
    RABBITMQ_DIST_PORT: String(n.distPort),
    RABBITMQ_MNESIA_BASE: join(n.dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(n.dir, 'log'),
    RABBITMQ_CONFIG_FILE: join(n.dir, 'rabbitmq.conf'),
    ...(opts.advancedConfig ? { RABBITMQ_ADVANCED_CONFIG_FILE: join(n.dir, 'advanced.config') } : {}),
    RABBITMQ_PID_FILE: join(n.dir, 'rabbitmq.pid'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(root, 'enabled_plugins'),
    RABBITMQ_PLUGINS_EXPAND_DIR: join(n.dir, 'plugins-expand'),
    ERL_EPMD_ADDRESS: '127.0.0.1',
    ERL_FLAGS: '-kernel inet_dist_use_interface {127,0,0,1}',
    // Two cores shared with everything else: no busy-waiting schedulers, fewer threads.
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '+sbwt none +sbwtdcpu none +sbwtdio none +S 2:2 +A 8',
  });

  const urlOf = (n: NodeSpec) => `amqp://guest:guest@127.0.0.1:${n.port}`;

  const canConnect = async (n: NodeSpec) => {
    try {
      const c = await amqp.connect(urlOf(n), { timeout: 2000 });
      c.on('error', () => {});
      await c.close();
      return true;
    } catch {
      return false;
    }
  };

  const ctl = async (i: number, ...args: string[]): Promise<string> => {
    const n = nodes[i] as NodeSpec;
    const { stdout } = await run(join(RABBIT_BIN, 'rabbitmqctl'), ['-n', n.name, ...args], { env: envOf(n), uid, gid, cwd: root, timeout: 120_000 });
    return stdout;
  };

  const boot = async (i: number) => {
    const n = nodes[i] as NodeSpec;
    rmSync(join(n.dir, 'rabbitmq.pid'), { force: true });
    const proc = spawn(join(RABBIT_BIN, 'rabbitmq-server'), [], { env: envOf(n), uid, gid, cwd: root, stdio: 'ignore', detached: true });
    n.proc = proc;
    n.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    await eventually(async () => (proc.exitCode === null ? canConnect(n) : Promise.reject(new Error(`${n.name} exited with ${proc.exitCode}; see ${n.dir}/log`))), {
      timeoutMs: 90_000,
      intervalMs: 300,
      message: `${n.name} did not accept AMQP connections; see ${n.dir}/log`,
    });
    log(`rabbitmq node ${n.name} up on ${n.port}`);
  };

  const beamPid = (n: NodeSpec): number | null => {
    try {
      const pid = Number(readFileSync(join(n.dir, 'rabbitmq.pid'), 'utf8').trim());
      return pid > 0 ? pid : null;
    } catch {
      return null;
    }
  };

  const killNode = async (n: NodeSpec) => {
    const pid = beamPid(n);
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (n.proc && n.proc.exitCode === null && n.proc.signalCode === null) {
      try {
        process.kill(-(n.proc.pid as number), 'SIGKILL'); // the wrapper shell and anything it started
      } catch {
        // already gone
      }
    }
    await n.exited;
  };

  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      await Promise.all(nodes.map(killNode));
      // epmd keeps the names registered until the VMs are gone; nothing else to clean there.
      rmSync(root, { recursive: true, force: true });
    })());

  try {
    // The first node alone, then the others in parallel (they boot as standalone nodes), then join.
    await boot(0);
    await Promise.all(nodes.slice(1).map((_, k) => boot(k + 1)));
    for (let i = 1; i < size; i++) {
      await ctl(i, 'stop_app');
      await ctl(i, 'join_cluster', (nodes[0] as NodeSpec).name);
      await ctl(i, 'start_app');
    }
    await eventually(async () => nodes.every(() => true) && (await Promise.all(nodes.map(canConnect))).every(Boolean), { timeoutMs: 60_000, intervalMs: 300 });
    const status = await ctl(0, 'cluster_status', '--formatter', 'json');
    const running = (JSON.parse(status) as { running_nodes?: string[] }).running_nodes ?? [];
    if (running.length !== size) throw new Error(`cluster formed with ${running.length} running nodes: ${status}`);
    log(`rabbitmq cluster of ${size} formed: ${nodes.map((n) => n.name).join(', ')}`);
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    urls: nodes.map(urlOf),
    nodeNames: nodes.map((n) => n.name),
    urlList: nodes.map(urlOf).join(','),
    brokersEnv: nodes.map((n) => `${n.name}=${urlOf(n)}`).join(','),
    async kill(i) {
      await killNode(nodes[i] as NodeSpec);
      log(`rabbitmq node ${(nodes[i] as NodeSpec).name} killed`);
    },
    async restart(i) {
      await boot(i);
    },
    ctl,
    stop,
  };
}

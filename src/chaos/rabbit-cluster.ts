import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { eventually, freePort, userIds } from './util.js';

const run = promisify(execFile);

/** The scripts behind Debian's /usr/sbin wrappers; run directly as the `rabbitmq` user with our own environment. */
const RABBIT_BIN = '/usr/lib/rabbitmq/bin';

export interface RabbitClusterOptions {
  /** Nodes (default 3). */
  readonly size?: number;
  readonly log?: (line: string) => void;
  /** Extra lines appended to every node's rabbitmq.conf (e.g. `consumer_timeout = 5000`). */
  readonly extraConf?: readonly string[];
  /** An advanced.config for every node, for settings rabbitmq.conf cannot take (e.g. `[{rabbit, [{channel_tick_interval, 500}]}].`). */
  readonly advancedConfig?: string;
  /**
   * `loopback` (default): every node on 127.0.0.1, short names `@localhost`.
   * `namespaces`: every node in a network namespace of its own, on a bridge (long names
   * `@10.x.y.z`), so `isolate(i)` can cut one node off the network and `heal(i)` bring it
   * back. Needs root and `ip netns`; see `networkNamespacesUnavailable()`.
   */
  readonly network?: 'loopback' | 'namespaces';
  /** Copy the nodes' logs here (`n<i>/`) before the temp folder is removed (by `stop()` or a failed start). */
  readonly keepLogsIn?: string;
}

export interface RabbitCluster {
  /** amqp://guest:guest@<host>:<port>, one per node. */
  readonly urls: readonly string[];
  /** Erlang node names (`fogt-<run>-<i>@localhost`, or `@<ip>` with namespaces). */
  readonly nodeNames: readonly string[];
  /** All URLs as one comma-separated list (what AMQP_URL takes). */
  readonly urlList: string;
  /** `node=url,...` (what COORDINATOR_BROKERS takes). */
  readonly brokersEnv: string;
  /** The temp folder holding every node's data, config and logs (`n<i>/log`). */
  readonly dir: string;
  /** SIGKILLs node i's Erlang VM (beam.smp). */
  kill(i: number): Promise<void>;
  /** Starts node i again (same data dir: it rejoins the cluster) and waits until it takes AMQP connections. */
  restart(i: number): Promise<void>;
  /** Runs rabbitmqctl against node i. */
  ctl(i: number, ...args: string[]): Promise<string>;
  /** Cuts node i off the network (its link goes down; connections stall, nothing is reset). Namespaces only. */
  isolate(i: number): Promise<void>;
  /** Undoes `isolate(i)`. */
  heal(i: number): Promise<void>;
  /** Kills every node and removes the temp folder (and the namespaces). Idempotent. */
  stop(): Promise<void>;
  /** SIGKILLs every node and removes the namespaces at once, without waiting (for an exit that cannot wait). */
  killNow(): void;
}

/** Why the cluster tests cannot run here, or null when they can. */
export function rabbitClusterUnavailable(): string | null {
  if (!existsSync(join(RABBIT_BIN, 'rabbitmq-server'))) return `rabbitmq-server is not installed (${RABBIT_BIN}/rabbitmq-server missing)`;
  return null;
}

/** Why nodes cannot be put in network namespaces here (not root, no `ip netns`, no veth), or null when they can. */
export function networkNamespacesUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  const probe = `fcprobe${randomBytes(2).toString('hex')}`;
  try {
    execFileSync('ip', ['netns', 'add', probe], { stdio: 'pipe' });
  } catch (error) {
    return `\`ip netns add\` failed: ${firstLine(error)}`;
  }
  try {
    execFileSync('ip', ['link', 'add', `${probe}a`, 'type', 'veth', 'peer', 'name', `${probe}b`, 'netns', probe], { stdio: 'pipe' });
    execFileSync('ip', ['link', 'del', `${probe}a`], { stdio: 'pipe' });
    return null;
  } catch (error) {
    return `veth pairs cannot be made: ${firstLine(error)}`;
  } finally {
    try {
      execFileSync('ip', ['netns', 'del', probe], { stdio: 'pipe' });
    } catch {
      // nothing to remove
    }
  }
}

function firstLine(error: unknown): string {
  const e = error as { stderr?: Buffer | string; message?: string };
  return (e.stderr?.toString() || e.message || String(error)).trim().split('\n')[0] ?? '';
}

interface NodeSpec {
  readonly name: string;
  /** Where its listeners are: 127.0.0.1, or its namespace's address. */
  readonly host: string;
  readonly port: number;
  readonly distPort: number;
  readonly dir: string;
  /** Namespace and host-side link (namespaces mode). */
  readonly netns?: { readonly ns: string; readonly hostLink: string };
  proc?: ChildProcess;
  exited?: Promise<void>;
}

/** A /24 of 10.200–249.x.0 that no route of this machine uses. */
function freeSubnet(): string {
  const routes = execFileSync('ip', ['-4', 'route'], { encoding: 'utf8' });
  for (let i = 0; i < 200; i++) {
    const net = `10.${200 + Math.floor(Math.random() * 50)}.${Math.floor(Math.random() * 256)}`;
    if (!routes.includes(`${net}.`)) return net;
  }
  throw new Error('no free 10.x subnet for the broker namespaces');
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });

/**
 * Starts three extra RabbitMQ nodes on this machine (free ports, own data, log,
 * config and pid files under a temp folder the `rabbitmq` user owns, one Erlang
 * cookie of their own) and clusters them with join_cluster. Quorum queues
 * declared on it get three replicas. Call `stop()` when done.
 *
 * Checked with 3.10.8; Erlang is heavy on 2 cores, so keep the users of this few.
 */
export async function startRabbitCluster(opts: RabbitClusterOptions = {}): Promise<RabbitCluster> {
  const size = opts.size ?? 3;
  const log = opts.log ?? (() => {});
  const namespaces = opts.network === 'namespaces';
  const { uid, gid } = userIds('rabbitmq');
  const runId = randomBytes(3).toString('hex');
  const root = mkdtempSync(join(tmpdir(), `fogsched-rmq-${runId}-`));
  const home = join(root, 'home');
  mkdirSync(home);
  // Our own cookie: the machine's node (rabbit@localhost) is never reachable from these.
  writeFileSync(join(home, '.erlang.cookie'), randomBytes(20).toString('hex').toUpperCase(), { mode: 0o400 });
  writeFileSync(join(root, 'enabled_plugins'), '[].\n');
  writeFileSync(join(root, 'rabbitmq-env.conf'), '');

  // Namespaces: one bridge on the host, each node in its own namespace linked to it.
  const bridge = `fc${runId}br`;
  const subnet = namespaces ? freeSubnet() : '';
  const nsCreated: string[] = [];
  const removeNetwork = () => {
    for (const ns of nsCreated) {
      // Processes our nodes left in it (epmd, which the Erlang VM starts and detaches).
      let pids: string[] = [];
      try {
        pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split('\n').filter(Boolean);
      } catch {
        // gone already
      }
      for (const pid of pids) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone
        }
      }
      try {
        ip('netns', 'del', ns);
      } catch {
        // gone
      }
    }
    if (namespaces) {
      try {
        ip('link', 'del', bridge);
      } catch {
        // gone
      }
    }
  };
  if (namespaces) {
    try {
      ip('link', 'add', bridge, 'type', 'bridge');
      ip('addr', 'add', `${subnet}.1/24`, 'dev', bridge);
      ip('link', 'set', bridge, 'up');
    } catch (error) {
      removeNetwork();
      rmSync(root, { recursive: true, force: true });
      throw error;
    }
  }

  const nodes: NodeSpec[] = [];
  for (let i = 0; i < size; i++) {
    const dir = join(root, `n${i + 1}`);
    mkdirSync(join(dir, 'log'), { recursive: true });
    mkdirSync(join(dir, 'mnesia'), { recursive: true });
    let host = '127.0.0.1';
    let netns: NodeSpec['netns'];
    if (namespaces) {
      host = `${subnet}.${i + 2}`;
      const ns = `fc${runId}n${i + 1}`;
      const hostLink = `fc${runId}h${i + 1}`;
      const nsLink = `fc${runId}p${i + 1}`;
      try {
        ip('netns', 'add', ns);
        nsCreated.push(ns);
        ip('link', 'add', hostLink, 'type', 'veth', 'peer', 'name', nsLink, 'netns', ns);
        ip('link', 'set', hostLink, 'master', bridge);
        ip('link', 'set', hostLink, 'up');
        ip('netns', 'exec', ns, 'ip', 'addr', 'add', `${host}/24`, 'dev', nsLink);
        ip('netns', 'exec', ns, 'ip', 'link', 'set', nsLink, 'up');
        ip('netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up');
      } catch (error) {
        removeNetwork();
        rmSync(root, { recursive: true, force: true });
        throw error;
      }
      netns = { ns, hostLink };
    }
    const name = `fogt-${runId}-${i + 1}@${namespaces ? host : 'localhost'}`;
    const port = await freePort();
    let distPort = await freePort();
    while (distPort === port) distPort = await freePort();
    writeFileSync(
      join(dir, 'rabbitmq.conf'),
      [
        `listeners.tcp.local = ${host}:${port}`,
        'loopback_users = none',
        'disk_free_limit.absolute = 50MB',
        'vm_memory_high_watermark.relative = 0.2',
        // The others join the first node as they boot (no stop_app/join_cluster/start_app round trips).
        ...(i > 0
          ? [
              'cluster_formation.peer_discovery_backend = classic_config',
              `cluster_formation.classic_config.nodes.1 = ${(nodes[0] as NodeSpec).name}`,
              // A restart that finds the first node down keeps trying instead of giving up at once.
              'cluster_formation.discovery_retry_limit = 120',
              'cluster_formation.discovery_retry_interval = 500',
            ]
          : []),
        ...(opts.extraConf ?? []),
        '',
      ].join('\n'),
    );
    if (opts.advancedConfig) writeFileSync(join(dir, 'advanced.config'), `${opts.advancedConfig}\n`);
    nodes.push({ name, host, port, distPort, dir, ...(netns ? { netns } : {}) });
  }
  for (const p of [
    root,
    home,
    join(home, '.erlang.cookie'),
    join(root, 'enabled_plugins'),
    join(root, 'rabbitmq-env.conf'),
    ...nodes.flatMap((n) => [n.dir, join(n.dir, 'log'), join(n.dir, 'mnesia'), join(n.dir, 'rabbitmq.conf'), ...(opts.advancedConfig ? [join(n.dir, 'advanced.config')] : [])]),
  ]) {
    chownSync(p, uid, gid);
  }

  const envOf = (n: NodeSpec): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: home,
    LANG: 'C.UTF-8',
    RABBITMQ_CONF_ENV_FILE: join(root, 'rabbitmq-env.conf'),
    RABBITMQ_NODENAME: n.name,
    RABBITMQ_NODE_IP_ADDRESS: n.host,
    RABBITMQ_NODE_PORT: String(n.port),
    RABBITMQ_DIST_PORT: String(n.distPort),
    RABBITMQ_MNESIA_BASE: join(n.dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(n.dir, 'log'),
    RABBITMQ_CONFIG_FILE: join(n.dir, 'rabbitmq.conf'),
    ...(opts.advancedConfig ? { RABBITMQ_ADVANCED_CONFIG_FILE: join(n.dir, 'advanced.config') } : {}),
    RABBITMQ_PID_FILE: join(n.dir, 'rabbitmq.pid'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(root, 'enabled_plugins'),
    RABBITMQ_PLUGINS_EXPAND_DIR: join(n.dir, 'plugins-expand'),
    // Loopback: the machine's epmd; namespaces: each namespace's own (the VM starts it).
    ...(namespaces ? { RABBITMQ_USE_LONGNAME: 'true' } : { ERL_EPMD_ADDRESS: '127.0.0.1' }),
    ERL_FLAGS: `-kernel inet_dist_use_interface {${n.host.replace(/\./g, ',')}}`,
    // Two cores shared with everything else: no busy-waiting schedulers, fewer threads.
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '+sbwt none +sbwtdcpu none +sbwtdio none +S 2:2 +A 8',
  });

  /** The command line that runs `script` as the rabbitmq user, inside the node's namespace when it has one. */
  const commandOf = (n: NodeSpec, script: string, args: string[]): { file: string; args: string[]; asUser: boolean } =>
    n.netns
      ? { file: 'ip', args: ['netns', 'exec', n.netns.ns, 'setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', script, ...args], asUser: false }
      : { file: script, args, asUser: true };

  const urlOf = (n: NodeSpec) => `amqp://guest:guest@${n.host}:${n.port}`;

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
    const cmd = commandOf(n, join(RABBIT_BIN, 'rabbitmqctl'), [...(namespaces ? ['-l'] : []), '-n', n.name, ...args]);
    const { stdout } = await run(cmd.file, cmd.args, { env: envOf(n), ...(cmd.asUser ? { uid, gid } : {}), cwd: root, timeout: 120_000 });
    return stdout;
  };

  const boot = async (i: number) => {
    const n = nodes[i] as NodeSpec;
    rmSync(join(n.dir, 'rabbitmq.pid'), { force: true });
    const cmd = commandOf(n, join(RABBIT_BIN, 'rabbitmq-server'), []);
    const proc = spawn(cmd.file, cmd.args, { env: envOf(n), ...(cmd.asUser ? { uid, gid } : {}), cwd: root, stdio: 'ignore', detached: true });
    n.proc = proc;
    n.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    await eventually(async () => (proc.exitCode === null ? canConnect(n) : Promise.reject(new Error(`${n.name} exited with ${proc.exitCode}; see ${n.dir}/log`))), {
      timeoutMs: 90_000,
      intervalMs: 300,
      message: `${n.name} did not accept AMQP connections; see ${n.dir}/log`,
    });
    log(`rabbitmq node ${n.name} up on ${n.host}:${n.port}`);
  };

  const beamPid = (n: NodeSpec): number | null => {
    try {
      const pid = Number(readFileSync(join(n.dir, 'rabbitmq.pid'), 'utf8').trim());
      return pid > 0 ? pid : null;
    } catch {
      return null;
    }
  };

  const signalNode = (n: NodeSpec) => {
    const pid = beamPid(n);
    for (const target of [pid, n.proc && n.proc.exitCode === null && n.proc.signalCode === null ? -(n.proc.pid as number) : null]) {
      if (!target) continue;
      try {
        process.kill(target, 'SIGKILL'); // a negative pid: the wrapper shell and anything it started
      } catch {
        // already gone
      }
    }
  };

  const killNode = async (n: NodeSpec) => {
    signalNode(n);
    await n.exited;
  };

  const linkOf = (i: number): string => {
    const n = nodes[i] as NodeSpec;
    if (!n.netns) throw new Error('isolate/heal need the cluster started with network: namespaces');
    return n.netns.hostLink;
  };

  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      await Promise.all(nodes.map(killNode));
      removeNetwork();
      if (opts.keepLogsIn) {
        nodes.forEach((n, i) => {
          try {
            cpSync(join(n.dir, 'log'), join(opts.keepLogsIn as string, `n${i + 1}`), { recursive: true });
          } catch {
            // no logs
          }
        });
      }
      rmSync(root, { recursive: true, force: true });
    })());

  try {
    // The first node alone, then the others in parallel: each finds the first by peer discovery and
    // joins it as it boots. (All three at once saves ~10 s but a node sometimes gave up on the first.)
    await boot(0);
    await Promise.all(nodes.slice(1).map((_, k) => boot(k + 1)));
    await eventually(async () => (await Promise.all(nodes.map(canConnect))).every(Boolean), { timeoutMs: 60_000, intervalMs: 300 });
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
    dir: root,
    async kill(i) {
      await killNode(nodes[i] as NodeSpec);
      log(`rabbitmq node ${(nodes[i] as NodeSpec).name} killed`);
    },
    async restart(i) {
      await boot(i);
    },
    ctl,
    killNow() {
      nodes.forEach(signalNode);
      removeNetwork();
      rmSync(root, { recursive: true, force: true });
    },
    async isolate(i) {
      ip('link', 'set', linkOf(i), 'down');
      log(`rabbitmq node ${(nodes[i] as NodeSpec).name} cut off the network`);
    },
    async heal(i) {
      ip('link', 'set', linkOf(i), 'up');
      log(`rabbitmq node ${(nodes[i] as NodeSpec).name} back on the network`);
    },
    stop,
  };
}

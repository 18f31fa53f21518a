import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../helpers/processes.js';

/**
 * Extra local RabbitMQ nodes for the deploy boot test, next to (never touching) the
 * machine's own broker: own node names, ports, folders owned by user `rabbitmq`, and
 * their own Erlang cookie (HOME), so they cannot even reach `rabbit@localhost`.
 *
 * Issue 7 is writing test/helpers/rabbit-cluster.ts for the coordinator; this one is
 * narrower (it boots nodes from the deployment's rabbitmq.conf) and can be folded into
 * it once that lands.
 */

const run = promisify(execFile);
const SBIN = '/usr/lib/rabbitmq/bin';

/** Keys of deploy/swarm/rabbitmq.conf that a local RabbitMQ older than 3.13 does not know. */
export const KEYS_NEWER_THAN_3_13 = [
  'default_queue_type',
  'quorum_queue.continuous_membership_reconciliation.enabled',
  'quorum_queue.continuous_membership_reconciliation.target_group_size',
];

export interface LocalNode {
  readonly name: string;
  readonly amqpPort: number;
  readonly managementPort: number;
  readonly prometheusPort: number;
  readonly distPort: number;
  readonly dir: string;
}

/** The local RabbitMQ version (e.g. "3.10.8"), or undefined when none is installed. */
export function localRabbitVersion(): string | undefined {
  if (!existsSync(SBIN) || !existsSync('/usr/lib/rabbitmq/lib')) return undefined;
  const dir = readdirSync('/usr/lib/rabbitmq/lib').find((d) => d.startsWith('rabbitmq_server-'));
  return dir?.slice('rabbitmq_server-'.length);
}

export function versionAtLeast(version: string, wanted: string): boolean {
  const a = version.split('.').map(Number);
  const b = wanted.split('.').map(Number);
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  return true;
}

/**
 * The deployment's rabbitmq.conf for a local node: `rabbit@rabbitmq-N` become the local
 * node names, listeners move to free ports, definitions come from `definitionsDir`, and
 * keys the local version does not know are dropped (returned in `dropped`).
 */
export function localizeRabbitConf(conf: string, opts: { nodes: readonly LocalNode[]; self: LocalNode; definitionsDir: string; dropKeys: readonly string[] }): { text: string; dropped: string[] } {
  const dropped: string[] = [];
  const lines = conf.split('\n').flatMap((line) => {
    const m = /^\s*([A-Za-z0-9_.$-]+)\s*=\s*(.*)$/.exec(line);
    if (!m) return [line];
    const [, key, value] = m as unknown as [string, string, string];
    if (opts.dropKeys.includes(key)) {
      dropped.push(key);
      return [];
    }
    const node = /^rabbit@rabbitmq-(\d+)$/.exec(value.trim());
    if (key.startsWith('cluster_formation.classic_config.nodes.') && node) {
      const local = opts.nodes[Number(node[1]) - 1];
      if (!local) throw new Error(`rabbitmq.conf names ${value} but only ${opts.nodes.length} local nodes run`);
      return [`${key} = ${local.name}`];
    }
    if (key === 'listeners.tcp.default') return [`listeners.tcp.default = 127.0.0.1:${opts.self.amqpPort}`];
    if (key === 'management.tcp.port') return [`management.tcp.port = ${opts.self.managementPort}`, 'management.tcp.ip = 127.0.0.1'];
    if (key === 'prometheus.tcp.port') return [`prometheus.tcp.port = ${opts.self.prometheusPort}`, 'prometheus.tcp.ip = 127.0.0.1'];
    if (key === 'load_definitions') return [`load_definitions = ${opts.definitionsDir}`];
    // A laptop's disk may be fuller than a broker host's: keep the alarm, lower the bar.
    if (key === 'disk_free_limit.absolute') return ['disk_free_limit.absolute = 50MB'];
    return [line];
  });
  const text = lines.join('\n');
  // Never let a test node reach for the machine's own broker.
  if (/rabbit@localhost\b/.test(text)) throw new Error('localized rabbitmq.conf names rabbit@localhost');
  return { text, dropped };
}

export interface LocalCluster {
  readonly nodes: readonly LocalNode[];
  readonly dir: string;
  /** Starts node i (0-based) and waits until it has booted. */
  start(i: number): Promise<void>;
  /** rabbitmqctl / rabbitmq-queues against one node, as user rabbitmq with this cluster's cookie. */
  ctl(tool: 'rabbitmqctl' | 'rabbitmq-queues' | 'rabbitmq-diagnostics', args: readonly string[], timeoutMs?: number): Promise<string>;
  /** Stops every node this cluster started, then removes its folders. */
  stop(): Promise<void>;
  /** Output of the node's own process, for failure messages. */
  log(i: number): string;
}

/**
 * Prepares `count` nodes in a fresh folder: each gets the localized rabbitmq.conf, its own
 * mnesia, log, pid and plugins files; `definitions` are copied into every node's
 * definitions folder (the way Swarm mounts them into /etc/rabbitmq/definitions.d).
 */
export async function prepareLocalCluster(opts: { count: number; conf: string; enabledPlugins: string; definitions: Record<string, string>; dropKeys: readonly string[] }): Promise<LocalCluster & { dropped: string[] }> {
  const uid = Number((await run('id', ['-u', 'rabbitmq'])).stdout.trim());
  const gid = Number((await run('id', ['-g', 'rabbitmq'])).stdout.trim());
  const dir = mkdtempSync(join(tmpdir(), 'fogsched-rmq-'));
  const tag = randomBytes(3).toString('hex');
  const home = join(dir, 'home');
  mkdirSync(home);
  writeFileSync(join(home, '.erlang.cookie'), randomBytes(20).toString('hex').toUpperCase());
  chmodSync(join(home, '.erlang.cookie'), 0o400);
  const nodes: LocalNode[] = [];
  for (let i = 1; i <= opts.count; i++) {
    nodes.push({ name: `fogsched-deploy-${tag}-${i}@localhost`, amqpPort: await freePort(), managementPort: await freePort(), prometheusPort: await freePort(), distPort: await freePort(), dir: join(dir, `n${i}`) });
  }
  let dropped: string[] = [];
  try {
    for (const node of nodes) {
      for (const sub of ['mnesia', 'log', 'definitions.d']) mkdirSync(join(node.dir, sub), { recursive: true });
      for (const [file, text] of Object.entries(opts.definitions)) writeFileSync(join(node.dir, 'definitions.d', file), text);
      const local = localizeRabbitConf(opts.conf, { nodes, self: node, definitionsDir: join(node.dir, 'definitions.d'), dropKeys: opts.dropKeys });
      dropped = local.dropped;
      writeFileSync(join(node.dir, 'rabbitmq.conf'), local.text);
      writeFileSync(join(node.dir, 'enabled_plugins'), opts.enabledPlugins);
      writeFileSync(join(node.dir, 'rabbitmq-env.conf'), '# empty: not the machine-wide /etc/rabbitmq/rabbitmq-env.conf\n');
    }
    chownTree(dir, uid, gid);
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }

  const envOf = (node: LocalNode): Record<string, string> => ({
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: home,
    LANG: 'C.UTF-8',
    RABBITMQ_NODENAME: node.name,
    RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
    RABBITMQ_NODE_PORT: String(node.amqpPort),
    RABBITMQ_DIST_PORT: String(node.distPort),
    RABBITMQ_MNESIA_BASE: join(node.dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(node.dir, 'log'),
    RABBITMQ_CONFIG_FILE: join(node.dir, 'rabbitmq.conf'),
    RABBITMQ_CONF_ENV_FILE: join(node.dir, 'rabbitmq-env.conf'),
    RABBITMQ_PID_FILE: join(node.dir, 'rabbitmq.pid'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(node.dir, 'enabled_plugins'),
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
    ERL_EPMD_ADDRESS: '127.0.0.1',
  });
  const asRabbit = (node: LocalNode, command: string, args: readonly string[]) => ['runuser', ['-u', 'rabbitmq', '--', 'env', '-i', ...Object.entries(envOf(node)).map(([k, v]) => `${k}=${v}`), join(SBIN, command), ...args]] as const;

  const procs: (ChildProcess | undefined)[] = nodes.map(() => undefined);
  const logs: string[] = nodes.map(() => '');
  const ctl: LocalCluster['ctl'] = async (tool, args, timeoutMs = 60_000) => {
    const [cmd, argv] = asRabbit(nodes[0] as LocalNode, tool, args);
    const { stdout } = await run(cmd, argv, { timeout: timeoutMs, cwd: dir });
    return stdout;
  };
  return {
    nodes,
    dir,
    dropped,
    log: (i) => logs[i] ?? '',
    async start(i) {
      const node = nodes[i] as LocalNode;
      const [cmd, argv] = asRabbit(node, 'rabbitmq-server', []);
      const proc = spawn(cmd, argv, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
      procs[i] = proc;
      const keep = (d: Buffer) => (logs[i] = ((logs[i] ?? '') + d.toString()).slice(-30_000));
      proc.stdout?.on('data', keep);
      proc.stderr?.on('data', keep);
      const exited = new Promise<never>((_, reject) => proc.once('exit', (code) => reject(new Error(`${node.name} exited with ${code}:\n${logs[i]}`))));
      exited.catch(() => {});
      // `wait` waits for the pid file, then for the broker app to run (await_startup fails until the node is up).
      await Promise.race([ctl('rabbitmqctl', ['-n', node.name, 'wait', join(node.dir, 'rabbitmq.pid'), '--timeout', '120'], 130_000), exited]);
    },
    ctl,
    async stop() {
      for (let i = nodes.length - 1; i >= 0; i--) {
        const node = nodes[i] as LocalNode;
        const proc = procs[i];
        if (!proc || proc.exitCode !== null || proc.signalCode !== null) continue;
        const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
        await ctl('rabbitmqctl', ['-n', node.name, 'stop'], 60_000).catch(() => {});
        await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
        // Whatever is left (the beam under runuser/sh): by its pid file, then the wrapper.
        const pidFile = join(node.dir, 'rabbitmq.pid');
        const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : NaN;
        if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) process.kill(pid, 'SIGKILL');
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function chownTree(path: string, uid: number, gid: number): void {
  chownSync(path, uid, gid);
  if (statSync(path).isDirectory()) for (const entry of readdirSync(path)) chownTree(join(path, entry), uid, gid);
}


import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../infra/logger.js';
import type { ScaleBackend } from './backend.js';

export interface LocalBackendOptions {
  /** Names the nodes: `<prefix>-<tier>-<n>` (FOG_NODE_ID of each child). */
  readonly idPrefix: string;
  /** Environment of the children (the autoscaler's own, so they reach the same broker, Redis and prefixes). */
  readonly env: NodeJS.ProcessEnv;
  readonly logger: Logger;
  /** How long stop() waits for a child after SIGTERM before SIGKILL (default: FOG_NODE_GRACE_MS + 20 s). */
  readonly killAfterMs: number;
  /** The CLI to run (default this package's bin/fogsched.js). */
  readonly bin?: string;
}

interface Child {
  readonly id: string;
  readonly proc: ChildProcess;
  readonly exited: Promise<void>;
  stopping: boolean;
}

const DEFAULT_BIN = fileURLToPath(new URL('../../bin/fogsched.js', import.meta.url));

/**
 * Fog nodes as child processes of this machine (development and tests): `fogsched start
 * --roles fog-node --tier <tier>`, each with its own FOG_NODE_ID, so they join through their
 * heartbeat and show in `GET /v1/cluster` like any other node. A scale-down sends SIGTERM to the
 * newest node of the tier: it stops taking tasks, finishes or returns the ones it holds (its
 * buffered deliveries go back to the queue unacked) and exits; it no longer counts as a replica
 * from that moment. A node that dies by itself drops out of the count, so the next round puts
 * the tier back to its minimum. Counts only its own children: nodes started otherwise are not
 * this backend's replicas.
 */
export function createLocalBackend(options: LocalBackendOptions): ScaleBackend {
  const bin = options.bin ?? DEFAULT_BIN;
  const children = new Map<string, Child[]>();
  let serial = 0;
  let closing = false;
  const live = (tier: string) => (children.get(tier) ?? []).filter((c) => !c.stopping);

  const startOne = (tier: string) => {
    const id = `${options.idPrefix}-${tier}-${++serial}`;
    // OPS_PORT=0: every child picks a free ops port instead of colliding on the default.
    const proc = spawn(process.execPath, [bin, 'start', '--roles', 'fog-node', '--tier', tier], {
      env: { ...options.env, FOG_NODE_ID: id, FOG_NODE_TIER: tier, OPS_PORT: '0' },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const exited = new Promise<void>((resolve) => {
      proc.once('exit', (code, signal) => {
        const list = children.get(tier) ?? [];
        const child = list.find((c) => c.id === id);
        children.set(tier, list.filter((c) => c.id !== id));
        if (!child?.stopping && !closing) options.logger.warn({ nodeId: id, tier, code, signal }, 'local fog node exited by itself');
        else options.logger.info({ nodeId: id, tier, code, signal }, 'local fog node stopped');
        resolve();
      });
      proc.once('error', (error) => {
        options.logger.error({ err: error, nodeId: id, tier }, 'local fog node could not start');
      });
    });
    children.set(tier, [...(children.get(tier) ?? []), { id, proc, exited, stopping: false }]);
    options.logger.info({ nodeId: id, tier, pid: proc.pid }, 'local fog node started');
  };

  const stopOne = (child: Child) => {
    child.stopping = true;
    if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGTERM');
  };

  return {
    name: 'local',
    replicas(tier) {
      return Promise.resolve(live(tier).length);
    },
    scale(tier, to) {
      if (closing) return Promise.resolve();
      let now = live(tier);
      while (now.length < to) {
        startOne(tier);
        now = live(tier);
      }
      // The newest first: the oldest nodes have warmed up and hold the longest-running work.
      for (const child of now.slice(to).reverse()) stopOne(child);
      return Promise.resolve();
    },
    async close() {
      closing = true;
      const all = [...children.values()].flat();
      for (const child of all) stopOne(child);
      await Promise.all(
        all.map(async (child) => {
          let timer: NodeJS.Timeout | undefined;
          const timedOut = await Promise.race([child.exited.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), options.killAfterMs)))]);
          clearTimeout(timer);
          if (timedOut) {
            options.logger.warn({ nodeId: child.id }, 'local fog node did not stop in time: SIGKILL');
            child.proc.kill('SIGKILL');
            await child.exited;
          }
        }),
      );
    },
  };
}

import { readdirSync, readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, getJson, postJson, spawnFogsched, waitReady, type Spawned } from '../helpers/processes.js';

/** Processes whose parent is `pid` (the local backend's fog nodes), from /proc. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // Field 4 of /proc/<pid>/stat is the parent; the command name (field 2) may hold spaces, so split after its ')'.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

let autoscaler: Spawned | undefined;
afterEach(async () => {
  // A failed test SIGKILLs the autoscaler; its fog nodes would outlive it.
  const orphans = autoscaler?.proc.pid ? childrenOf(autoscaler.proc.pid) : [];
  await dropE2eEnvs();
  for (const pid of orphans) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  autoscaler = undefined;
});

interface ScaledRow {
  from: number;
  to: number;
  trigger: string;
  reason: string;
  depth: number;
}

describe('autoscaler with the local backend', () => {
  it('raises the light tier on a burst of slow tasks, lowers it to the minimum on the drain, loses no task, and logs each decision', async () => {
    const t = await e2eEnv('autoscale');
    const core = spawnFogsched(['start', '--roles', 'api,relay,ingest,scheduler,coordinator'], t.env);
    await waitReady(t.port, core);
    autoscaler = spawnFogsched(['start', '--roles', 'autoscaler'], {
      ...t.env,
      AUTOSCALE_TIERS: 'light:1:3',
      AUTOSCALER_BACKEND: 'local',
      AUTOSCALER_INTERVAL_MS: '300',
      AUTOSCALE_UP_DEPTH: '4',
      AUTOSCALE_UP_COOLDOWN_MS: '1000',
      AUTOSCALE_DOWN_COOLDOWN_MS: '3000',
      FOG_NODE_SLOTS: '2',
      FOG_HEARTBEAT_INTERVAL_MS: '500',
    });
    const lightNodes = async () => ((await getJson(`${t.base}/v1/cluster`)) as { fogNodes: { id: string; tier: string | null; state: string }[] }).fogNodes.filter((n) => n.tier === 'light' && n.state === 'up');

    // The minimum first: one node, started by the autoscaler, visible like any other.
    await eventually(async () => (await lightNodes()).length === 1, { timeoutMs: 60_000, message: 'the autoscaler starts the minimum of one light node' });
    expect((await lightNodes())[0]?.id).toMatch(/^auto-.+-light-1$/);

    // 40 tasks of 2 s on 2 slots: a backlog far above 4 per node.
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) {
      const res = await postJson(`${t.base}/v1/tasks`, { type: 'sleep', payload: { ms: 2000 } });
      expect(res.status).toBe(202);
      ids.push(res.body.id as string);
    }
    await eventually(async () => (await lightNodes()).length === 3, { timeoutMs: 90_000, message: 'the backlog raises the light tier to its maximum of 3' });

    await eventually(async () => (await t.count(`SELECT count(*) AS n FROM task_current WHERE state = 'succeeded'`)) === ids.length, { timeoutMs: 180_000, message: 'every task succeeds' });
    expect(await t.count(`SELECT count(*) AS n FROM task_current WHERE state <> 'succeeded'`)).toBe(0);
    // More than one node ran the burst.
    expect(await t.count(`SELECT count(DISTINCT node_id) AS n FROM task_current`)).toBeGreaterThan(1);

    // The drain: back to the minimum, one node at a time.
    await eventually(async () => (await lightNodes()).length === 1, { timeoutMs: 120_000, message: 'the drain lowers the light tier to 1' });
    const scaled = await eventually(
      async () => {
        const rows = await t.q<{ data: ScaledRow }>(`SELECT data FROM events WHERE stream_id = 'autoscale:light' AND type = 'FogTierScaled' ORDER BY stream_version`);
        return rows.length > 0 && rows.at(-1)?.data.to === 1 ? rows.map((r) => r.data) : null;
      },
      { timeoutMs: 30_000 },
    );
    expect(scaled[0]).toMatchObject({ from: 0, to: 1, trigger: 'below-min' });
    const ups = scaled.filter((s) => s.to > s.from && s.trigger === 'backlog');
    const downs = scaled.filter((s) => s.to < s.from);
    expect(ups.length).toBeGreaterThan(0);
    expect(ups[0]?.depth).toBeGreaterThan(4);
    expect(ups[0]?.reason).toMatch(/^backlog: more than 4 ready per replica on 1 \(depth \d+, queued \d+, running \d+, oldest wait/);
    expect(downs.map((d) => d.trigger)).toEqual(downs.map(() => 'idle'));
    expect(Math.max(...scaled.map((s) => s.to))).toBe(3);
    // The log explains every step: each decision starts where the previous one ended.
    for (let i = 1; i < scaled.length; i++) expect(scaled[i]?.from).toBe(scaled[i - 1]?.to);

    // The audit view shows the same.
    const audit = await t.q<{ tier: string; replicas_from: number; replicas_to: number; trigger: string }>(
      `SELECT tier, replicas_from, replicas_to, trigger FROM audit.capacity_changes WHERE tier = 'light' ORDER BY position`,
    );
    expect(audit.map((a) => [a.replicas_from, a.replicas_to, a.trigger])).toEqual(scaled.map((s) => [s.from, s.to, s.trigger]));

    // A graceful stop takes its fog nodes down with it.
    expect(await autoscaler.kill('SIGTERM')).toBe(0);
    await eventually(async () => (await lightNodes()).length === 0, { timeoutMs: 60_000, message: 'the local nodes leave the cluster when the autoscaler stops' });
    expect(await core.kill('SIGTERM')).toBe(0);
  });
});

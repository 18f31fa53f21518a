import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { laneOf } from '../../src/domain/index.js';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, postJson, spawnFogsched, waitReady, type Spawned } from '../helpers/processes.js';

afterEach(dropE2eEnvs);

const LANES = 4;

/** The JSON log lines of a process with this `msg`. */
function logLines(p: Spawned, msg: string): Record<string, unknown>[] {
  return p
    .output()
    .split('\n')
    .filter((line) => line.includes(msg))
    .flatMap((line) => {
      try {
        const parsed = JSON.parse(line) as Record<string, unknown>;
        return parsed.msg === msg ? [parsed] : [];
      } catch {
        return [];
      }
    });
}

/** Lanes a replica was made the active consumer of, in order, from its log. */
const lanesApplied = (p: Spawned) => logLines(p, 'applying a result lane').map((l) => l.lane as number);

async function submit(base: string, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i += 100) {
    const res = await postJson(`${base}/v1/tasks/batch`, { tasks: Array.from({ length: Math.min(100, n - i) }, () => ({ type: 'noop' })) });
    expect(res.status).toBe(202);
    ids.push(...(res.body.tasks as { id: string }[]).map((t) => t.id));
  }
  return ids;
}

describe(`result lanes (INGEST_LANES=${LANES}): two ingest replicas share them; a killed one's lanes move`, () => {
  it('each lane is applied by one replica at a time, the second replica gets its share, and after a SIGKILL the survivor takes its lanes; no task is lost', async () => {
    const t = await e2eEnv('lanes');
    const env = { ...t.env, INGEST_LANES: String(LANES) };
    const redis = new Redis(inject('redisUrl'), { lazyConnect: false });
    try {
      const replicas = async () => redis.zrange(`${t.prefix}ingest:replicas`, 0, -1);
      const core = spawnFogsched(['start', '--roles', 'api,relay,scheduler,fog-node'], env);
      await waitReady(t.port, core);
      // A first: the broker makes it the active consumer of every lane; B then waits behind it on each.
      const a = spawnFogsched(['start', '--roles', 'ingest'], { ...env, LOG_LEVEL: 'info' });
      await eventually(async () => ((await replicas()).length === 1 ? true : null), { timeoutMs: 20_000 });
      const b = spawnFogsched(['start', '--roles', 'ingest'], { ...env, LOG_LEVEL: 'info' });
      await eventually(async () => ((await replicas()).length === 2 ? true : null), { timeoutMs: 20_000 });

      const succeeded = () => t.count(`SELECT count(*) AS n FROM task_current WHERE state = 'succeeded'`);
      const first = await submit(t.base, 400);
      expect(new Set(first.map((id) => laneOf(id, LANES))).size).toBe(LANES);
      await eventually(async () => ((await succeeded()) === first.length ? true : null), { timeoutMs: 60_000 });

      // A handed B's lanes over (it got deliveries on lanes another live replica owns) and B applied them.
      expect(logLines(a, 'handing a result lane over to the replica that owns it').length).toBeGreaterThan(0);
      await eventually(async () => {
        const more = await submit(t.base, 100);
        await eventually(async () => ((await succeeded()) >= first.length + more.length ? true : null), { timeoutMs: 30_000 });
        return lanesApplied(b).length > 0 ? true : null;
      }, { timeoutMs: 30_000 });
      const bLanes = new Set(lanesApplied(b));
      expect(bLanes.size).toBeGreaterThan(0);
      expect(bLanes.size).toBeLessThan(LANES);

      // SIGKILL B: its connection drops, the broker makes A's waiting consumers active on B's lanes.
      await b.kill('SIGKILL');
      const appliedBefore = lanesApplied(a).length;
      const total = await t.count(`SELECT count(*) AS n FROM task_current`);
      const after = await submit(t.base, 400);
      await eventually(async () => ((await succeeded()) === total + after.length ? true : null), { timeoutMs: 60_000 });
      const takenOver = new Set(lanesApplied(a).slice(appliedBefore));
      for (const lane of bLanes) expect(takenOver.has(lane), `A applied ${JSON.stringify(lanesApplied(a))} (after the kill ${JSON.stringify([...takenOver])}), B ${JSON.stringify([...bLanes])}; A handed over ${JSON.stringify(logLines(a, "handing a result lane over to the replica that owns it").map((l) => l.lane))}`).toBe(true);
      // B left the membership once its heartbeat expired.
      await eventually(async () => ((await replicas()).length === 1 ? true : null), { timeoutMs: 20_000 });

      // Every task ran once to one terminal event; no lane left anything behind.
      expect(await t.count(`SELECT count(*) AS n FROM task_current WHERE state <> 'succeeded'`)).toBe(0);
      expect(await t.count(`SELECT count(*) AS n FROM (SELECT stream_id FROM events WHERE type = 'TaskSucceeded' GROUP BY 1 HAVING count(*) > 1) d`)).toBe(0);
      expect(await a.kill('SIGTERM')).toBe(0);
      expect(await core.kill('SIGTERM')).toBe(0);
    } finally {
      redis.disconnect();
    }
  });
});

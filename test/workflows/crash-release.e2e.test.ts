import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, type Spawned } from '../helpers/processes.js';
import { workflowEnv } from './helpers.js';

// Issue 20, "correct under concurrency and faults": a layered DAG completes while its two ingest
// replicas are SIGKILLed one after the other, each time just after some result was recorded, so
// kills land between a dependency's result and its ack, and mid-transaction. Whatever was cut
// short is redelivered; every task must end once and every dependant be released once, in the
// transaction of the dependency's end.

afterEach(dropE2eEnvs);

/** A random DAG: `layers` layers of `width` tasks, each (past the first) depending on 1 to 3 tasks of the layer before, then one fan-in on the last layer. */
function layeredDag(layers: number, width: number): { id: string; type: string; dependsOn?: string[]; payload: unknown }[] {
  const tasks: { id: string; type: string; dependsOn?: string[]; payload: unknown }[] = [];
  let previous: string[] = [];
  for (let l = 0; l < layers; l++) {
    const layer = Array.from({ length: width }, () => randomUUID());
    layer.forEach((id, i) => {
      const deps = previous.length ? [...new Set(Array.from({ length: 1 + ((i * 7 + l) % 3) }, (_, k) => previous[(i * 5 + k * 11 + l) % previous.length]!))] : [];
      tasks.push({ id, type: 'dag.step', ...(deps.length ? { dependsOn: deps } : {}), payload: { ms: 50 + ((i * 37) % 150), value: `${l}.${i}` } });
    });
    previous = layer;
  }
  tasks.push({ id: randomUUID(), type: 'dag.count', dependsOn: previous, payload: {} });
  return tasks;
}

describe('crash mid-release', () => {
  it('ingest replicas SIGKILLed over and over while a DAG completes: every task ends once, every dependant is released once, with its dependency end in one transaction', { timeout: 300_000 }, async () => {
    const w = await workflowEnv('crashrel');
    await w.startApi('api,relay,scheduler');
    w.start('fog-node', { FOG_NODE_ID: 'crash-node', FOG_NODE_SLOTS: '16' }, ['--no-migrate']);
    // Small batches: more transactions, so more of the kills land inside one.
    const startIngest = () => w.start('ingest', { INGEST_BATCH_SIZE: '20' }, ['--no-migrate']);
    const ingest: Spawned[] = [startIngest(), startIngest()];

    const dag = layeredDag(5, 24);
    const ids = dag.map((t) => t.id);
    const dependants = dag.filter((t) => t.dependsOn).map((t) => t.id);
    await w.batch(dag);

    const succeeded = () => w.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1::uuid[]) AND state = 'succeeded'`, [ids]);
    let kills = 0;
    let killedMidway = 0;
    for (let round = 0; round < 16; round++) {
      const before = await succeeded();
      if (before === ids.length) break;
      // As soon as this replica set records anything more, kill one replica (alternating) and start it again.
      await eventually(async () => (await succeeded()) > before, { timeoutMs: 60_000, intervalMs: 20, message: `no progress after ${kills} kills` });
      const k = round % 2;
      await ingest[k]!.kill('SIGKILL');
      kills++;
      if ((await succeeded()) < ids.length) killedMidway++;
      ingest[k] = startIngest();
    }
    expect(kills).toBeGreaterThanOrEqual(3);
    expect(killedMidway).toBeGreaterThanOrEqual(3);

    await eventually(async () => (await succeeded()) === ids.length, { timeoutMs: 120_000, intervalMs: 200, message: 'the DAG did not complete after the kills' });

    // Every task ended once; every dependant was released exactly once and never started before
    // its dependencies ended; each release shares its transaction with the end of the dependency
    // that caused it (a crash between the two is impossible), and names it as causation.
    expect(await w.doubleTerminal()).toEqual([]);
    const releases = await w.countPerTask(ids, 'TaskReleased');
    expect(dependants.filter((id) => releases.get(id) !== 1)).toEqual([]);
    expect(ids.filter((id) => !dependants.includes(id) && releases.get(id) !== 0)).toEqual([]);
    expect(await w.releasesApart()).toEqual([]);
    expect(await w.startedEarly()).toEqual([]);
    // One dispatch per task (a root's is its TaskSubmitted, a dependant's the TaskQueued after its
    // release): a redelivered result does not release or queue anything twice.
    const queued = await w.countPerTask(ids, 'TaskQueued');
    expect(ids.filter((id) => queued.get(id) !== (dependants.includes(id) ? 1 : 0))).toEqual([]);
    expect(await w.count(`SELECT count(*) AS n FROM task_waits WHERE task_id = ANY($1::uuid[]) AND pending > 0`, [dependants])).toBe(0);
    expect(await w.count(`SELECT count(*) AS n FROM task_dependencies WHERE task_id = ANY($1::uuid[]) AND resolved_state IS DISTINCT FROM 'succeeded'`, [dependants])).toBe(0);

    const fanIn = await w.get(`/v1/tasks/${ids.at(-1)}`);
    expect(fanIn.output).toEqual({ dependencies: 24, states: { succeeded: 24 }, truncated: false });
  });
});

import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropE2eEnvs, spawnFogsched } from '../helpers/processes.js';
import { ofType, types, workflowEnv, type WorkflowEnv } from './helpers.js';

// Issue 20 end to end: dependencies between tasks on the whole pipeline (HTTP → outbox → relay →
// RabbitMQ → fog node → results → ingest), one environment for the file's tests.

/** Runs a fogsched command to its end; its exit code and output. */
async function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const p = spawnFogsched(args, env);
  const code = await p.exited;
  return { code, out: p.output() };
}

describe('task dependencies on the whole pipeline', () => {
  let w: WorkflowEnv;
  beforeAll(async () => {
    w = await workflowEnv('dag');
    await w.startApi('api,relay,ingest,scheduler,fog-node', { FOG_NODE_ID: 'dag-node', FOG_NODE_SLOTS: '8' });
  });
  afterAll(dropE2eEnvs);

  it('diamond A → {B, C} → D: D waits, is released once by the later of B and C, starts after both and sees both outputs in ctx.dependencies', async () => {
    const [a, b, c, d] = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
    // A is an existing task when the batch names it; B and C are items of the same batch as D.
    const root = await w.submit({ id: a, name: 'fetch', type: 'dag.step', payload: { ms: 800, value: 'a' } });
    expect(root).toMatchObject({ id: a, name: 'fetch' });
    const [vb, vc, vd] = await w.batch([
      { id: b, type: 'dag.step', dependsOn: [a], payload: { ms: 400, value: 'b' } },
      { id: c, type: 'dag.step', dependsOn: [a], payload: { value: 'c' } },
      { id: d, type: 'dag.step', dependsOn: [b, c], payload: { value: 'd' } },
    ]);
    expect(vd).toMatchObject({ id: d, state: 'waiting', dependsOn: [b, c], onDependencyFailure: 'cancel' });
    expect(vb.dependsOn).toEqual([a]);
    expect(vc.dependsOn).toEqual([a]);

    const done = await w.waitState(d, 'succeeded');
    for (const id of [a, b, c]) expect((await w.get(`/v1/tasks/${id}`)).state).toBe('succeeded');

    const h = await w.history(d);
    expect(types(h)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskReleased', 'TaskQueued', 'TaskStarted', 'TaskSucceeded']);
    expect(ofType(h, 'TaskWaiting')[0]?.data.pending).toBe(2);
    const released = ofType(h, 'TaskReleased')[0]!;
    expect([b, c]).toContain(released.data.dependency);
    expect(released.data.outcomes).toEqual({ succeeded: 2, failed: 0, cancelled: 0 });
    expect(ofType(h, 'TaskQueued')[0]?.attempt).toBe(1);

    // The handler got B's and C's outputs (state and output per id), and nothing else.
    expect(Object.keys(done.output.dependencies).sort()).toEqual([b, c].sort());
    expect(done.output.dependencies[b]).toMatchObject({ state: 'succeeded', output: { value: 'b' } });
    expect(done.output.dependencies[c]).toMatchObject({ state: 'succeeded', output: { value: 'c' } });
    expect(done.output.truncated).toBe(false);
    // B and C saw A the same way.
    const vbDone = await w.get(`/v1/tasks/${b}`);
    expect(vbDone.output.dependencies[a]).toMatchObject({ state: 'succeeded', output: { value: 'a' } });

    // From the log: one release each, D started after B's and C's terminal events, and the
    // release was written in the transaction of the releasing dependency's end, with it as causation.
    const releases = await w.countPerTask([a, b, c, d], 'TaskReleased');
    expect(releases.get(a)).toBe(0);
    expect([releases.get(b), releases.get(c), releases.get(d)]).toEqual([1, 1, 1]);
    expect(await w.doubleTerminal()).toEqual([]);
    expect(await w.startedEarly()).toEqual([]);
    expect(await w.releasesApart()).toEqual([]);
    const [dStart] = await w.q<{ position: string }>(`SELECT position FROM events WHERE stream_id = $1 AND type = 'TaskStarted'`, [d]);
    const depEnds = await w.q<{ position: string }>(`SELECT position FROM events WHERE stream_id = ANY($1) AND type = 'TaskSucceeded'`, [[b, c]]);
    expect(depEnds).toHaveLength(2);
    for (const e of depEnds) expect(BigInt(e.position)).toBeLessThan(BigInt(dStart!.position));

    // The graph of D: its ancestors, and of A: its descendants, with states and the four edges.
    const graph = await w.get(`/v1/tasks/${d}/graph`);
    expect(graph.taskId).toBe(d);
    expect(graph.truncated).toBe(false);
    const byId = new Map<string, { relation: string; depth: number; state: string; name: string | null }>(graph.nodes.map((n: { taskId: string }) => [n.taskId, n]));
    expect(byId.get(d)).toMatchObject({ relation: 'self', depth: 0, state: 'succeeded' });
    expect(byId.get(b)).toMatchObject({ relation: 'ancestor', depth: 1, state: 'succeeded' });
    expect(byId.get(c)).toMatchObject({ relation: 'ancestor', depth: 1, state: 'succeeded' });
    expect(byId.get(a)).toMatchObject({ relation: 'ancestor', depth: 2, state: 'succeeded', name: 'fetch' });
    const edge = (e: { from: string; to: string }) => `${e.from}>${e.to}`;
    expect(graph.edges.map(edge).sort()).toEqual([`${a}>${b}`, `${a}>${c}`, `${b}>${d}`, `${c}>${d}`].sort());
    const down = await w.get(`/v1/tasks/${a}/graph`);
    expect(new Map(down.nodes.map((n: { taskId: string; relation: string }) => [n.taskId, n.relation]))).toEqual(
      new Map([
        [a, 'self'],
        [b, 'descendant'],
        [c, 'descendant'],
        [d, 'descendant'],
      ]),
    );
  });

  it('failure propagation: a failed dependency cancels its dependants (recursively, reason dependency-failed naming it); a dependant with onDependencyFailure run runs and sees the failed outcome', async () => {
    const [f, x, z, y] = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
    await w.batch([
      { id: f, type: 'dag.fail', maxAttempts: 1, payload: { message: 'sensor offline' } },
      { id: x, type: 'dag.step', dependsOn: [f] },
      { id: z, type: 'dag.step', dependsOn: [x] },
      { id: y, type: 'dag.step', dependsOn: [f], onDependencyFailure: 'run' },
    ]);
    expect((await w.waitState(f)).state).toBe('failed');
    const vx = await w.waitState(x);
    const vz = await w.waitState(z);
    const vy = await w.waitState(y);
    expect(vx.state).toBe('cancelled');
    expect(vz.state).toBe('cancelled');
    expect(vy.state).toBe('succeeded');

    const hx = await w.history(x);
    expect(types(hx)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskCancelled']);
    expect(hx[2]).toMatchObject({ actor: 'scheduler', reason: 'dependency-failed', data: { dependency: f, dependencyState: 'failed' } });
    // z depends on x only: x's cancellation is what ended it.
    const hz = await w.history(z);
    expect(types(hz)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskCancelled']);
    expect(hz[2]).toMatchObject({ actor: 'scheduler', reason: 'dependency-failed', data: { dependency: x, dependencyState: 'cancelled' } });
    const causes = await w.q<{ stream_id: string; causation: string }>(`SELECT stream_id, metadata->>'causationId' AS causation FROM events WHERE type = 'TaskCancelled' AND stream_id = ANY($1) ORDER BY stream_id`, [[x, z]]);
    expect(new Map(causes.map((r) => [r.stream_id, r.causation]))).toEqual(
      new Map([
        [x, f],
        [z, x],
      ]),
    );

    const hy = await w.history(y);
    expect(types(hy)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskReleased', 'TaskQueued', 'TaskStarted', 'TaskSucceeded']);
    expect(ofType(hy, 'TaskReleased')[0]?.data).toMatchObject({ dependency: f, outcomes: { succeeded: 0, failed: 1, cancelled: 0 } });
    expect(vy.output.dependencies[f]).toMatchObject({ state: 'failed' });
    expect(await w.releasesApart()).toEqual([]);
    expect(await w.doubleTerminal()).toEqual([]);
  });

  it("cancelling a workflow's root cancels every waiting descendant, level by level; a run-anyway leaf runs and sees the cancellation", async () => {
    const [r, l1a, l1b, l2, l3, report] = [randomUUID(), randomUUID(), randomUUID(), randomUUID(), randomUUID(), randomUUID()];
    // The root waits for its notBefore, so the descendants are all waiting when it is cancelled.
    await w.batch([
      { id: r, type: 'dag.step', notBefore: new Date(Date.now() + 600_000).toISOString() },
      { id: l1a, type: 'dag.step', dependsOn: [r] },
      { id: l1b, type: 'dag.step', dependsOn: [r] },
      { id: l2, type: 'dag.step', dependsOn: [l1a, l1b] },
      { id: l3, type: 'dag.step', dependsOn: [l2] },
      { id: report, type: 'dag.step', dependsOn: [l3], onDependencyFailure: 'run' },
    ]);
    for (const id of [l1a, l1b, l2, l3, report]) expect((await w.get(`/v1/tasks/${id}`)).state).toBe('waiting');

    const cancel = await w.post(`/v1/tasks/${r}/cancel`, { reason: 'operator stopped the pipeline' });
    expect(cancel.status, JSON.stringify(cancel.body)).toBe(200);
    expect(cancel.body.state).toBe('cancelled');

    const parentOf: [string, string[]][] = [
      [l1a, [r]],
      [l1b, [r]],
      [l2, [l1a, l1b]],
      [l3, [l2]],
    ];
    for (const [id, parents] of parentOf) {
      expect((await w.waitState(id)).state).toBe('cancelled');
      const h = await w.history(id);
      expect(types(h)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskCancelled']);
      expect(h[2]).toMatchObject({ actor: 'scheduler', reason: 'dependency-failed', data: { dependencyState: 'cancelled' } });
      expect(parents).toContain(h[2]!.data.dependency);
    }
    const done = await w.waitState(report, 'succeeded');
    expect(done.output.dependencies[l3]).toMatchObject({ state: 'cancelled' });
    expect(await w.doubleTerminal()).toEqual([]);
    // The descendants never got to a queue; the root never started.
    expect(await w.count(`SELECT count(*) AS n FROM events WHERE stream_id = ANY($1) AND type IN ('TaskQueued', 'TaskStarted', 'TaskReleased')`, [[l1a, l1b, l2, l3]])).toBe(0);
    expect(types(await w.history(r))).toEqual(['TaskSubmitted', 'TaskCancelled']);

    const graph = await w.get(`/v1/tasks/${r}/graph`);
    const states = new Map(graph.nodes.map((n: { taskId: string; state: string }) => [n.taskId, n.state]));
    expect(states).toEqual(
      new Map([
        [r, 'cancelled'],
        [l1a, 'cancelled'],
        [l1b, 'cancelled'],
        [l2, 'cancelled'],
        [l3, 'cancelled'],
        [report, 'succeeded'],
      ]),
    );
  });

  it('POST /v1/workflows: named steps run in dependency order, outputs flow forward; the same Idempotency-Key returns the same tasks', async () => {
    const body = {
      name: 'sensor-pipeline',
      steps: [
        { step: 'fetch', type: 'dag.step', payload: { value: 'raw' } },
        { step: 'clean', type: 'dag.step', dependsOn: ['fetch'], payload: { value: 'clean' } },
        { step: 'stats', type: 'dag.step', dependsOn: ['fetch'], payload: { value: 'stats' } },
        { step: 'aggregate', type: 'dag.step', dependsOn: ['clean', 'stats'], payload: { value: 'aggregate' } },
      ],
    };
    const key = `wf-${randomUUID()}`;
    const res = await w.post('/v1/workflows', body, { 'idempotency-key': key });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const ids = Object.fromEntries(Object.entries(res.body.steps as Record<string, { id: string }>).map(([k, v]) => [k, v.id])) as Record<string, string>;
    expect(Object.keys(ids).sort()).toEqual(['aggregate', 'clean', 'fetch', 'stats']);
    expect(res.body.steps.aggregate.dependsOn.sort()).toEqual([ids.clean, ids.stats].sort());
    expect(res.body.steps.fetch.state).not.toBe('waiting');

    const again = await w.post('/v1/workflows', body, { 'idempotency-key': key });
    // Like a repeated submit: 200 (nothing new) or 202, with the same tasks.
    expect([200, 202]).toContain(again.status);
    expect(Object.fromEntries(Object.entries(again.body.steps as Record<string, { id: string }>).map(([k, v]) => [k, v.id]))).toEqual(ids);

    const agg = await w.waitState(ids.aggregate!, 'succeeded');
    expect(Object.keys(agg.output.dependencies).sort()).toEqual([ids.clean, ids.stats].sort());
    expect(agg.output.dependencies[ids.clean!]).toMatchObject({ state: 'succeeded', output: { value: 'clean' } });
    expect(await w.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1::uuid[])`, [Object.values(ids)])).toBe(4);
    expect(await w.doubleReleased()).toEqual([]);
    expect(await w.startedEarly()).toEqual([]);
  });

  it('a projection rebuild reproduces waiting, released and dependency-cancelled tasks (verify finds the tables equal); a waiting task still waits after the swap and its root still propagates', async () => {
    const [root, child, grandchild] = [randomUUID(), randomUUID(), randomUUID()];
    await w.batch([
      { id: root, type: 'dag.step', notBefore: new Date(Date.now() + 600_000).toISOString() },
      { id: child, type: 'dag.step', dependsOn: [root] },
      { id: grandchild, type: 'dag.step', dependsOn: [child], onDependencyFailure: 'run' },
    ]);
    // The log holds the earlier tests' released, cancelled and run-anyway tasks and these waiting ones.
    const verify = await runCli(['projections', 'verify'], w.env);
    expect(verify.code, verify.out).toBe(0);
    const rebuild = await runCli(['projections', 'rebuild', '--verify'], w.env);
    expect(rebuild.code, rebuild.out).toBe(0);
    expect(rebuild.out).toContain('swapped in');
    expect(await w.get(`/v1/tasks/${child}`)).toMatchObject({ state: 'waiting', dependsOn: [root] });
    expect(await w.get(`/v1/tasks/${grandchild}`)).toMatchObject({ state: 'waiting', dependsOn: [child], onDependencyFailure: 'run' });

    expect((await w.post(`/v1/tasks/${root}/cancel`, {})).status).toBe(200);
    expect((await w.waitState(child)).state).toBe('cancelled');
    const done = await w.waitState(grandchild);
    expect(done.state).toBe('succeeded');
    expect(done.output.dependencies[child]).toMatchObject({ state: 'cancelled' });
  });

  it('an unknown dependency or a cycle in a batch is 400 INVALID_DEPENDENCIES and writes nothing', async () => {
    const lone = randomUUID();
    const unknown = await w.post('/v1/tasks', { id: lone, type: 'noop', dependsOn: [randomUUID()] });
    expect(unknown.status).toBe(400);
    expect(unknown.body.code).toBe('INVALID_DEPENDENCIES');
    expect(unknown.body.errors).toEqual([expect.objectContaining({ path: 'body/dependsOn' })]);
    const [p, q] = [randomUUID(), randomUUID()];
    const cycle = await w.post('/v1/tasks/batch', {
      tasks: [
        { id: p, type: 'noop', dependsOn: [q] },
        { id: q, type: 'noop', dependsOn: [p] },
      ],
    });
    expect(cycle.status).toBe(400);
    expect(cycle.body.code).toBe('INVALID_DEPENDENCIES');
    expect(cycle.body.errors.map((e: { path: string }) => e.path)).toEqual(expect.arrayContaining([expect.stringMatching(/^body\/tasks\/[01]\/dependsOn$/)]));
    // Nothing was written: no event, no task, no edge.
    expect(await w.count(`SELECT count(*) AS n FROM events WHERE stream_id = ANY($1)`, [[lone, p, q]])).toBe(0);
    expect(await w.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1::uuid[])`, [[lone, p, q]])).toBe(0);
    expect(await w.count(`SELECT count(*) AS n FROM task_dependencies WHERE task_id = ANY($1::uuid[])`, [[lone, p, q]])).toBe(0);
  });
});

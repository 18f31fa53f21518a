import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs } from '../helpers/processes.js';
import { deletePlacementQueues, ofType, placementClassOf, types, workflowEnv, type WorkflowEnv } from './helpers.js';

// Issue 20, placement: fog nodes of two sites (FOG_NODE_ZONE, FOG_NODE_LABELS), a pipeline whose
// steps are placed by zone and labels, and a placement no node matches that falls back to any
// node of its tier after fallbackAfterMs.

const NODES = {
  'node-a': { FOG_NODE_ZONE: 'site-a', FOG_NODE_LABELS: 'storage=local' },
  'node-b': { FOG_NODE_ZONE: 'site-b', FOG_NODE_LABELS: 'gpu=yes,storage=local' },
} as const;
const GPU = { labels: { gpu: 'yes' } };
const LOCAL_A = { zone: 'site-a', labels: { storage: 'local' } };
/** Every placement the tests use: their class queues are deleted at the end. */
const PLACEMENTS = [{ zone: 'site-a' }, { zone: 'site-b' }, GPU, LOCAL_A, { zone: 'site-gone' }, { zone: 'site-none' }];

describe('placement by zone and labels across two sites', () => {
  let w: WorkflowEnv;
  beforeAll(async () => {
    w = await workflowEnv('zones');
    await w.startApi('api,relay,ingest,scheduler,coordinator');
    // A short rescan: label classes appear when the relay first publishes to them.
    for (const [id, env] of Object.entries(NODES)) w.start('fog-node', { FOG_NODE_ID: id, FOG_NODE_SLOTS: '4', FOG_NODE_PLACEMENT_RESCAN_MS: '500', ...env }, ['--no-migrate']);
    // Both nodes are members, with their zone and labels.
    await eventually(
      async () => {
        const cluster = await w.get('/v1/cluster');
        const nodes = new Map((cluster.fogNodes as { id: string; zone: string | null; labels: Record<string, string> }[]).map((n) => [n.id, n]));
        return nodes.get('node-a')?.zone === 'site-a' && nodes.get('node-b')?.zone === 'site-b' ? nodes : null;
      },
      { timeoutMs: 30_000, message: 'the two fog nodes did not join with their zones' },
    ).then((nodes) => {
      expect(nodes.get('node-a')?.labels).toEqual({ storage: 'local' });
      expect(nodes.get('node-b')?.labels).toEqual({ gpu: 'yes', storage: 'local' });
    });
  });
  afterAll(async () => {
    const prefix = w?.prefix;
    await dropE2eEnvs();
    if (!prefix) return;
    const classes = await Promise.all(PLACEMENTS.map((p) => placementClassOf(p).catch(() => null)));
    await deletePlacementQueues(prefix, [...new Set(['site-a', 'site-b', 'site-none', 'site-gone', ...classes.filter((c): c is string => !!c)])]);
  });

  it('a pipeline fetch@site-a, fetch@site-b → process (label gpu=yes) → report@site-a: each step starts on a node of its placement', async () => {
    const [fetchA, fetchB, process, report] = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
    const placed: Record<string, string> = { [fetchA]: 'node-a', [fetchB]: 'node-b', [process]: 'node-b', [report]: 'node-a' };
    const views = await w.batch([
      { id: fetchA, name: 'fetch-a', type: 'dag.step', placement: { zone: 'site-a' }, payload: { value: 'a' } },
      { id: fetchB, name: 'fetch-b', type: 'dag.step', placement: { zone: 'site-b' }, payload: { value: 'b' } },
      { id: process, name: 'process', type: 'dag.step', placement: GPU, dependsOn: [fetchA, fetchB], payload: { value: 'p' } },
      { id: report, name: 'report', type: 'dag.step', placement: LOCAL_A, dependsOn: [process], payload: { value: 'r' } },
    ]);
    expect(views[0].placement).toEqual({ zone: 'site-a' });
    expect(views[2].placement).toEqual(GPU);

    const done = await w.waitState(report, 'succeeded', 60_000);
    expect(done.output.dependencies[process]).toMatchObject({ state: 'succeeded', output: { value: 'p' } });
    for (const [id, node] of Object.entries(placed)) {
      const h = await w.history(id);
      expect(ofType(h, 'TaskStarted').map((e) => e.nodeId), `step ${id}`).toEqual([node]);
      expect(types(h)).not.toContain('TaskPlacementFallback');
      expect((await w.get(`/v1/tasks/${id}`)).nodeId).toBe(node);
    }
    expect(await w.doubleReleased()).toEqual([]);
    expect(await w.startedEarly()).toEqual([]);
  });

  it('fallback after its delay: a task placed in a zone with no live node and fallbackAfterMs 1500 runs on a node of another zone, with TaskPlacementFallback in its history', async () => {
    const res = await w.post('/v1/tasks', { type: 'dag.step', placement: { zone: 'site-gone' }, fallbackAfterMs: 1500, payload: { value: 'fell back' } });
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({ state: 'queued', placement: { zone: 'site-gone' }, fallbackAfterMs: 1500 });
    // Accepted with a warning: no live node matches the placement.
    expect(res.body.warnings?.join(' ')).toMatch(/site-gone/);
    const id = res.body.id as string;
    const done = await w.waitState(id, 'succeeded', 60_000);
    expect(['node-a', 'node-b']).toContain(done.nodeId);

    const h = await w.history(id);
    expect(types(h)).toEqual(['TaskSubmitted', 'TaskPlacementFallback', 'TaskStarted', 'TaskSucceeded']);
    const fallback = ofType(h, 'TaskPlacementFallback')[0]!;
    expect(fallback).toMatchObject({ attempt: 1, data: { attempt: 1, afterMs: 1500 } });
    // Not before its delay: the fallback is recorded no earlier than fallbackAfterMs after the dispatch.
    expect(Date.parse(fallback.data.at as string) - Date.parse(ofType(h, 'TaskSubmitted')[0]!.data.at as string)).toBeGreaterThanOrEqual(1500);
    expect(ofType(h, 'TaskStarted')[0]?.attempt).toBe(1);
  });

  it('a placement no live node matches waits (with a warning); a fallback task of the same placement submitted after it still falls back after its delay', async () => {
    const stuck = await w.post('/v1/tasks', { type: 'dag.step', placement: { zone: 'site-none' }, payload: { value: 'stuck' } });
    expect(stuck.status).toBe(202);
    expect(stuck.body.warnings?.join(' ')).toMatch(/site-none/);

    // Same placement class, so the same queue, behind a message that never expires.
    const res = await w.post('/v1/tasks', { type: 'dag.step', placement: { zone: 'site-none' }, fallbackAfterMs: 1500, payload: { value: 'fell back' } });
    expect(res.status).toBe(202);
    const id = res.body.id as string;
    const done = await w.waitState(id, 'succeeded', 30_000);
    expect(['node-a', 'node-b']).toContain(done.nodeId);
    expect(types(await w.history(id))).toContain('TaskPlacementFallback');

    // The one without a fallback still waits for a node of its zone.
    const still = await w.get(`/v1/tasks/${stuck.body.id as string}`);
    expect(still.state).toBe('queued');
    expect(types(await w.history(stuck.body.id as string))).toEqual(['TaskSubmitted']);
  });
});

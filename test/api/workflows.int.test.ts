import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import type { LiveNode } from '../../src/api/placement-warning.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { getTaskGraph } from '../../src/projections/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

/**
 * POST /v1/workflows, GET /v1/tasks/{id}/graph and the submit fields of issue 20 over a real
 * PostgreSQL: the API's side of the contract (docs/workflows.md). Two tenants (acme, globex).
 */

const ACME = 'acme-key-0123456789abcdef';
const GLOBEX = 'globex-key-0123456789abcdef';
const names = topologyNames('wf_');
let tdb: TestDatabase;
let app: FastifyInstance;
let live: readonly LiveNode[] | null = null;

interface TaskJson {
  id: string;
  name?: string;
  state: string;
  tier: string;
  dependsOn?: string[];
  onDependencyFailure?: string;
  placement?: { zone?: string; labels?: Record<string, string> };
  fallbackAfterMs?: number;
  warnings?: string[];
}
interface GraphJson {
  taskId: string;
  nodes: { taskId: string; name: string | null; state: string; relation: string; depth: number; tier: string; placement: unknown }[];
  edges: { from: string; to: string }[];
  truncated: boolean;
}
interface ProblemJson {
  status: number;
  code: string;
  errors?: { path: string; message: string }[];
}

beforeAll(async () => {
  tdb = await createTestDatabase('workflows');
  const tasks = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });
  app = await buildApi({
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: tdb.db,
    tasks,
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [],
    apiKeys: [
      { tenant: 'acme', role: 'submitter', key: ACME },
      { tenant: 'globex', role: 'submitter', key: GLOBEX },
    ],
    liveTiers: async () => (live ? new Set(live.flatMap((n) => [...n.tiers])) : null),
    liveNodes: async () => live,
  });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
  await tdb?.drop();
});

const post = (url: string, payload: unknown, key = ACME, headers: Record<string, string> = {}) => app.inject({ method: 'POST', url, payload: payload as object, headers: { 'x-api-key': key, ...headers } });
const get = (url: string, key = ACME) => app.inject({ method: 'GET', url, headers: { 'x-api-key': key } });
const rows = async () => Number((await sql<{ n: string }>`SELECT count(*) AS n FROM events`.execute(tdb.db)).rows[0]?.n);

const FOG = {
  name: 'scan-1',
  steps: [
    { step: 'fetch', type: 'fetch-scan', placement: { zone: 'site-a', labels: { sensor: 'lidar' } }, fallbackAfterMs: 600000 },
    { step: 'denoise', type: 'denoise', dependsOn: ['fetch'], resources: { cpu: 0.75, memoryMb: 768 } },
    { step: 'classify', type: 'classify', dependsOn: ['fetch'], resources: { cpu: 0.75, memoryMb: 768 }, onDependencyFailure: 'run' },
    { step: 'aggregate', type: 'merge-scans', dependsOn: ['denoise', 'classify'], resources: { cpu: 1, memoryMb: 1024 }, placement: { zone: 'region-1' } },
  ],
};

describe('requests the API refuses before the domain sees them (run before the merge of issue 20)', () => {
  it('schema: dependsOn of non-uuids or repeated ids, a bad zone or label, too many labels, fallbackAfterMs out of range are 400 VALIDATION_FAILED', async () => {
    const before = await rows();
    const cases: [unknown, string][] = [
      [{ type: 'noop', dependsOn: ['not-a-uuid'] }, 'body/dependsOn/0'],
      [{ type: 'noop', dependsOn: ['0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11', '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11'] }, 'body/dependsOn'],
      [{ type: 'noop', dependsOn: Array.from({ length: 10_001 }, (_, i) => `0193a5b2-7c4e-7d1a-9f3e-${i.toString(16).padStart(12, '0')}`) }, 'body/dependsOn'],
      [{ type: 'noop', placement: { zone: 'Site A' } }, 'body/placement/zone'],
      [{ type: 'noop', placement: { labels: { 'Bad Key': 'x' } } }, 'body/placement/labels'],
      [{ type: 'noop', placement: { labels: { gpu: 'a b' } } }, 'body/placement/labels/gpu'],
      [{ type: 'noop', placement: { labels: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])) } }, 'body/placement/labels'],
      [{ type: 'noop', placement: { zone: 'a' }, fallbackAfterMs: 0 }, 'body/fallbackAfterMs'],
      [{ type: 'noop', placement: { zone: 'a' }, fallbackAfterMs: 604_800_001 }, 'body/fallbackAfterMs'],
      [{ type: 'noop', placement: 0 }, 'body/placement'],
      [{ type: 'noop', onDependencyFailure: 'ignore' }, 'body/onDependencyFailure'],
      [{ type: 'noop', name: 'x'.repeat(101) }, 'body/name'],
      [{ type: 'noop', id: 'nope' }, 'body/id'],
    ];
    for (const [body, path] of cases) {
      const res = await post('/v1/tasks', body);
      expect(res.statusCode, JSON.stringify(body).slice(0, 100)).toBe(400);
      const p = res.json<ProblemJson>();
      expect(p.code).toBe('VALIDATION_FAILED');
      expect(p.errors?.map((e) => e.path), JSON.stringify(p.errors)).toContain(path);
    }
    expect(await rows()).toBe(before);
  });

  it('a dependsOn of 10,000 ids fits in the default body limit (4 MiB): the schema accepts its size', async () => {
    const ids = Array.from({ length: 10_000 }, (_, i) => `0193a5b2-7c4e-7d1a-9f3e-${i.toString(16).padStart(12, '0')}`);
    const body = JSON.stringify({ type: 'noop', dependsOn: ids });
    expect(body.length).toBeLessThan(4 * 1024 * 1024);
    // Unknown ids: the domain refuses them (400 INVALID_DEPENDENCIES after issue 20's merge), but never as too large or invalid.
    const res = await post('/v1/tasks', JSON.parse(body));
    expect(res.statusCode).not.toBe(413);
    expect(res.json<ProblemJson>().code).not.toBe('VALIDATION_FAILED');
  });

  it('workflow: a repeated step, an unknown step name, a cycle are 400 INVALID_WORKFLOW and write nothing; an id in a step is not allowed', async () => {
    const before = await rows();
    const repeated = await post('/v1/workflows', { steps: [{ step: 'a', type: 'noop' }, { step: 'a', type: 'noop' }] });
    expect(repeated.statusCode).toBe(400);
    expect(repeated.json<ProblemJson>()).toMatchObject({ code: 'INVALID_WORKFLOW', errors: [{ path: 'body/steps/1/step' }] });
    const unknown = await post('/v1/workflows', { steps: [{ step: 'a', type: 'noop' }, { step: 'b', type: 'noop', dependsOn: ['a', 'c'] }] });
    expect(unknown.json<ProblemJson>()).toMatchObject({ status: 400, code: 'INVALID_WORKFLOW', errors: [{ path: 'body/steps/1/dependsOn/1', message: 'c is no step of this workflow and no task id' }] });
    const cycle = await post('/v1/workflows', { steps: [{ step: 'a', type: 'noop', dependsOn: ['c'] }, { step: 'b', type: 'noop', dependsOn: ['a'] }, { step: 'c', type: 'noop', dependsOn: ['b'] }] });
    expect(cycle.json<ProblemJson>()).toMatchObject({ status: 400, code: 'INVALID_WORKFLOW' });
    expect(cycle.json<ProblemJson>().errors?.map((e) => e.path)).toEqual(['body/steps/0/dependsOn', 'body/steps/1/dependsOn', 'body/steps/2/dependsOn']);
    const withId = await post('/v1/workflows', { steps: [{ step: 'a', type: 'noop', id: '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11' }] });
    expect(withId.json<ProblemJson>()).toMatchObject({ status: 400, code: 'VALIDATION_FAILED', errors: [{ path: 'body/steps/0/id' }] });
    const empty = await post('/v1/workflows', { steps: [] });
    expect(empty.statusCode).toBe(400);
    expect(await rows()).toBe(before);
  });

  it('graph: an unknown task is 404, a bad id 400', async () => {
    expect((await get('/v1/tasks/0193a5b2-0000-7000-8000-000000000000/graph')).json<ProblemJson>()).toMatchObject({ status: 404, code: 'TASK_NOT_FOUND' });
    expect((await get('/v1/tasks/nope/graph')).statusCode).toBe(400);
  });
});

describe('workflows and graphs (need the domain and migration 13 of issue 20)', () => {
  it('submits a fog workflow: names, dependencies by step, placement; the first step queued, the others waiting', async () => {
    const res = await post('/v1/workflows', FOG);
    expect(res.statusCode).toBe(202);
    const { steps } = res.json<{ steps: Record<string, TaskJson> }>();
    expect(Object.keys(steps)).toEqual(['fetch', 'denoise', 'classify', 'aggregate']);
    const { fetch, denoise, classify, aggregate } = steps;
    expect(fetch).toMatchObject({ name: 'scan-1/fetch', state: 'queued', tier: 'light', placement: { zone: 'site-a', labels: { sensor: 'lidar' } }, fallbackAfterMs: 600000 });
    expect(fetch?.dependsOn).toBeUndefined();
    expect(denoise).toMatchObject({ name: 'scan-1/denoise', state: 'waiting', tier: 'medium', dependsOn: [fetch?.id], onDependencyFailure: 'cancel' });
    expect(classify).toMatchObject({ state: 'waiting', onDependencyFailure: 'run' });
    expect(aggregate).toMatchObject({ state: 'waiting', tier: 'heavy', dependsOn: [denoise?.id, classify?.id], placement: { zone: 'region-1' } });
    expect((await get(`/v1/tasks/${aggregate?.id}`)).json<TaskJson>().state).toBe('waiting');
  });

  it('the same Idempotency-Key gives the same tasks (200); a changed step is 409 TASK_ID_CONFLICT; another tenant gets its own ids', async () => {
    const first = await post('/v1/workflows', FOG, ACME, { 'idempotency-key': 'scan-2' });
    expect(first.statusCode).toBe(202);
    const again = await post('/v1/workflows', FOG, ACME, { 'idempotency-key': 'scan-2' });
    expect(again.statusCode).toBe(200);
    const ids = (r: typeof first) => Object.values(r.json<{ steps: Record<string, TaskJson> }>().steps).map((t) => t.id);
    expect(ids(again)).toEqual(ids(first));
    const changed = await post('/v1/workflows', { ...FOG, steps: FOG.steps.map((s) => (s.step === 'denoise' ? { ...s, type: 'denoise-v2' } : s)) }, ACME, { 'idempotency-key': 'scan-2' });
    expect(changed.json<ProblemJson>()).toMatchObject({ status: 409, code: 'TASK_ID_CONFLICT' });
    const other = await post('/v1/workflows', FOG, GLOBEX, { 'idempotency-key': 'scan-2' });
    expect(other.statusCode).toBe(202);
    expect(ids(other).some((id) => ids(first).includes(id))).toBe(false);
  });

  it('a step may depend on an existing task by id; an unknown or foreign id is 400 INVALID_DEPENDENCIES on the step, nothing written', async () => {
    const base = (await post('/v1/tasks', { type: 'noop' })).json<TaskJson>();
    const ok = await post('/v1/workflows', { steps: [{ step: 'after', type: 'noop', dependsOn: [base.id] }] });
    expect(ok.statusCode).toBe(202);
    expect(ok.json<{ steps: Record<string, TaskJson> }>().steps.after).toMatchObject({ name: 'after', dependsOn: [base.id] });
    const foreign = (await post('/v1/tasks', { type: 'noop' }, GLOBEX)).json<TaskJson>();
    const before = await rows();
    const bad = await post('/v1/workflows', { steps: [{ step: 'first', type: 'noop' }, { step: 'second', type: 'noop', dependsOn: ['first', foreign.id] }] });
    expect(bad.json<ProblemJson>()).toMatchObject({ status: 400, code: 'INVALID_DEPENDENCIES' });
    expect(bad.json<ProblemJson>().errors?.[0]?.path).toMatch(/^body\/steps\/1/);
    expect(await rows()).toBe(before);
  });

  it('GET /v1/tasks/{id}/graph: ancestors and descendants with depths and the edges between them; another tenant gets 404', async () => {
    const { steps } = (await post('/v1/workflows', FOG)).json<{ steps: Record<string, TaskJson> }>();
    const id = (s: string) => steps[s]!.id;
    const graph = (await get(`/v1/tasks/${id('denoise')}/graph`)).json<GraphJson>();
    expect(graph.taskId).toBe(id('denoise'));
    expect(graph.nodes.map((n) => [n.name, n.relation, n.depth, n.state])).toEqual([
      ['scan-1/denoise', 'self', 0, 'waiting'],
      ['scan-1/fetch', 'ancestor', 1, 'queued'],
      ['scan-1/aggregate', 'descendant', 1, 'waiting'],
    ]);
    expect(graph.edges).toEqual(expect.arrayContaining([{ from: id('fetch'), to: id('denoise') }, { from: id('denoise'), to: id('aggregate') }]));
    expect(graph.edges).toHaveLength(2);
    expect(graph.truncated).toBe(false);
    const fromRoot = (await get(`/v1/tasks/${id('fetch')}/graph`)).json<GraphJson>();
    expect(fromRoot.nodes[0]).toMatchObject({ name: 'scan-1/fetch', relation: 'self', depth: 0 });
    expect(fromRoot.nodes.map((n) => `${n.name}:${n.relation}:${n.depth}`).sort()).toEqual([
      'scan-1/aggregate:descendant:2',
      'scan-1/classify:descendant:1',
      'scan-1/denoise:descendant:1',
      'scan-1/fetch:self:0',
    ]);
    expect(fromRoot.nodes.map((n) => n.depth)).toEqual([0, 1, 1, 2]);
    expect(fromRoot.nodes.find((n) => n.relation === 'self')?.placement).toEqual({ zone: 'site-a', labels: { sensor: 'lidar' } });
    expect(fromRoot.edges).toHaveLength(4);
    expect((await get(`/v1/tasks/${id('fetch')}/graph`, GLOBEX)).json<ProblemJson>()).toMatchObject({ status: 404, code: 'TASK_NOT_FOUND' });
  });

  it('a graph larger than the bound is cut to the nearest nodes, truncated', async () => {
    const root = (await post('/v1/tasks', { type: 'noop' })).json<TaskJson>();
    const children = (await post('/v1/tasks/batch', { tasks: Array.from({ length: 20 }, () => ({ type: 'noop', dependsOn: [root.id] })) })).json<{ tasks: TaskJson[] }>().tasks;
    const grandchild = (await post('/v1/tasks', { type: 'noop', dependsOn: children.map((c) => c.id) })).json<TaskJson>();
    const full = await getTaskGraph(tdb.db, 'acme', root.id, { maxNodes: 10_000 });
    expect(full?.nodes).toHaveLength(22);
    expect(full?.nodes.at(-1)).toMatchObject({ taskId: grandchild.id, relation: 'descendant', depth: 2 });
    expect(full?.edges).toHaveLength(40);
    const cut = await getTaskGraph(tdb.db, 'acme', root.id, { maxNodes: 5 });
    expect(cut?.truncated).toBe(true);
    expect(cut?.nodes).toHaveLength(5);
    expect(cut?.nodes.slice(1).every((n) => n.depth === 1)).toBe(true);
    expect(cut?.edges).toHaveLength(4);
    // From the fan-in: its 20 parents at depth 1 and the root at depth 2 (reached by 20 paths, listed once).
    const up = await getTaskGraph(tdb.db, 'acme', grandchild.id, { maxNodes: 10_000 });
    expect(up?.nodes.filter((n) => n.relation === 'ancestor')).toHaveLength(21);
    expect(up?.nodes.find((n) => n.taskId === root.id)?.depth).toBe(2);
    // Edges are bounded too (a dense DAG has far more edges than nodes): all nodes, the first edges, truncated.
    expect(full?.truncated).toBe(false);
    const fewEdges = await getTaskGraph(tdb.db, 'acme', root.id, { maxNodes: 10_000, maxEdges: 10 });
    expect(fewEdges?.truncated).toBe(true);
    expect(fewEdges?.edges).toHaveLength(10);
  });

  it('a placement no live node of the tier matches is accepted with a warning', async () => {
    live = [{ tiers: new Set(['light']), zone: 'site-b', labels: {} }];
    try {
      const res = await post('/v1/tasks', { type: 'noop', placement: { zone: 'site-a' } });
      expect(res.statusCode).toBe(202);
      expect(res.json<TaskJson>().warnings).toEqual(['no live fog node of tier light matches placement zone site-a; the task waits until one joins']);
      const matched = await post('/v1/tasks', { type: 'noop', placement: { zone: 'site-b' } });
      expect(matched.json<TaskJson>().warnings).toBeUndefined();
      const batch = await post('/v1/tasks/batch', { tasks: [{ type: 'noop', placement: { zone: 'site-c' } }, { type: 'noop' }] });
      expect(batch.json<{ tasks: TaskJson[] }>().tasks.map((t) => t.warnings?.length ?? 0)).toEqual([1, 0]);
    } finally {
      live = null;
    }
  });
});

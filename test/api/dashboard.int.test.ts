import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { parseApiKeys } from '../../src/infra/config.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTaskService, executeTaskCommands, type TaskService } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

/** GET /v1/stats and the audit questions over HTTP: numbers and answers of the caller's tenant only; bad parameters are 400. */
const ACME = 'acme-submitter-key-0123456789';
const ACME_OP = 'acme-operator-key-0123456789';
const ACME_AUDIT = 'acme-auditor-key-0123456789';
const GLOBEX = 'globex-submitter-key-012345678';
const GLOBEX_AUDIT = 'globex-auditor-key-0123456789';

let tdb: TestDatabase;
let app: FastifyInstance;
let tasks: TaskService;
const names = topologyNames('dash_');
const acmeTasks: string[] = [];
let globexTask: string;

const get = (url: string, key: string) => app.inject({ method: 'GET', url, headers: { 'x-api-key': key } });

async function run(taskId: string, outcome: 'succeed' | 'cancel') {
  const now = new Date().toISOString();
  const started = new Date(Date.now() - 40).toISOString();
  const commands =
    outcome === 'succeed'
      ? [
          { type: 'StartTask' as const, data: { attempt: 1, nodeId: 'n1', now: started, startedAt: started } },
          { type: 'SucceedTask' as const, data: { attempt: 1, nodeId: 'n1', output: null, durationMs: 25, startedAt: started, now } },
        ]
      : [{ type: 'CancelTask' as const, data: { actor: 'test', reason: 'not needed', now } }];
  for (const command of commands) await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId, command, metadata: { actor: 'test' } }], names));
}

beforeAll(async () => {
  tdb = await createTestDatabase('dash');
  tasks = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });
  app = await buildApi({
    apiKeys: parseApiKeys(`acme:submitter:${ACME},acme:operator:${ACME_OP},acme:auditor:${ACME_AUDIT},globex:submitter:${GLOBEX},globex:auditor:${GLOBEX_AUDIT}`),
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: tdb.db,
    tasks,
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [],
  });
  for (let i = 0; i < 5; i++) {
    const res = await app.inject({ method: 'POST', url: '/v1/tasks', headers: { 'x-api-key': ACME }, payload: { type: 'noop', priority: i < 3 ? 'high' : 'normal' } });
    acmeTasks.push(res.json<{ id: string }>().id);
  }
  globexTask = (await app.inject({ method: 'POST', url: '/v1/tasks', headers: { 'x-api-key': GLOBEX }, payload: { type: 'noop' } })).json<{ id: string }>().id;
  await run(acmeTasks[0]!, 'succeed');
  await run(acmeTasks[1]!, 'succeed');
  await run(acmeTasks[2]!, 'cancel');
});

afterAll(async () => {
  await app?.close();
  await tasks?.idle();
  await tdb?.drop();
});

interface Stats {
  buckets: { at: string; submitted: number; succeeded: number; failed: number; cancelled: number; deadLettered: number }[];
  tiers: { tier: string; queueWaitP50Ms: number | null; queueWaitP95Ms: number | null; runP50Ms: number | null; runP95Ms: number | null }[];
  depth: { tier: string; priority: string; queued: number }[];
  outbox: { pending: number; lagSeconds: number };
}
const sum = (s: Stats, k: 'submitted' | 'succeeded' | 'cancelled' | 'failed') => s.buckets.reduce((n, b) => n + b[k], 0);

describe('GET /v1/stats', () => {
  it("counts the caller's tenant only: throughput buckets, p50/p95 per tier, depth per tier and priority, outbox", async () => {
    const res = await get('/v1/stats?windowSeconds=600&bucketSeconds=60', ACME);
    expect(res.statusCode, res.body).toBe(200);
    const s = res.json<Stats>();
    expect(s.buckets).toHaveLength(10);
    expect(new Date(s.buckets[9]!.at).getTime()).toBeLessThanOrEqual(Date.now());
    expect([sum(s, 'submitted'), sum(s, 'succeeded'), sum(s, 'cancelled'), sum(s, 'failed')]).toEqual([5, 2, 1, 0]);
    expect(s.tiers).toHaveLength(1);
    expect(s.tiers[0]).toMatchObject({ tier: 'light', runP50Ms: 25, runP95Ms: 25 });
    expect(s.tiers[0]!.queueWaitP50Ms).toBeGreaterThanOrEqual(0);
    expect(s.depth).toEqual([{ tier: 'light', priority: 'normal', queued: 2 }]);
    // No relay runs here: every dispatch of the tenant's tasks is still due.
    expect(s.outbox.pending).toBe(5);
    expect(s.outbox.lagSeconds).toBeGreaterThanOrEqual(0);

    const globex = (await get('/v1/stats?windowSeconds=600&bucketSeconds=60', GLOBEX)).json<Stats>();
    expect([sum(globex, 'submitted'), sum(globex, 'succeeded'), sum(globex, 'cancelled')]).toEqual([1, 0, 0]);
    expect(globex.tiers).toEqual([]);
    expect(globex.depth).toEqual([{ tier: 'light', priority: 'normal', queued: 1 }]);
    expect(globex.outbox.pending).toBe(1);
    // An auditor of the tenant may read them too.
    expect((await get('/v1/stats', ACME_AUDIT)).statusCode).toBe(200);
  });

  it('a window over 24 h, too many buckets or a stray parameter is 400 problem+json', async () => {
    for (const q of ['windowSeconds=86401', 'windowSeconds=86400&bucketSeconds=10', 'bucketSeconds=5', 'windowSeconds=abc', 'colour=red']) {
      const res = await get(`/v1/stats?${q}`, ACME);
      expect(res.statusCode, q).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.json<{ code: string }>().code).toBe('VALIDATION_FAILED');
    }
  });
});

interface Answer {
  columns: string[];
  rows: unknown[][];
  truncated: boolean;
}

describe('GET /v1/audit/queries', () => {
  it('lists the fourteen questions of docs/audit.md to operators; auditors get those that stay within a tenant; submitters none', async () => {
    const all = (await get('/v1/audit/queries', ACME_OP)).json<{ items: { name: string; operatorOnly: boolean }[] }>().items;
    expect(all).toHaveLength(14);
    const auditor = (await get('/v1/audit/queries', ACME_AUDIT)).json<{ items: { name: string }[] }>().items;
    expect(auditor.map((q) => q.name)).toEqual(all.filter((q) => !q.operatorOnly).map((q) => q.name));
    expect((await get('/v1/audit/queries', ACME)).statusCode).toBe(403);
    // Capacity (the autoscaler's decisions) is no tenant's: operators only.
    const capacity = '/v1/audit/queries/capacity-changes?since=2020-01-01T00:00:00Z&until=2100-01-01T00:00:00Z';
    const asOperator = await get(capacity, ACME_OP);
    expect(asOperator.statusCode, asOperator.body).toBe(200);
    expect(asOperator.json<Answer>().columns).toEqual(['tier', 'at', 'replicas_from', 'replicas_to', 'trigger', 'queue_depth', 'queued', 'running', 'oldest_wait', 'recorded_by']);
    expect((await get(capacity, ACME_AUDIT)).statusCode).toBe(403);
  });

  it("answers a question with its parameters, for the caller's tenant only", async () => {
    const mine = await get(`/v1/audit/queries/task-timeline?task_id=${acmeTasks[0]!}`, ACME_AUDIT);
    expect(mine.statusCode, mine.body).toBe(200);
    const answer = mine.json<Answer>();
    expect(answer.columns).toEqual(['version', 'at', 'event_type', 'attempt', 'state', 'node_id', 'actor', 'reason', 'error_message', 'trace_id']);
    expect(answer.rows.map((r) => r[2])).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskSucceeded']);
    expect(answer.truncated).toBe(false);
    // Another tenant's task: no rows, the same as a task that does not exist.
    const foreign = (await get(`/v1/audit/queries/task-timeline?task_id=${globexTask}`, ACME_AUDIT)).json<Answer>();
    expect(foreign.rows).toEqual([]);
    expect(foreign.columns).toEqual(answer.columns);
    const cancellations = (await get('/v1/audit/queries/cancellations', ACME_AUDIT)).json<Answer>();
    expect(cancellations.rows.map((r) => r[0])).toEqual([acmeTasks[2]]);
    expect((await get('/v1/audit/queries/cancellations', GLOBEX_AUDIT)).json<Answer>().rows).toEqual([]);
    // Durations come back as ISO 8601 text.
    const attempts = (await get(`/v1/audit/queries/task-attempts?task_id=${acmeTasks[0]!}`, ACME_OP)).json<Answer>();
    expect(attempts.rows[0]![attempts.columns.indexOf('run_time')]).toMatch(/^P/);
  });

  it('answers at most 1,000 rows and says it left some out', async () => {
    // 1,001 requeues of one task, written straight into the log.
    await tdb.pool.query(
      `INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data, metadata)
       SELECT $1, 'task', 1 + g, gen_random_uuid(), 'TaskRequeued', jsonb_build_object('actor', 'test', 'attempt', g + 1, 'at', now()), '{}'
         FROM generate_series(1, 1001) g`,
      [acmeTasks[4]],
    );
    const res = await get('/v1/audit/queries/requeues', ACME_AUDIT);
    expect(res.statusCode, res.body.slice(0, 300)).toBe(200);
    const answer = res.json<Answer>();
    expect(answer.rows).toHaveLength(1000);
    expect(answer.truncated).toBe(true);
    expect((await get('/v1/audit/queries/requeues', GLOBEX_AUDIT)).json<Answer>().rows).toEqual([]);
  });

  it('bad parameters are 400, an unknown question 404, a node-only question 403 for an auditor', async () => {
    for (const url of [
      '/v1/audit/queries/task-timeline',
      '/v1/audit/queries/task-timeline?task_id=not-a-uuid',
      `/v1/audit/queries/task-timeline?task_id=${acmeTasks[0]!}&task_id=${acmeTasks[1]!}`,
      `/v1/audit/queries/task-timeline?task_id=${acmeTasks[0]!}&colour=red`,
      '/v1/audit/queries/node-tasks-between?node_id=n1&since=yesterday&until=2030-01-01T00:00:00Z',
      '/v1/audit/queries/slowest-finished-7d?limit=0',
      '/v1/audit/queries/Bad%20Name',
    ]) {
      const res = await get(url, ACME_AUDIT);
      expect(res.statusCode, `${url}: ${res.body}`).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.json<{ code: string }>().code).toBe('VALIDATION_FAILED');
    }
    const unknown = await get('/v1/audit/queries/no-such-question', ACME_AUDIT);
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json<{ code: string }>().code).toBe('AUDIT_QUERY_NOT_FOUND');
    expect((await get('/v1/audit/queries/nodes-lost', ACME_AUDIT)).statusCode).toBe(403);
    expect((await get('/v1/audit/queries/nodes-lost', ACME_OP)).statusCode).toBe(200);
    const between = await get('/v1/audit/queries/node-tasks-between?node_id=n1&since=2020-01-01T00:00:00Z&until=2099-01-01T00:00:00Z', ACME_AUDIT);
    expect(between.json<Answer>().rows.map((r) => r[0]).sort()).toEqual([acmeTasks[0], acmeTasks[1]].sort());
  });
});

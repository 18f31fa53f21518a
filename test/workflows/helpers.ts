import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import { expect, inject } from 'vitest';
import { PRIORITIES } from '../../src/domain/index.js';
import { eventually } from '../helpers/database.js';
import { e2eEnv, getJson, postJson, spawnFogsched, waitReady, type Spawned } from '../helpers/processes.js';

// Shared by the workflow (issue 20) end-to-end tests: the BUILT CLI (`npm run build` first) on the
// real PostgreSQL, RabbitMQ and Redis, driven over HTTP only; SQL reads the log to check what
// HTTP cannot show (counts per stream, transaction ids, commit order).

/** The handlers module the fog nodes load (dag.step, dag.fail, dag.count). */
export const DAG_HANDLERS = fileURLToPath(new URL('./fixtures/dag-handlers.mjs', import.meta.url));

/** Short timings for every process. */
export const FAST: Record<string, string> = {
  RETRY_BASE_MS: '50',
  RELAY_POLL_INTERVAL_MS: '200',
  SCHEDULER_POLL_INTERVAL_MS: '200',
  FOG_NODE_METRICS_INTERVAL_MS: '1000',
  FOG_NODE_GRACE_MS: '1000',
};

export const TERMINAL_EVENTS = ['TaskSucceeded', 'TaskFailed', 'TaskDeadLettered', 'TaskCancelled'];
const TERMINAL_LIST = TERMINAL_EVENTS.map((t) => `'${t}'`).join(',');

export interface HistoryEvent {
  type: string;
  state: string;
  attempt: number;
  nodeId: string | null;
  actor: string | null;
  reason: string | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arbitrary JSON from the API
  error: any;
  at: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arbitrary JSON from the API
  data: any;
}

export const types = (h: HistoryEvent[]) => h.map((e) => e.type);
export const ofType = (h: HistoryEvent[], type: string) => h.filter((e) => e.type === type);

/**
 * A test's own database, queue prefix and port (dropped by `dropE2eEnvs` in afterEach), with the
 * workflow handlers module and short timings in its environment, and HTTP and SQL helpers.
 */
export async function workflowEnv(label: string, extra: Record<string, string> = {}) {
  const t = await e2eEnv(label);
  const env = { ...t.env, ...FAST, FOG_NODE_HANDLERS: DAG_HANDLERS, ...extra };
  const w = {
    ...t,
    env,
    /** Spawns `fogsched start --roles <roles>` (the first one migrates; pass '--no-migrate' to the others). */
    start: (roles: string, more: Record<string, string> = {}, args: string[] = []) => spawnFogsched(['start', '--roles', roles, ...args], { ...env, ...more }),
    /** Spawns the roles and waits until the API (one of them) is ready. */
    async startApi(roles: string, more: Record<string, string> = {}): Promise<Spawned> {
      const p = w.start(roles, more);
      await waitReady(t.port, p);
      return p;
    },
    post: (path: string, body: unknown, headers: Record<string, string> = {}) => postJson(`${t.base}${path}`, body, headers),
    get: (path: string) => getJson(`${t.base}${path}`),
    /** POST /v1/tasks; expects 202 and returns the task view. */
    async submit(body: Record<string, unknown>) {
      const res = await postJson(`${t.base}/v1/tasks`, body);
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      return res.body;
    },
    /** POST /v1/tasks/batch; expects 202 and returns the task views in request order. */
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- arbitrary JSON from the API
    async batch(tasks: Record<string, unknown>[]): Promise<any[]> {
      const res = await postJson(`${t.base}/v1/tasks/batch`, { tasks });
      expect(res.status, JSON.stringify(res.body).slice(0, 2000)).toBe(202);
      return res.body.tasks;
    },
    async history(id: string): Promise<HistoryEvent[]> {
      return (await getJson(`${t.base}/v1/tasks/${id}/history`)).events as HistoryEvent[];
    },
    /** Waits until the task is in one of `states` (a terminal one by default); returns its view. */
    async waitState(id: string, states: string | string[] = ['succeeded', 'failed', 'cancelled'], timeoutMs = 30_000) {
      const wanted = Array.isArray(states) ? states : [states];
      return eventually(
        async () => {
          const task = await getJson(`${t.base}/v1/tasks/${id}`);
          return wanted.includes(task.state as string) ? task : null;
        },
        { timeoutMs, message: `task ${id} did not reach ${wanted.join('/')}` },
      );
    },
    /** Events of one type per stream, for the given streams (0 where none). */
    async countPerTask(ids: string[], type: string): Promise<Map<string, number>> {
      const rows = await t.q<{ stream_id: string; n: string }>(`SELECT stream_id, count(*) FILTER (WHERE type = $2) AS n FROM events WHERE stream_id = ANY($1) GROUP BY 1`, [ids, type]);
      const m = new Map(ids.map((id) => [id, 0]));
      for (const r of rows) m.set(r.stream_id, Number(r.n));
      return m;
    },
    /** Streams with more than one terminal event: must stay empty. */
    doubleTerminal: () => t.q(`SELECT stream_id, count(*) AS n FROM events WHERE type IN (${TERMINAL_LIST}) GROUP BY 1 HAVING count(*) > 1`),
    /** Tasks with more than one TaskReleased: must stay empty. */
    doubleReleased: () => t.q(`SELECT stream_id, count(*) AS n FROM events WHERE type = 'TaskReleased' GROUP BY 1 HAVING count(*) > 1`),
    /**
     * Releases not written in the transaction of the terminal event of the dependency that caused
     * them (data.dependency), or whose causation is not that dependency: must stay empty.
     */
    releasesApart: () =>
      t.q(`SELECT r.stream_id, r.data->>'dependency' AS dependency, r.metadata->>'causationId' AS causation,
                  r.transaction_id::text AS release_xid, d.transaction_id::text AS dependency_xid
             FROM events r
             LEFT JOIN events d ON d.stream_id = r.data->>'dependency' AND d.type IN (${TERMINAL_LIST})
            WHERE r.type = 'TaskReleased' AND r.data->>'dependency' IS NOT NULL
              AND (d.transaction_id IS DISTINCT FROM r.transaction_id OR r.metadata->>'causationId' IS DISTINCT FROM r.data->>'dependency')`),
    /** Starts (TaskStarted) written before the terminal event of one of the task's dependencies: must stay empty. */
    startedEarly: () =>
      t.q(`SELECT s.stream_id, d.depends_on FROM events s
             JOIN task_dependencies d ON d.task_id::text = s.stream_id
             LEFT JOIN events e ON e.stream_id = d.depends_on::text AND e.type IN (${TERMINAL_LIST})
            WHERE s.type = 'TaskStarted' AND (e.position IS NULL OR e.position > s.position)`),
  };
  return w;
}
export type WorkflowEnv = Awaited<ReturnType<typeof workflowEnv>>;

/**
 * Deletes the placement queues `<prefix>tasks.<class>.<tier>.<priority>` of these placement
 * classes (deleteTopology knows only the tier queues). Deleting a queue that does not exist is fine.
 */
export async function deletePlacementQueues(prefix: string, classes: string[]): Promise<void> {
  const connection = await amqp.connect(inject('amqpUrl'));
  connection.on('error', () => {});
  try {
    let channel = await connection.createChannel();
    channel.on('error', () => {});
    for (const c of classes)
      for (const tier of ['light', 'medium', 'heavy'])
        for (const priority of PRIORITIES) {
          try {
            await channel.deleteQueue(`${prefix}tasks.${c}.${tier}.${priority}`);
          } catch {
            channel = await connection.createChannel();
            channel.on('error', () => {});
          }
        }
  } finally {
    await connection.close().catch(() => {});
  }
}

/** The queue-name class of a placement, by the domain's own function (src/domain/policy.ts). */
export async function placementClassOf(placement: { zone?: string; labels?: Record<string, string> }): Promise<string | null> {
  const policy = (await import('../../src/domain/policy.js')) as { placementClass?: (p: unknown) => string | null };
  if (!policy.placementClass) throw new Error('src/domain/policy.ts has no placementClass');
  return policy.placementClass(placement);
}

import pg from 'pg';
import type { Metrics } from './fogsched.js';
import type { Scenario, Settings } from './settings.js';
import { closedLoop, createDatabase, dbQuery, dropDatabase, latencySummary, openLoop, sleep, suffix } from './util.js';

type Payload = { i: number; t: number };
type Handler = (p: Payload) => void;

/** One fresh store (database or Redis prefix) of a peer, with the calls the scenarios need. */
interface PeerStore {
  addOne(p: Payload): Promise<unknown>;
  addMany(ps: Payload[]): Promise<unknown>;
  /** Starts workers (concurrency 50) calling `handler` at the start of each job. */
  startWorkers(handler: Handler): Promise<void>;
  /** Jobs completed so far (as the peer's store says). */
  completed(total: number): Promise<number>;
  cleanup(): Promise<void>;
}

export interface PeerVariant {
  readonly system: string;
  readonly peer: string;
  readonly settings: string;
  open(s: Settings): Promise<PeerStore>;
}

const TASK = 'bench';

async function freshDb(label: string): Promise<{ name: string; url: string }> {
  const name = `${label}_bench_${suffix()}`;
  return { name, url: await createDatabase(name) };
}

function graphile(tuned: boolean): PeerVariant {
  const preset = tuned ? { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 250, failJobBatchDelay: 250 } } : undefined;
  return {
    system: tuned ? 'graphile-worker (tuned)' : 'graphile-worker',
    peer: 'graphile-worker',
    settings: tuned
      ? 'concurrency 50, pollInterval default (2 s, LISTEN/NOTIFY), preset.worker.localQueue.size 500, completeJobBatchDelay 250 ms, failJobBatchDelay 250 ms (docs: performance#batching), maxPoolSize default 10'
      : 'concurrency 50, every other option default (pollInterval 2 s + LISTEN/NOTIFY, no local queue, maxPoolSize 10)',
    async open(s) {
      const gw = await import('graphile-worker');
      const logger = new gw.Logger(() => () => {});
      const db = await freshDb('graphile');
      // Our own pool with an error listener: dropping the database must not crash the bench.
      const pgPool = new pg.Pool({ connectionString: db.url, max: 10 });
      pgPool.on('error', () => {});
      pgPool.on('connect', (c) => c.on('error', () => {}));
      let runner: Awaited<ReturnType<typeof gw.run>> | undefined;
      let utils: Awaited<ReturnType<typeof gw.makeWorkerUtils>> | undefined;
      try {
        await gw.runMigrations({ pgPool, logger });
        utils = await gw.makeWorkerUtils({ pgPool, logger });
      } catch (error) {
        await pgPool.end().catch(() => {});
        await dropDatabase(db.name);
        throw error;
      }
      const u = utils;
      return {
        addOne: (p) => u.addJob(TASK, p),
        addMany: (ps) => u.addJobs(ps.map((p) => ({ identifier: TASK, payload: p }))),
        async startWorkers(handler) {
          runner = await gw.run({
            pgPool,
            concurrency: s.concurrency,
            noHandleSignals: true,
            logger,
            taskList: { [TASK]: async (payload) => handler(payload as Payload) },
            ...(preset ? { preset } : {}),
          });
        },
        async completed(total) {
          const r = await dbQuery<{ n: string }>(db.url, 'SELECT count(*) AS n FROM graphile_worker._private_jobs');
          return total - Number(r.rows[0]?.n ?? 0);
        },
        async cleanup() {
          await runner?.stop().catch(() => {});
          await Promise.resolve(u.release()).catch(() => {});
          await pgPool.end().catch(() => {});
          await dropDatabase(db.name);
        },
      };
    },
  };
}

function pgBoss(tuned: boolean): PeerVariant {
  // pg-boss 10 waits pollingIntervalSeconds between fetches even when it found work, so throughput is
  // about loops × batchSize / interval: defaults give 50 × 1 / 2 s = 25 jobs/s.
  const loops = tuned ? 5 : 50;
  const workOptions = tuned ? { batchSize: 100, pollingIntervalSeconds: 0.5 } : {};
  return {
    system: tuned ? 'pg-boss (tuned)' : 'pg-boss',
    peer: 'pg-boss',
    settings: tuned
      ? '5 work() loops × batchSize 100, pollingIntervalSeconds 0.5 (the minimum), pool max default 10; handler runs a batch sequentially'
      : '50 work() loops × batchSize 1 (default), pollingIntervalSeconds 2 (default), pool max default 10',
    async open() {
      const { default: PgBoss } = await import('pg-boss');
      const db = await freshDb('pgboss');
      const boss = new PgBoss({ connectionString: db.url });
      boss.on('error', () => {});
      try {
        await boss.start();
        await boss.createQueue(TASK);
      } catch (error) {
        await boss.stop({ graceful: false }).catch(() => {});
        await dropDatabase(db.name);
        throw error;
      }
      return {
        addOne: (p) => boss.send(TASK, p),
        addMany: (ps) => boss.insert(ps.map((p) => ({ name: TASK, data: p }))),
        async startWorkers(handler) {
          for (let k = 0; k < loops; k++) {
            await boss.work<Payload>(TASK, workOptions, async (jobs) => {
              for (const j of jobs) handler(j.data);
            });
          }
        },
        async completed() {
          const r = await dbQuery<{ n: string }>(db.url, `SELECT count(*) AS n FROM pgboss.job WHERE name = $1 AND state = 'completed'`, [TASK]);
          return Number(r.rows[0]?.n ?? 0);
        },
        async cleanup() {
          await boss.stop({ graceful: false, wait: true, timeout: 2000 }).catch(() => {});
          await dropDatabase(db.name);
        },
      };
    },
  };
}

function bullmq(): PeerVariant {
  return {
    system: 'bullmq',
    peer: 'bullmq',
    settings: 'Worker concurrency 50, every other option default (completed jobs kept), own key prefix per scenario',
    async open(s) {
      const { Queue, Worker } = await import('bullmq');
      const url = new URL(process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379');
      const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
      const prefix = `bench${suffix()}`;
      const queue = new Queue(TASK, { connection, prefix });
      queue.on('error', () => {});
      await queue.waitUntilReady();
      let worker: InstanceType<typeof Worker> | undefined;
      return {
        addOne: (p) => queue.add(TASK, p),
        addMany: (ps) => queue.addBulk(ps.map((p) => ({ name: TASK, data: p }))),
        async startWorkers(handler) {
          worker = new Worker(TASK, async (job) => handler(job.data as Payload), { connection, prefix, concurrency: s.concurrency });
          worker.on('error', () => {});
          await worker.waitUntilReady();
        },
        completed: () => queue.getCompletedCount(),
        async cleanup() {
          await worker?.close(true).catch(() => {});
          await queue.obliterate({ force: true }).catch(() => {});
          await queue.close().catch(() => {});
        },
      };
    },
  };
}

export function peerVariants(peers: readonly string[]): PeerVariant[] {
  const list: PeerVariant[] = [];
  if (peers.includes('graphile-worker')) list.push(graphile(false), graphile(true));
  if (peers.includes('pg-boss')) list.push(pgBoss(false), pgBoss(true));
  if (peers.includes('bullmq')) list.push(bullmq());
  return list;
}

/**
 * Polls `count()` every 50 ms until it reaches `target`; `n0` is the count at `t0`. Cut short at
 * `s.timeoutMs` after `t0`, or sooner: once `s.earlyCutMs` have passed and the rate since `t0`
 * would only get there after `s.timeoutMs` (pg-boss at its defaults, 25 jobs/s, would take 800 s
 * to drain 20,000).
 */
async function waitOrCut(
  count: () => Promise<number>,
  target: number,
  t0: number,
  n0: number,
  s: Settings,
): Promise<{ ms: number; n: number; cutShort: boolean }> {
  for (;;) {
    const n = await count();
    const ms = performance.now() - t0;
    if (n >= target) return { ms, n, cutShort: false };
    const projectedMs = n > n0 ? ms + ((target - n) * ms) / (n - n0) : Infinity;
    if (ms >= s.timeoutMs || (ms >= s.earlyCutMs && projectedMs > s.timeoutMs)) return { ms, n, cutShort: true };
    await sleep(50);
  }
}

export const PEER_SCENARIOS: readonly Scenario[] = ['submit-single', 'submit-batch', 'drain', 'overlap', 'latency', 'fan-in'];

/**
 * Why a peer has no figure for fan-in: the installed versions have no dependencies between jobs
 * (checked in their type definitions: pg-boss 10 has no flow(), graphile-worker 0.17 only named
 * queues and job keys). BullMQ runs it with FlowProducer.
 */
const NO_FAN_IN: Record<string, string> = {
  'pg-boss': 'no dependencies API in pg-boss 10.x',
  'graphile-worker': 'no job dependencies API in graphile-worker 0.17',
};

/**
 * BullMQ's fan-out/fan-in: one FlowProducer.add of a parent job with `fanInChildren` children
 * (the parent runs once all of them completed), a child Worker at concurrency 50 and a parent
 * Worker that reads its children's return values (job.getChildrenValues), as fogsched's fan-in
 * gets its dependencies' outputs. Timed from the add until the parent completed.
 */
async function bullmqFanIn(s: Settings): Promise<Metrics> {
  const { FlowProducer, Queue, Worker } = await import('bullmq');
  const url = new URL(process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379');
  const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
  const prefix = `bench${suffix()}`;
  const childQueue = new Queue('bench-child', { connection, prefix });
  const parentQueue = new Queue('bench-fan-in', { connection, prefix });
  const flow = new FlowProducer({ connection, prefix });
  const workers: InstanceType<typeof Worker>[] = [];
  for (const q of [childQueue, parentQueue]) q.on('error', () => {});
  flow.on('error', () => {});
  try {
    await Promise.all([childQueue.waitUntilReady(), parentQueue.waitUntilReady(), flow.waitUntilReady()]);
    workers.push(
      new Worker('bench-child', async (): Promise<unknown> => null, { connection, prefix, concurrency: s.concurrency }),
      new Worker('bench-fan-in', async (job) => Object.keys(await job.getChildrenValues()).length, { connection, prefix, concurrency: 1 }),
    );
    for (const w of workers) {
      w.on('error', () => {});
      await w.waitUntilReady();
    }
    const n = s.fanInChildren;
    const t0 = performance.now();
    const tree = await flow.add({ name: 'fan-in', queueName: 'bench-fan-in', data: {}, children: Array.from({ length: n }, (_, i) => ({ name: 'child', queueName: 'bench-child', data: { i } })) });
    const submitMs = performance.now() - t0;
    // Progress counts the children too, so a slow run is cut short by its rate like the drain.
    const w = await waitOrCut(async () => (await childQueue.getCompletedCount()) + (await parentQueue.getCompletedCount()), n + 1, t0, 0, s);
    if (!w.cutShort) {
      const parent = await parentQueue.getJob(tree.job.id ?? '');
      if (parent?.returnvalue !== n) throw new Error(`the parent saw ${String(parent?.returnvalue)} children values, expected ${n}`);
    }
    return { elapsedMs: w.ms, tasksPerS: (w.n / w.ms) * 1000, children: n, submitMs, ...(w.cutShort ? { cutShort: 1 } : {}) };
  } finally {
    await Promise.all(workers.map((w) => w.close(true).catch(() => {})));
    for (const q of [childQueue, parentQueue]) {
      await q.obliterate({ force: true }).catch(() => {});
      await q.close().catch(() => {});
    }
    await flow.close().catch(() => {});
  }
}

/** Runs one scenario against a fresh store of the variant. */
export async function runPeerScenario(v: PeerVariant, scenario: Scenario, s: Settings): Promise<Metrics> {
  if (scenario === 'fan-in') {
    const missing = NO_FAN_IN[v.peer];
    return missing ? { unsupported: missing } : bullmqFanIn(s);
  }
  const store = await v.open(s);
  try {
    switch (scenario) {
      case 'submit-single': {
        let i = 0;
        const r = await closedLoop(s.singleClients, s.submitSeconds, async () => {
          await store.addOne({ i: i++, t: Date.now() });
          return 1;
        });
        return { tasksPerS: (r.done / r.elapsedMs) * 1000, tasks: r.done, errors: r.errors, ...(r.firstError ? { firstError: r.firstError } : {}) };
      }
      case 'submit-batch': {
        let i = 0;
        const r = await closedLoop(s.batchClients, s.submitSeconds, async () => {
          const base = i;
          i += s.batchSize;
          await store.addMany(Array.from({ length: s.batchSize }, (_, k) => ({ i: base + k, t: Date.now() })));
          return s.batchSize;
        });
        return { tasksPerS: (r.done / r.elapsedMs) * 1000, tasks: r.done, errors: r.errors, ...(r.firstError ? { firstError: r.firstError } : {}) };
      }
      case 'drain': {
        for (let b = 0; b < s.drainN; b += s.batchSize) {
          await store.addMany(Array.from({ length: Math.min(s.batchSize, s.drainN - b) }, (_, k) => ({ i: b + k, t: 0 })));
        }
        const t0 = performance.now();
        let firstMs = NaN;
        await store.startWorkers(() => {
          if (Number.isNaN(firstMs)) firstMs = performance.now() - t0;
        });
        // Cut short: the rate until then.
        const w = await waitOrCut(() => store.completed(s.drainN), s.drainN, t0, 0, s);
        return { tasksPerS: (w.n / w.ms) * 1000, tasks: w.n, elapsedMs: w.ms, firstStartedMs: firstMs, ...(w.cutShort ? { cutShort: 1 } : {}) };
      }
      case 'overlap': {
        // Workers first, then overlapN jobs in batches by batchClients clients, as fogsched's overlap.
        await store.startWorkers(() => {});
        await sleep(200);
        const n = s.overlapN;
        const batches = Math.ceil(n / s.batchSize);
        let next = 0;
        // Jobs whose add has returned: graphile-worker's count is `added - jobs left` (it deletes a job once completed).
        let added = 0;
        const t0 = performance.now();
        const submitting = Promise.all(
          Array.from({ length: s.batchClients }, async () => {
            while (next < batches) {
              const b = next++;
              const size = Math.min(s.batchSize, n - b * s.batchSize);
              await store.addMany(Array.from({ length: size }, (_, k) => ({ i: b * s.batchSize + k, t: 0 })));
              added += size;
            }
          }),
        ).then(() => performance.now() - t0);
        const w = await waitOrCut(() => store.completed(added), n, t0, 0, s);
        const submittedMs = await submitting;
        return { tasksPerS: (w.n / w.ms) * 1000, tasks: w.n, elapsedMs: w.ms, submittedMs, ...(w.cutShort ? { cutShort: 1 } : {}) };
      }
      case 'latency': {
        const starts: number[] = [];
        await store.startWorkers((p) => starts.push(Date.now() - p.t));
        await sleep(200);
        const r = await openLoop(s.latencyRate, s.latencySeconds, async (i) => {
          await store.addOne({ i, t: Date.now() });
        });
        const ok = r.sent - r.errors;
        const w = await waitOrCut(async () => starts.length, ok, performance.now(), starts.length, s);
        // Cut short: jobs not started yet are left out, so the percentiles are a lower bound.
        return { tasks: starts.length, cutShort: w.cutShort ? 1 : 0, errors: r.errors, ...latencySummary(starts, 'start'), ...(r.firstError ? { firstError: r.firstError } : {}) };
      }
      default:
        throw new Error(`scenario ${scenario} does not apply to peers`);
    }
  } finally {
    await store.cleanup();
  }
}

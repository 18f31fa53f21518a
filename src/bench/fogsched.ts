import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { topologyOf } from '../cli/start.js';
import { loadConfig } from '../infra/config.js';
import { createPostgres, migrate } from '../infra/postgres.js';
import { rebuildProjections } from '../projections/index.js';
import { declareTopology } from '../broker/index.js';
import { SEEDED_EVENTS_PER_TASK, type Settings } from './settings.js';
import {
  AMQP_URL,
  PG_URL,
  REDIS_URL,
  adminQuery,
  closedLoop,
  createDatabase,
  dbQuery,
  dropDatabase,
  freePort,
  latencySummary,
  openLoop,
  postJson,
  rssMb,
  sampleRss,
  cpuSnapshot,
  cpuBetween,
  cpuText,
  sleep,
  spawnFogsched,
  suffix,
  waitForCount,
  waitReady,
  withDatabase,
  type Proc,
} from './util.js';

export type Metrics = Record<string, number | string>;

/** Environment of one scenario: its own database, AMQP prefix and port; `cleanup()` removes all of it. */
interface Env {
  readonly dbName: string;
  readonly dbUrl: string;
  readonly prefix: string;
  readonly port: number;
  readonly env: Record<string, string>;
  readonly procs: Proc[];
  spawn(roles: string, extraArgs?: string[], extraEnv?: Record<string, string>): Proc;
  cleanup(): Promise<void>;
}

/** Worker settings of the drain and latency scenarios: 2 fog nodes × 25 slots = 50 concurrent. */
export const WORKER_ENV = { FOG_NODE_SLOTS: '25', FOG_NODE_PREFETCH: '200' } as const;
const WORKER_ARGS = ['--fog-nodes', '2'];

/**
 * `template`: the database starts as a copy of that (already migrated) one instead of a freshly
 * migrated one.
 */
async function makeEnv(extra: Record<string, string> = {}, withDb = true, template?: string): Promise<Env> {
  const id = suffix();
  const dbName = `fogsched_bench_${id}`;
  const prefix = `bench${id}_`;
  const port = await freePort();
  const dbUrl = !withDb
    ? `postgres://root@127.0.0.1:5432/${dbName}`
    : template
      ? await cloneDatabase(template, dbName)
      : await createDatabase(dbName);
  const env: Record<string, string> = { DATABASE_URL: dbUrl, AMQP_URL, REDIS_URL, AMQP_PREFIX: prefix, REDIS_PREFIX: prefix, PORT: String(port), ...extra };
  const procs: Proc[] = [];
  try {
    if (withDb && !template) await migrate(dbUrl);
  } catch (error) {
    await dropDatabase(dbName);
    throw error;
  }
  return {
    dbName,
    dbUrl,
    prefix,
    port,
    env,
    procs,
    spawn(roles, extraArgs = [], extraEnv = {}) {
      const p = spawnFogsched(['start', '--roles', roles, ...(withDb ? ['--no-migrate'] : []), ...extraArgs], { ...env, ...extraEnv });
      procs.push(p);
      return p;
    },
    async cleanup() {
      await Promise.all(procs.map((p) => p.stop()));
      if (withDb) await dropDatabase(dbName);
      await deletePrefix(env, [`${prefix}raw`]);
    },
  };
}

/** Deletes every queue and exchange of the prefix's topology (and `extraQueues`). */
export async function deletePrefix(env: Record<string, string>, extraQueues: string[] = []): Promise<void> {
  const topo = topologyOf(loadConfig(env));
  const conn = await amqp.connect(AMQP_URL);
  conn.on('error', () => {});
  try {
    let ch = await conn.createChannel();
    const run = async (f: (c: amqp.Channel) => Promise<unknown>) => {
      try {
        await f(ch);
      } catch {
        ch = await conn.createChannel();
      }
    };
    for (const q of [...topo.queues.map((q) => q.name), ...extraQueues]) await run((c) => c.deleteQueue(q));
    for (const e of topo.exchanges) await run((c) => c.deleteExchange(e.name));
    await ch.close().catch(() => {});
  } finally {
    await conn.close().catch(() => {});
  }
}

/** A copy of database `template` named `name` (a file copy: seconds for gigabytes); its URL. */
async function cloneDatabase(template: string, name: string): Promise<string> {
  await adminQuery(`CREATE DATABASE ${name} TEMPLATE ${template} STRATEGY FILE_COPY`);
  return withDatabase(PG_URL, name);
}

async function withEnv<T>(f: (e: Env) => Promise<T>, extra: Record<string, string> = {}, withDb = true, template?: string): Promise<T> {
  const e = await makeEnv(extra, withDb, template);
  try {
    return await f(e);
  } finally {
    await e.cleanup().catch(() => {});
  }
}

async function startApi(e: Env): Promise<Proc> {
  const p = e.spawn('api');
  await waitReady(e.port, p);
  return p;
}

const noop = (i: number) => ({ type: 'noop', payload: { i } });

async function submitOne(port: number, i: number): Promise<number> {
  const res = await postJson(port, '/v1/tasks', noop(i));
  if (res.status !== 202) throw new Error(`POST /v1/tasks → ${res.status} ${res.body.slice(0, 200)}`);
  return 1;
}

async function submitBatch(port: number, n: number, base: number): Promise<number> {
  const res = await postJson(port, '/v1/tasks/batch', { tasks: Array.from({ length: n }, (_, k) => noop(base + k)) });
  if (res.status !== 202) throw new Error(`POST /v1/tasks/batch → ${res.status} ${res.body.slice(0, 200)}`);
  return n;
}

/** Succeeded tasks with seq above `afterSeq`: a range of task_current's seq index, however many older rows there are. */
const succeededCount = (dbUrl: string, afterSeq = 0) => async () =>
  Number(
    (await dbQuery<{ n: string }>(dbUrl, `SELECT count(*) AS n FROM task_current WHERE seq > $1 AND state = 'succeeded'`, [afterSeq])).rows[0]?.n ?? 0,
  );

export async function submitSingle(s: Settings): Promise<Metrics> {
  return withEnv(async (e) => {
    const api = await startApi(e);
    const rss = sampleRss(api.pid);
    let i = 0;
    const r = await closedLoop(s.singleClients, s.submitSeconds, () => submitOne(e.port, i++));
    return { tasksPerS: (r.done / r.elapsedMs) * 1000, tasks: r.done, errors: r.errors, apiPeakRssMb: rss.stop(), ...(r.firstError ? { firstError: r.firstError } : {}) };
  });
}

export async function submitBatchScenario(s: Settings): Promise<Metrics> {
  return withEnv(async (e) => {
    const api = await startApi(e);
    const rss = sampleRss(api.pid);
    let base = 0;
    const r = await closedLoop(s.batchClients, s.submitSeconds, () => {
      const b = base;
      base += s.batchSize;
      return submitBatch(e.port, s.batchSize, b);
    });
    return { tasksPerS: (r.done / r.elapsedMs) * 1000, tasks: r.done, errors: r.errors, apiPeakRssMb: rss.stop(), ...(r.firstError ? { firstError: r.firstError } : {}) };
  });
}

/** Pre-submits N tasks, then starts relay+ingest+2 fog nodes and times until all succeeded. */
export async function drain(s: Settings): Promise<Metrics> {
  return withEnv((e) => drainIn(e, s));
}

/**
 * The drain with ingest apart: relay and the 2 fog nodes in one process, two `--roles ingest`
 * replicas sharing the INGEST_LANES result lanes (issue 16: do the lanes scale?).
 */
export async function drainTwoIngest(s: Settings): Promise<Metrics> {
  return withEnv((e) => drainIn(e, s, 'two-ingest'));
}

/**
 * The way users run it: the workers run while 10,000 noop tasks (2,000 quick) are submitted in
 * batches of 500 by 4 clients; timed from the first submit until every task succeeded.
 * `single`: one `fogsched start` process with every role (what `npm start` runs, with the
 * bench's 2 fog nodes × 25 slots); `split`: the api in one process, relay + ingest + fog nodes in
 * another.
 */
export async function overlap(s: Settings, layout: 'single' | 'split'): Promise<Metrics> {
  return withEnv(async (e) => {
    const n = s.overlapN;
    if (layout === 'single') await waitReady(e.port, e.spawn('api,relay,ingest,scheduler,fog-node', WORKER_ARGS, WORKER_ENV));
    else {
      await startApi(e);
      e.spawn('relay,ingest,scheduler,fog-node', WORKER_ARGS, WORKER_ENV);
    }
    // The workers' consumers are up once the relay has published and a task ran: a warm-up task.
    await submitBatch(e.port, 1, -1);
    await waitForCount(succeededCount(e.dbUrl), 1, performance.now(), s.ownTimeoutMs);
    const warm = Number((await dbQuery<{ seq: string }>(e.dbUrl, 'SELECT coalesce(max(seq), 0) AS seq FROM task_current')).rows[0]?.seq ?? 0);
    const count = succeededCount(e.dbUrl, warm);
    const cpu0 = cpuSnapshot();
    const t0 = performance.now();
    const batches = Math.ceil(n / s.batchSize);
    let next = 0;
    let submittedMs = NaN;
    const submitting = Promise.all(
      Array.from({ length: s.batchClients }, async () => {
        while (next < batches) {
          const b = next++;
          await submitBatch(e.port, Math.min(s.batchSize, n - b * s.batchSize), b * s.batchSize);
        }
      }),
    ).then(() => (submittedMs = performance.now() - t0));
    const ms = await waitForCount(
      async () => {
        for (const p of e.procs) if (p.proc.exitCode !== null) throw new Error(`a process exited: ${p.output().slice(-2000)}`);
        return count();
      },
      n,
      t0,
      s.ownTimeoutMs,
    );
    const cpu = cpuBetween(cpu0, cpuSnapshot(), layout === 'single' ? { fogsched: e.procs[0]?.pid, bench: process.pid } : { api: e.procs[0]?.pid, workers: e.procs[1]?.pid, bench: process.pid });
    await submitting;
    return { tasksPerS: (n / ms) * 1000, tasks: n, elapsedMs: ms, submittedMs, cpuSecondsBy: cpuText(cpu) };
  });
}

export async function overlapSingle(s: Settings): Promise<Metrics> {
  return overlap(s, 'single');
}
export async function overlapSplit(s: Settings): Promise<Metrics> {
  return overlap(s, 'split');
}

/**
 * The drain with `longLogTasks` finished tasks (SEEDED_EVENTS_PER_TASK events each) already in the log, their
 * projections and their published outbox rows: does the drain slow down as the log grows?
 */
export async function drainLongLog(s: Settings): Promise<Metrics> {
  const template = await seededTemplate(s.longLogTasks, true);
  return withEnv(async (e) => ({ ...(await drainIn(e, s)), earlierEvents: s.longLogTasks * SEEDED_EVENTS_PER_TASK }), {}, true, template);
}

/** The drain in `e`, counting only the tasks it submits (seq past the tasks already there). */
async function drainIn(e: Env, s: Settings, layout: 'one' | 'two-ingest' = 'one'): Promise<Metrics> {
  const before = Number((await dbQuery<{ seq: string }>(e.dbUrl, 'SELECT coalesce(max(seq), 0) AS seq FROM task_current')).rows[0]?.seq ?? 0);
  const writesBefore = await tableWrites(e.dbUrl);
  await startApi(e);
  const batches = Math.ceil(s.drainN / s.batchSize);
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < batches) {
        const b = next++;
        await submitBatch(e.port, Math.min(s.batchSize, s.drainN - b * s.batchSize), b * s.batchSize);
      }
    }),
  );
  const count = succeededCount(e.dbUrl, before);
  const cpu0 = cpuSnapshot();
  const t0 = performance.now();
  const workers = e.spawn(layout === 'one' ? 'relay,ingest,fog-node' : 'relay,fog-node', WORKER_ARGS, WORKER_ENV);
  const ingests = layout === 'two-ingest' ? [e.spawn('ingest'), e.spawn('ingest')] : [];
  const rss = sampleRss(workers.pid);
  let firstMs = NaN;
  const ms = await waitForCount(
    async () => {
      for (const p of e.procs) if (p.proc.exitCode !== null) throw new Error(`a process exited: ${p.output().slice(-2000)}`);
      const n = await count();
      if (n > 0 && Number.isNaN(firstMs)) firstMs = performance.now() - t0;
      return n;
    },
    s.drainN,
    t0,
    s.ownTimeoutMs,
  );
  const cpu = cpuBetween(cpu0, cpuSnapshot(), { workers: workers.pid, api: e.procs[0]?.pid, ingest1: ingests[0]?.pid, ingest2: ingests[1]?.pid, bench: process.pid });
  const peak = rss.stop();
  await sleep(s.quick ? 1000 : 2000);
  const idle = rssMb(workers.pid);
  const span = await dbQuery<{ ms: number }>(e.dbUrl, `SELECT extract(epoch FROM max(finished_at) - min(started_at)) * 1000 AS ms FROM task_current WHERE seq > $1`, [before]);
  const spanMs = Number(span.rows[0]?.ms ?? NaN);
  const outbox = await dbQuery<{ attempts: string; errors: string }>(e.dbUrl, `SELECT coalesce(sum(attempts),0) AS attempts, count(last_error) AS errors FROM outbox`);
  // A backend sends its table counters to the statistics system at exit at the latest: stop the
  // processes, then count the writes of the whole submit-and-drain.
  await Promise.all(e.procs.map((p) => p.stop()));
  await sleep(1000);
  const writes = writesPer(writesBefore, await tableWrites(e.dbUrl), s.drainN);
  return {
    tasksPerS: (s.drainN / ms) * 1000,
    tasks: s.drainN,
    elapsedMs: ms,
    firstSucceededMs: firstMs,
    firstStartToLastFinishMs: spanMs,
    tasksPerSFirstStartToLastFinish: (s.drainN / spanMs) * 1000,
    workersPeakRssMb: peak,
    workersIdleRssMb: idle,
    outboxRetries: Number(outbox.rows[0]?.attempts ?? 0),
    outboxRowsWithError: Number(outbox.rows[0]?.errors ?? 0),
    rowWritesPerTask: writes.rows,
    indexEntriesPerTask: writes.indexEntries,
    rowWritesByTable: writes.byTable,
    // Where the CPU went from the workers' spawn to the last success (2 cores in all: ms × 2 / 1000 seconds).
    cpuSecondsBy: cpuText(cpu),
  };
}

interface TableWrites {
  readonly rows: number;
  readonly indexEntries: number;
}

/**
 * Row writes (inserts + updates + deletes) and index entries written, per table of the public
 * schema, from `pg_stat_user_tables`. Index entries: every insert and every update that is not
 * HOT adds one entry to each index of its table (a partial index that skips the row is counted
 * too, so this is an upper bound); deletes add none.
 */
async function tableWrites(dbUrl: string): Promise<Map<string, TableWrites>> {
  const r = await dbQuery<{ relname: string; ins: string; upd: string; del: string; hot: string; indexes: string }>(
    dbUrl,
    `SELECT s.relname, s.n_tup_ins AS ins, s.n_tup_upd AS upd, s.n_tup_del AS del, s.n_tup_hot_upd AS hot,
            (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid) AS indexes
       FROM pg_stat_user_tables s WHERE s.schemaname = 'public'`,
  );
  return new Map(
    r.rows.map((x) => {
      const [ins, upd, del, hot, indexes] = [x.ins, x.upd, x.del, x.hot, x.indexes].map(Number) as [number, number, number, number, number];
      return [x.relname, { rows: ins + upd + del, indexEntries: (ins + upd - hot) * indexes }];
    }),
  );
}

/** Writes per task between two snapshots, in total and by table (`events 4.0, outbox 2.0, ...`). */
function writesPer(before: Map<string, TableWrites>, after: Map<string, TableWrites>, tasks: number): { rows: number; indexEntries: number; byTable: string } {
  let rows = 0;
  let indexEntries = 0;
  const byTable: string[] = [];
  for (const [table, a] of after) {
    const b = before.get(table) ?? { rows: 0, indexEntries: 0 };
    const dRows = a.rows - b.rows;
    rows += dRows;
    indexEntries += a.indexEntries - b.indexEntries;
    if (dRows > 0) byTable.push(`${table} ${(dRows / tasks).toFixed(1)}`);
  }
  return { rows: rows / tasks, indexEntries: indexEntries / tasks, byTable: byTable.sort().join(', ') };
}

/** Open loop at `latencyRate`/s with every role running; latencies from task_current. */
export async function latency(s: Settings): Promise<Metrics> {
  return withEnv(async (e) => {
    const workers = e.spawn('relay,ingest,fog-node', WORKER_ARGS, WORKER_ENV);
    await startApi(e);
    await sleep(500); // let the fog nodes subscribe
    if (workers.proc.exitCode !== null) throw new Error(`workers exited: ${workers.output().slice(-2000)}`);
    const cpu0 = cpuSnapshot();
    const r = await openLoop(s.latencyRate, s.latencySeconds, async (i) => {
      await submitOne(e.port, i);
    });
    const cpu = cpuBetween(cpu0, cpuSnapshot(), { workers: workers.pid, api: e.procs[1]?.pid, bench: process.pid });
    const ok = r.sent - r.errors;
    await waitForCount(succeededCount(e.dbUrl), ok, performance.now(), s.ownTimeoutMs);
    const rows = await dbQuery<{ s: number; f: number }>(
      e.dbUrl,
      `SELECT extract(epoch FROM started_at - submitted_at) * 1000 AS s, extract(epoch FROM finished_at - submitted_at) * 1000 AS f
         FROM task_current WHERE state = 'succeeded'`,
    );
    return {
      tasks: ok,
      errors: r.errors,
      ...latencySummary(rows.rows.map((x) => Number(x.s)), 'start'),
      ...latencySummary(rows.rows.map((x) => Number(x.f)), 'done'),
      cpuSecondsBy: cpuText(cpu),
      ...(r.firstError ? { firstError: r.firstError } : {}),
    };
  });
}

/** M due outbox rows published by `--roles relay`, next to a raw amqplib confirm loop into the same queue type. */
export async function relay(s: Settings): Promise<Metrics> {
  // The task queues reject publishes beyond x-max-length (10,000 by default): make room for M.
  const maxLen = String(Math.max(10_000, s.relayM * 2));
  return withEnv(
    async (e) => {
      const config = loadConfig(e.env);
      const topo = topologyOf(config);
      const conn = await amqp.connect(AMQP_URL);
      conn.on('error', () => {});
      let rawMs: number;
      try {
        const ch = await conn.createConfirmChannel();
        await declareTopology(ch, topo);
        // The raw loop: its own quorum queue with the task queues' arguments, behind its own exchange.
        const taskQueue = topo.queues.find((q) => q.name === `${e.prefix}tasks.light.normal`);
        const rawQueue = `${e.prefix}raw`;
        await ch.assertQueue(rawQueue, { durable: true, arguments: { ...(taskQueue?.arguments ?? { 'x-queue-type': 'quorum' }) } });
        const body = Buffer.from(JSON.stringify({ taskId: 'bench', attempt: 1, type: 'noop', payload: {} }));
        const t0 = performance.now();
        for (let sent = 0; sent < s.relayM; ) {
          const n = Math.min(500, s.relayM - sent);
          for (let k = 0; k < n; k++) ch.publish('', rawQueue, body, { persistent: true, contentType: 'application/json', messageId: `m${sent + k}` });
          await ch.waitForConfirms();
          sent += n;
        }
        rawMs = performance.now() - t0;
        await ch.close();
      } finally {
        await conn.close().catch(() => {});
      }
      await dbQuery(
        e.dbUrl,
        `INSERT INTO outbox (message_id, stream_id, exchange, routing_key, headers, body)
         SELECT gen_random_uuid(), 'bench-' || g, $1, 'light.normal', '{}'::jsonb,
                jsonb_build_object('taskId', 'bench-' || g, 'attempt', 1, 'type', 'noop', 'payload', '{}'::jsonb)
           FROM generate_series(1, $2::int) g`,
        [`${e.prefix}tasks`, s.relayM],
      );
      const t0 = performance.now();
      const p = e.spawn('relay');
      const ms = await waitForCount(
        async () => {
          if (p.proc.exitCode !== null) throw new Error(`relay exited: ${p.output().slice(-2000)}`);
          return Number((await dbQuery<{ n: string }>(e.dbUrl, 'SELECT count(*) AS n FROM outbox WHERE published_at IS NOT NULL')).rows[0]?.n ?? 0);
        },
        s.relayM,
        t0,
        s.ownTimeoutMs,
      );
      // The raw loop is timed without its connect and declares; the relay's publishing window
      // likewise leaves out its process start (node, config, PostgreSQL lock, AMQP connect):
      // from its first confirmed batch to its last, over the rows after that first batch.
      const span = await dbQuery<{ ms: number; first: string }>(
        e.dbUrl,
        `SELECT extract(epoch FROM max(published_at) - min(published_at)) * 1000 AS ms,
                count(*) FILTER (WHERE published_at = (SELECT min(published_at) FROM outbox)) AS first FROM outbox`,
      );
      const windowMs = Number(span.rows[0]?.ms ?? NaN);
      const relayRate = (s.relayM / ms) * 1000;
      const windowRate = ((s.relayM - Number(span.rows[0]?.first ?? 0)) / windowMs) * 1000;
      const rawRate = (s.relayM / rawMs) * 1000;
      return { rowsPerS: relayRate, publishingRowsPerS: windowRate, rawAmqpPerS: rawRate, relayToRaw: windowRate / rawRate, rows: s.relayM, relayMs: ms, publishingMs: windowMs, rawMs };
    },
    { TASK_QUEUE_MAX_LENGTH: maxLen },
  );
}

/**
 * Fan-out/fan-in: `fanInChildren` noop children and one noop fan-in that depends on all of them,
 * with every role running. Timed from the first submit until the fan-in succeeded. Children go
 * in batches (4 clients); the last batch also carries the fan-in (a dependency may be an item of
 * the same batch), so the fan-in is submitted after every child exists.
 */
export async function fanIn(s: Settings): Promise<Metrics> {
  return withEnv(async (e) => {
    const workers = e.spawn('relay,ingest,fog-node', WORKER_ARGS, WORKER_ENV);
    await startApi(e);
    await sleep(500); // let the fog nodes subscribe
    if (workers.proc.exitCode !== null) throw new Error(`workers exited: ${workers.output().slice(-2000)}`);
    const n = s.fanInChildren;
    const children = Array.from({ length: n }, () => randomUUID());
    const fanInId = randomUUID();
    const chunks: string[][] = [];
    for (let i = 0; i < n; i += s.batchSize) chunks.push(children.slice(i, i + s.batchSize));
    const lastChunk = chunks.pop() ?? [];
    const post = async (tasks: unknown[]) => {
      const res = await postJson(e.port, '/v1/tasks/batch', { tasks });
      if (res.status !== 202) throw new Error(`POST /v1/tasks/batch → ${res.status} ${res.body.slice(0, 200)}`);
    };
    const child = (id: string) => ({ id, type: 'noop' });
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: s.batchClients }, async () => {
        while (next < chunks.length) await post((chunks[next++] ?? []).map(child));
      }),
    );
    await post([...lastChunk.map(child), { id: fanInId, type: 'noop', name: 'fan-in', dependsOn: children }]);
    const submitMs = performance.now() - t0;
    const stateOf = async () => (await dbQuery<{ state: string }>(e.dbUrl, 'SELECT state FROM task_current WHERE task_id = $1', [fanInId])).rows[0]?.state;
    const ms = await waitForCount(
      async () => {
        if (workers.proc.exitCode !== null) throw new Error(`workers exited: ${workers.output().slice(-2000)}`);
        const state = await stateOf();
        if (state === 'failed' || state === 'cancelled') throw new Error(`the fan-in ended ${state}`);
        return state === 'succeeded' ? 1 : 0;
      },
      1,
      t0,
      s.ownTimeoutMs,
    );
    const r = await dbQuery<{ children: string; lag: number; releases: string }>(
      e.dbUrl,
      `SELECT (SELECT count(*) FROM task_current WHERE task_id <> $1 AND state = 'succeeded') AS children,
              (SELECT extract(epoch FROM f.started_at - (SELECT max(finished_at) FROM task_current WHERE task_id <> $1)) * 1000
                 FROM task_current f WHERE f.task_id = $1) AS lag,
              (SELECT count(*) FROM events WHERE stream_id = $1::text AND type = 'TaskReleased') AS releases`,
      [fanInId],
    );
    const row = r.rows[0];
    if (Number(row?.children) !== n) throw new Error(`${String(row?.children)} of ${n} children succeeded`);
    if (Number(row?.releases) !== 1) throw new Error(`the fan-in was released ${String(row?.releases)} times`);
    return { elapsedMs: ms, tasksPerS: ((n + 1) / ms) * 1000, children: n, submitMs, lastChildToFanInStartMs: Number(row?.lag ?? NaN) };
  });
}

/**
 * Replays a log of 3 events per task (submitted, started, succeeded: the shape the loop
 * writes) into fresh projections, swapping them in: events/s of `rebuildProjections`, the code
 * behind `fogsched projections rebuild`, in this process.
 */
export async function rebuild(s: Settings): Promise<Metrics> {
  const template = await seededTemplate(s.rebuildTasks, false);
  return withEnv(async (e) => {
    const pg = createPostgres({ url: e.dbUrl, poolMax: 4, connectTimeoutMs: 3000, statementTimeoutMs: 0 });
    try {
      const rss = sampleRss(process.pid);
      const report = await rebuildProjections(pg);
      const peakRssMb = rss.stop();
      const expected = s.rebuildTasks * SEEDED_EVENTS_PER_TASK;
      if (report.events !== expected) throw new Error(`replayed ${report.events} events, expected ${expected}`);
      return { eventsPerS: (report.events / report.durationMs) * 1000, events: report.events, ms: report.durationMs, peakRssMb };
    } finally {
      await pg.close();
    }
  }, {}, true, template);
}

/** Seeded databases by content (`tasks:projections`), loaded once per bench run and copied for each repeat. */
const templates = new Map<string, Promise<string>>();

/**
 * The name of a migrated database holding `tasks` finished tasks (seedFinishedTasks), made on
 * first use. Each repeat starts from a copy of it (`cloneDatabase`), so a full run loads the
 * 2,000,000 events once instead of three times.
 */
function seededTemplate(tasks: number, projections: boolean): Promise<string> {
  const key = `${tasks}:${projections}`;
  let made = templates.get(key);
  if (!made) {
    made = (async () => {
      const name = `fogsched_bench_tpl_${suffix()}`;
      const url = await createDatabase(name);
      try {
        await migrate(url);
        await seedFinishedTasks(url, tasks, { projections });
        return name;
      } catch (error) {
        await dropDatabase(name);
        throw error;
      }
    })();
    made.catch(() => templates.delete(key));
    templates.set(key, made);
  }
  return made;
}

/** Drops the seeded databases made by this run. */
export async function dropTemplates(): Promise<void> {
  const names = await Promise.allSettled(templates.values());
  templates.clear();
  for (const n of names) if (n.status === 'fulfilled') await dropDatabase(n.value);
}

/** Tasks per INSERT of the seed, and the connections inserting at once. */
const SEED_CHUNK = 25_000;
const SEED_CONNECTIONS = 2;

/**
 * Loads `tasks` finished tasks into a fresh, empty database as the loop would have left them:
 * 3 events each (submitted, which queues it, started, succeeded) with their hash chains, and with
 * `projections`, their task_current row (succeeded) and the published
 * outbox row of the TaskSubmitted (on `exchange`; `tasks` is its name with the default empty
 * AMQP_PREFIX). Set-based SQL instead of the write path, so 2M
 * events load in tens of seconds: the hashes are computed by the same `event_hash` the chain
 * trigger calls (the trigger is off while loading, since it would look each predecessor up
 * again), and the projection rows are what `rebuildProjections` writes for these events.
 */
export async function seedFinishedTasks(dbUrl: string, tasks: number, opts: { projections: boolean; exchange?: string }): Promise<void> {
  await dbQuery(dbUrl, 'ALTER TABLE events DISABLE TRIGGER events_zz_chain_hash');
  let next = 0;
  await Promise.all(
    Array.from({ length: SEED_CONNECTIONS }, async () => {
      while (next < tasks) {
        const n = Math.min(SEED_CHUNK, tasks - next);
        next += n;
        await dbQuery(dbUrl, SYNTHETIC_LOG, [n]);
      }
    }),
  );
  await dbQuery(dbUrl, 'ALTER TABLE events ENABLE TRIGGER events_zz_chain_hash');
  if (opts.projections) {
    // task_history is a view of events (migration 16): nothing to load for it.
    await dbQuery(dbUrl, SEED_CURRENT);
    await dbQuery(dbUrl, SEED_OUTBOX, [opts.exchange ?? 'tasks']);
  }
  // As a log that has been there a while would be: vacuumed (hint bits and visibility map set,
  // so autovacuum does not pick the fresh rows up during the measurement) and analyzed.
  await dbQuery(dbUrl, 'VACUUM (ANALYZE)');
}

/**
 * $1 tasks' worth of lifecycle events, in the shapes the domain writes, with the hash each
 * would get from the chain trigger (OFFSET 0 keeps each step from being inlined, and so
 * recomputed, into the next).
 */
const SYNTHETIC_LOG = `
  INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, schema_version, data, metadata, recorded_at, hash)
  SELECT t.id::text, 'task', v.version, v.event_id, v.type, v.schema_version, v.data, t.metadata, t.recorded_at, v.hash
  FROM (SELECT gen_random_uuid() AS id, g, to_jsonb(clock_timestamp()) AS at, now() AS recorded_at,
               '{"tenant":"default","actor":"bench"}'::jsonb AS metadata,
               gen_random_uuid() AS e1, gen_random_uuid() AS e3, gen_random_uuid() AS e4
          FROM generate_series(1, $1::int) g OFFSET 0) t
  CROSS JOIN LATERAL (SELECT
    jsonb_build_object('task', jsonb_build_object('taskId', t.id, 'tenant', 'default', 'type', 'noop', 'payload', jsonb_build_object('i', t.g),
      'priority', 'normal', 'resources', '{"cpu":0.1,"memoryMb":64}'::jsonb, 'tier', 'light', 'maxAttempts', 3, 'timeoutMs', null, 'notBefore', null,
      'deadline', null, 'idempotencyKey', null, 'retry', null), 'at', t.at, 'attempt', 1, 'availableAt', t.at) AS d1,
    jsonb_build_object('attempt', 1, 'nodeId', 'bench-node', 'at', t.at) AS d3,
    jsonb_build_object('attempt', 1, 'nodeId', 'bench-node', 'output', null, 'durationMs', 1, 'at', t.at) AS d4
    OFFSET 0) d
  CROSS JOIN LATERAL (SELECT event_hash(NULL, t.id::text, 'task', 1, t.e1, 'TaskSubmitted', 3::smallint, d.d1, t.metadata, t.recorded_at) AS h1 OFFSET 0) h1
  CROSS JOIN LATERAL (SELECT event_hash(h1.h1, t.id::text, 'task', 2, t.e3, 'TaskStarted', 1::smallint, d.d3, t.metadata, t.recorded_at) AS h3 OFFSET 0) h3
  CROSS JOIN LATERAL (SELECT event_hash(h3.h3, t.id::text, 'task', 3, t.e4, 'TaskSucceeded', 1::smallint, d.d4, t.metadata, t.recorded_at) AS h4 OFFSET 0) h4
  CROSS JOIN LATERAL (VALUES
    (1, t.e1, 'TaskSubmitted', 3::smallint, d.d1, h1.h1),
    (2, t.e3, 'TaskStarted', 1::smallint, d.d3, h3.h3),
    (3, t.e4, 'TaskSucceeded', 1::smallint, d.d4, h4.h4)
  ) AS v(version, event_id, type, schema_version, data, hash)
  ORDER BY t.g, v.version`;

/** task_current of the seeded log: one succeeded row per task, its seq the position of its TaskSubmitted. */
const SEED_CURRENT = `
  INSERT INTO task_current (task_id, seq, tenant, type, state, tier, priority, attempt, first_attempt, max_attempts, version, spec,
                            node_id, output, last_error, failure_reason, available_at, submitted_at, started_at, finished_at, updated_at, deadline)
  SELECT s.stream_id::uuid, s.position, s.data#>>'{task,tenant}', s.data#>>'{task,type}', 'succeeded', s.data#>>'{task,tier}',
         s.data#>>'{task,priority}', 1, 1, (s.data#>>'{task,maxAttempts}')::int, 3, s.data->'task', 'bench-node', NULL, NULL, NULL,
         (s.data->>'at')::timestamptz, (s.data->>'at')::timestamptz, (s.data->>'at')::timestamptz, (s.data->>'at')::timestamptz,
         (s.data->>'at')::timestamptz, NULL
    FROM events s WHERE s.type = 'TaskSubmitted'`;

/** The outbox row each seeded TaskSubmitted wrote ($1: the tasks exchange), published. */
const SEED_OUTBOX = `
  INSERT INTO outbox (message_id, stream_id, exchange, routing_key, headers, body, created_at, available_at, published_at)
  SELECT q.event_id, q.stream_id, $1, 'light.normal', jsonb_build_object('x-task-id', c.task_id, 'x-attempt', 1),
         jsonb_build_object('taskId', c.task_id, 'attempt', 1, 'type', c.type, 'payload', c.spec->'payload', 'tenant', c.tenant, 'tier', c.tier,
                            'priority', c.priority, 'timeoutMs', null, 'deadline', null, 'availableAt', q.data->'availableAt'),
         q.recorded_at, (q.data->>'availableAt')::timestamptz, q.recorded_at
    FROM events q JOIN task_current c ON c.task_id = q.stream_id::uuid
   WHERE q.type = 'TaskSubmitted'
   ORDER BY q.position`;

/** A fog node alone (no database), idle: VmRSS after 3 s. */
export async function memory(): Promise<Metrics> {
  return withEnv(
    async (e) => {
      const p = e.spawn('fog-node');
      await sleep(3000);
      if (p.proc.exitCode !== null) throw new Error(`fog node exited: ${p.output().slice(-2000)}`);
      return { fogNodeIdleRssMb: rssMb(p.pid) };
    },
    {},
    false,
  );
}

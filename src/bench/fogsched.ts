import amqp from 'amqplib';
import { topologyOf } from '../cli/start.js';
import { loadConfig } from '../infra/config.js';
import { createPostgres, migrate } from '../infra/postgres.js';
import { rebuildProjections } from '../projections/index.js';
import { declareTopology } from '../outbox/topology.js';
import type { Settings } from './settings.js';
import {
  AMQP_URL,
  REDIS_URL,
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
  sleep,
  spawnFogsched,
  suffix,
  waitForCount,
  waitReady,
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

async function makeEnv(extra: Record<string, string> = {}, withDb = true): Promise<Env> {
  const id = suffix();
  const dbName = `fogsched_bench_${id}`;
  const prefix = `bench${id}_`;
  const port = await freePort();
  const dbUrl = withDb ? await createDatabase(dbName) : `postgres://root@127.0.0.1:5432/${dbName}`;
  const env: Record<string, string> = { DATABASE_URL: dbUrl, AMQP_URL, REDIS_URL, AMQP_PREFIX: prefix, REDIS_PREFIX: prefix, PORT: String(port), ...extra };
  const procs: Proc[] = [];
  try {
    if (withDb) await migrate(dbUrl);
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

async function withEnv<T>(f: (e: Env) => Promise<T>, extra: Record<string, string> = {}, withDb = true): Promise<T> {
  const e = await makeEnv(extra, withDb);
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

const succeededCount = (dbUrl: string) => async () =>
  Number((await dbQuery<{ n: string }>(dbUrl, `SELECT count(*) AS n FROM task_current WHERE state = 'succeeded'`)).rows[0]?.n ?? 0);

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
  return withEnv(async (e) => {
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
    const count = succeededCount(e.dbUrl);
    const t0 = performance.now();
    const workers = e.spawn('relay,ingest,fog-node', WORKER_ARGS, WORKER_ENV);
    const rss = sampleRss(workers.pid);
    let firstMs = NaN;
    const ms = await waitForCount(
      async () => {
        if (workers.proc.exitCode !== null) throw new Error(`workers exited: ${workers.output().slice(-2000)}`);
        const n = await count();
        if (n > 0 && Number.isNaN(firstMs)) firstMs = performance.now() - t0;
        return n;
      },
      s.drainN,
      t0,
      s.timeoutMs,
    );
    const peak = rss.stop();
    await sleep(s.quick ? 1000 : 2000);
    const idle = rssMb(workers.pid);
    const span = await dbQuery<{ ms: number }>(e.dbUrl, `SELECT extract(epoch FROM max(finished_at) - min(started_at)) * 1000 AS ms FROM task_current`);
    const spanMs = Number(span.rows[0]?.ms ?? NaN);
    const outbox = await dbQuery<{ attempts: string; errors: string }>(e.dbUrl, `SELECT coalesce(sum(attempts),0) AS attempts, count(last_error) AS errors FROM outbox`);
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
    };
  });
}

/** Open loop at `latencyRate`/s with every role running; latencies from task_current. */
export async function latency(s: Settings): Promise<Metrics> {
  return withEnv(async (e) => {
    const workers = e.spawn('relay,ingest,fog-node', WORKER_ARGS, WORKER_ENV);
    await startApi(e);
    await sleep(500); // let the fog nodes subscribe
    if (workers.proc.exitCode !== null) throw new Error(`workers exited: ${workers.output().slice(-2000)}`);
    const r = await openLoop(s.latencyRate, s.latencySeconds, async (i) => {
      await submitOne(e.port, i);
    });
    const ok = r.sent - r.errors;
    await waitForCount(succeededCount(e.dbUrl), ok, performance.now(), s.timeoutMs);
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
        s.timeoutMs,
      );
      const relayRate = (s.relayM / ms) * 1000;
      const rawRate = (s.relayM / rawMs) * 1000;
      return { rowsPerS: relayRate, rawAmqpPerS: rawRate, relayToRaw: relayRate / rawRate, rows: s.relayM, relayMs: ms, rawMs };
    },
    { TASK_QUEUE_MAX_LENGTH: maxLen },
  );
}

/**
 * Replays a log of 4 events per task (submitted, queued, started, succeeded: the shape the loop
 * writes) into fresh projections, swapping them in: events/s of `rebuildProjections`, the code
 * behind `fogsched projections rebuild`, in this process.
 */
export async function rebuild(s: Settings): Promise<Metrics> {
  return withEnv(async (e) => {
    const chunk = 50_000;
    for (let from = 0; from < s.rebuildTasks; from += chunk) {
      await dbQuery(e.dbUrl, SYNTHETIC_LOG, [Math.min(chunk, s.rebuildTasks - from)]);
    }
    const pg = createPostgres({ url: e.dbUrl, poolMax: 4, connectTimeoutMs: 3000, statementTimeoutMs: 0 });
    try {
      const rss = sampleRss(process.pid);
      const report = await rebuildProjections(pg);
      const peakRssMb = rss.stop();
      if (report.events !== s.rebuildTasks * 4) throw new Error(`replayed ${report.events} events, expected ${s.rebuildTasks * 4}`);
      return { eventsPerS: (report.events / report.durationMs) * 1000, events: report.events, ms: report.durationMs, peakRssMb };
    } finally {
      await pg.close();
    }
  });
}

/** $1 tasks' worth of lifecycle events, in the shapes the domain writes. */
const SYNTHETIC_LOG = `
  INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, schema_version, data, metadata)
  SELECT t.id::text, 'task', v.version, gen_random_uuid(), v.type, v.schema_version, v.data, '{"tenant":"default","actor":"bench"}'::jsonb
  FROM (SELECT gen_random_uuid() AS id, g, to_jsonb(clock_timestamp()) AS at FROM generate_series(1, $1::int) g) t
  CROSS JOIN LATERAL (VALUES
    (1, 'TaskSubmitted', 2, jsonb_build_object('task', jsonb_build_object('taskId', t.id, 'tenant', 'default', 'type', 'noop', 'payload', jsonb_build_object('i', t.g),
      'priority', 'normal', 'resources', '{"cpu":0.1,"memoryMb":64}'::jsonb, 'tier', 'light', 'maxAttempts', 3, 'timeoutMs', null, 'notBefore', null,
      'deadline', null, 'idempotencyKey', null, 'retry', null), 'at', t.at)),
    (2, 'TaskQueued', 1, jsonb_build_object('attempt', 1, 'tier', 'light', 'priority', 'normal', 'availableAt', t.at, 'at', t.at)),
    (3, 'TaskStarted', 1, jsonb_build_object('attempt', 1, 'nodeId', 'bench-node', 'at', t.at)),
    (4, 'TaskSucceeded', 1, jsonb_build_object('attempt', 1, 'nodeId', 'bench-node', 'output', null, 'durationMs', 1, 'at', t.at))
  ) AS v(version, type, schema_version, data)
  ORDER BY t.g, v.version`;

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

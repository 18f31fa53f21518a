import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { topologyNames } from '../broker/index.js';
import { checkHistory, toolViolations, type Violation } from './checker.js';
import { runClient } from './client.js';
import { loadHistory, openWork, progressProbe } from './history.js';
import { FAULT_KINDS, runNemesis, type FaultKind, type FaultRecord } from './nemesis.js';
import { networkNamespacesUnavailable, rabbitClusterUnavailable, startRabbitCluster, type RabbitCluster } from './rabbit-cluster.js';
import { formatReport, recoveries, throughput } from './report.js';
import { ownServicesUnavailable, startOwnPostgres, startOwnRedis, type OwnPostgres, type OwnRedis } from './services.js';
import { startResultSpy, type ResultSpy } from './spy.js';
import { createSupervisor, runFogsched, waitApiReady, type ProcessSpec, type Supervisor } from './system.js';
import { canConnect, freePort, onHardExit, seededRandom, sleep } from './util.js';

export interface ChaosOptions {
  readonly tasks: number;
  /** Seconds of faults (the client submits during the warm-up and these). */
  readonly durationS: number;
  readonly seed: string;
  /** Shorter fault holds (Redis down 8 s instead of 30 s, ...). */
  readonly quick: boolean;
  /** false: no nemesis at all (a fault-free run must have no violation either). */
  readonly faults: boolean;
  /** How long the system gets after the last fault to finish every task and publish the outbox. */
  readonly recoveryS: number;
  readonly warmupS: number;
  /** Where the run's records go (client.jsonl, results.jsonl, faults.json, violations.json, report.txt, logs/). */
  readonly outDir: string;
  readonly log: (line: string) => void;
  readonly signal?: AbortSignal;
}

export interface ChaosResult {
  readonly report: string;
  readonly violations: readonly Violation[];
  readonly tasks: number;
  readonly faults: readonly FaultRecord[];
}

/** Intervals short enough that recovery is a matter of seconds (heartbeat TTL 4 s, coordinator every second). */
export const CHAOS_ENV: Readonly<Record<string, string>> = {
  LOG_LEVEL: 'warn',
  PG_STATEMENT_TIMEOUT_MS: '3000',
  RELAY_POLL_INTERVAL_MS: '200',
  RETRY_BASE_MS: '200',
  RETRY_FACTOR: '2',
  RETRY_MAX_MS: '2000',
  COORDINATOR_INTERVAL_MS: '1000',
  COORDINATOR_LEASE_MS: '3000',
  BROKER_HEARTBEAT_TTL_MS: '5000',
  FOG_HEARTBEAT_INTERVAL_MS: '1000',
  FOG_HEARTBEAT_TTL_MS: '4000',
  FOG_NODE_GRACE_MS: '2000',
  FOG_NODE_SLOTS: '8',
  SCHEDULER_POLL_INTERVAL_MS: '250',
  // The running lease of issue 15 (scheduler role); a build without it ignores these.
  RUNNING_LEASE_MS: '20000',
  RUNNING_LEASE_GRACE_MS: '5000',
  // The chaos handlers (an output PostgreSQL cannot store), beside the built-ins.
  FOG_NODE_HANDLERS: fileURLToPath(new URL('./handlers.js', import.meta.url)),
};

/** Fog-node processes per tier. */
const FOG_NODES: readonly { tier: string; count: number }[] = [
  { tier: 'light', count: 2 },
  { tier: 'medium', count: 1 },
  { tier: 'heavy', count: 1 },
];

/** Why the chaos run cannot run on this machine, or null. */
export function chaosUnavailable(): string | null {
  return ownServicesUnavailable() ?? rabbitClusterUnavailable();
}

export async function runChaos(opts: ChaosOptions): Promise<ChaosResult> {
  const { log } = opts;
  const unavailable = chaosUnavailable();
  if (unavailable) throw new Error(`chaos cannot run here: ${unavailable}`);
  mkdirSync(join(opts.outDir, 'logs'), { recursive: true });
  // Separate streams: the task mix stays the same whatever the nemesis draws.
  const clientRandom = seededRandom(`${opts.seed}/client`);
  const nemesisRandom = seededRandom(`${opts.seed}/nemesis`);

  let kinds: FaultKind[] = opts.faults ? [...FAULT_KINDS] : [];
  const skippedFaults: { kind: FaultKind; why: string }[] = [];
  const noNamespaces = kinds.includes('partition-broker') ? networkNamespacesUnavailable() : null;
  if (noNamespaces) {
    kinds = kinds.filter((k) => k !== 'partition-broker');
    skippedFaults.push({ kind: 'partition-broker', why: `no network namespaces here (${noNamespaces})` });
    log(`partition-broker faults skipped: ${noNamespaces}`);
  }

  let cluster: RabbitCluster | undefined;
  let postgres: OwnPostgres | undefined;
  let redis: OwnRedis | undefined;
  let supervisor: Supervisor | undefined;
  let spy: ResultSpy | undefined;
  try {
    const t0 = Date.now();
    // Each is kept as soon as it is up, so one failing to start does not leak the others.
    const starting = await Promise.allSettled([
      startRabbitCluster({
        network: kinds.includes('partition-broker') ? 'namespaces' : 'loopback',
        log,
        // As deployed (deploy/swarm/rabbitmq.conf): the minority side of a partition pauses.
        extraConf: ['cluster_partition_handling = pause_minority'],
        keepLogsIn: join(opts.outDir, 'logs', 'rabbitmq'),
      }).then((c) => {
        cluster = c;
        onHardExit(() => c.killNow());
        return c;
      }),
      startOwnPostgres({ log }).then((p) => (postgres = p)),
      startOwnRedis({ dir: opts.outDir, log }).then((r) => (redis = r)),
    ]);
    const failed = starting.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (!cluster || !postgres || !redis) throw new Error('a service did not start');
    log(`services up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const databaseUrl = postgres.url('fogsched');
    const base: Record<string, string> = { ...CHAOS_ENV, DATABASE_URL: databaseUrl, REDIS_URL: redis.url, COORDINATOR_BROKERS: cluster.brokersEnv, AMQP_URL: cluster.urlList };
    const migrated = await runFogsched(['migrate'], base, 120_000);
    if (migrated.code !== 0) throw new Error(`fogsched migrate failed: ${migrated.output}`);

    spy = await startResultSpy({ urls: cluster.urls, resultsExchange: topologyNames('').results, recordPath: join(opts.outDir, 'results.jsonl'), log });

    // --- the system: every role twice, fog nodes of each tier, each its own process ---------
    supervisor = createSupervisor({ logDir: join(opts.outDir, 'logs'), restartDelayMs: 1000, log });
    const urls = cluster.urls;
    let n = 0;
    /** Each process lists the brokers starting at a different one, so connections spread over the cluster. */
    const envFor = (extra: Record<string, string> = {}) => {
      const k = n++ % urls.length;
      return { ...base, AMQP_URL: [...urls.slice(k), ...urls.slice(0, k)].join(','), ...extra };
    };
    const specs: ProcessSpec[] = [];
    for (const role of ['ingest', 'relay', 'scheduler', 'coordinator']) {
      for (const i of [1, 2]) specs.push({ name: `${role}-${i}`, role, args: ['start', '--roles', role, '--no-migrate'], env: envFor() });
    }
    for (const { tier, count } of FOG_NODES) {
      for (let i = 1; i <= count; i++) specs.push({ name: `fog-${tier}-${i}`, role: 'fog-node', args: ['start', '--roles', 'fog-node', '--tier', tier], env: envFor() });
    }
    const apiPorts = [await freePort(), await freePort()];
    apiPorts.forEach((port, i) => specs.push({ name: `api-${i + 1}`, role: 'api', args: ['start', '--roles', 'api', '--no-migrate'], env: envFor({ PORT: String(port) }) }));
    for (const spec of specs) supervisor.start(spec);
    await Promise.all(apiPorts.map((port) => waitApiReady(port, 90_000)));
    log(`${specs.length} fogsched processes started (${specs.map((s) => s.name).join(', ')})`);

    // --- client and nemesis --------------------------------------------------------------
    const phaseStart = Date.now();
    const warmupMs = opts.warmupS * 1000;
    const faultMs = opts.durationS * 1000;
    const clientRun = runClient({
      apiPorts,
      random: clientRandom,
      tasks: opts.tasks,
      durationMs: (opts.faults ? warmupMs : 0) + faultMs,
      recordPath: join(opts.outDir, 'client.jsonl'),
      log,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    let faults: FaultRecord[] = [];
    if (opts.faults) {
      const probe = progressProbe(databaseUrl);
      const awaitProgress = async (since: number, maxWaitMs: number) => {
        const deadline = Date.now() + maxWaitMs;
        while (Date.now() < deadline && !opts.signal?.aborted) {
          if (await probe.completedSince(since).catch(() => false)) return true;
          await sleep(500);
        }
        return false;
      };
      await sleep(warmupMs);
      log(`nemesis: ${kinds.join(', ')} for ${opts.durationS} s`);
      faults = await runNemesis({
        random: nemesisRandom,
        durationMs: faultMs,
        kinds,
        quick: opts.quick,
        supervisor,
        cluster,
        brokers: cluster.urls.length,
        postgres,
        redis,
        databaseUrl,
        statementTimeoutMs: Number(CHAOS_ENV.PG_STATEMENT_TIMEOUT_MS),
        ...(opts.signal ? { signal: opts.signal } : {}),
        log,
        awaitProgress,
      });
      await probe.close();
    }
    const client = await clientRun;
    const faultsEnd = Date.now();
    await healEverything(cluster, postgres, redis, log);
    await client.finish();
    log(`client done: ${client.submits.length} submits, ${client.cancels.length} cancels acknowledged`);

    // --- recovery: every task terminal and the outbox published, within the bound ----------
    const recoveryStart = Date.now();
    let recoveredInMs: number | null = null;
    let lastOpen = { open: -1, unpublished: -1 };
    while (Date.now() - recoveryStart < opts.recoveryS * 1000 && !opts.signal?.aborted) {
      try {
        lastOpen = await openWork(databaseUrl);
        if (lastOpen.open === 0 && lastOpen.unpublished === 0) {
          recoveredInMs = Date.now() - faultsEnd;
          break;
        }
      } catch {
        // PostgreSQL still coming back
      }
      await sleep(1000);
    }
    log(recoveredInMs === null ? `not recovered within ${opts.recoveryS} s: ${lastOpen.open} tasks open, ${lastOpen.unpublished} outbox rows due` : `recovered ${(recoveredInMs / 1000).toFixed(1)} s after the fault phase`);

    const stoppingAt = Date.now();
    await supervisor.stop();
    await spy.stop();
    // Exits the nemesis did not cause: crashes worth reading in logs/.
    const selfExits = supervisor.processes.flatMap((p) => p.exits.filter((e) => e.at < stoppingAt && !e.byHarness).map((e) => ({ name: p.spec.name, ...e })));

    // --- the checker ---------------------------------------------------------------------
    const history = await loadHistory(databaseUrl);
    const violations: Violation[] = checkHistory(history, client, spy.records, { backoff: { baseMs: Number(CHAOS_ENV.RETRY_BASE_MS), factor: Number(CHAOS_ENV.RETRY_FACTOR), maxMs: Number(CHAOS_ENV.RETRY_MAX_MS) } });
    const [projections, audit] = [await runFogsched(['projections', 'verify'], base), await runFogsched(['audit', 'verify'], base)];
    writeFileSync(join(opts.outDir, 'projections-verify.txt'), projections.output);
    writeFileSync(join(opts.outDir, 'audit-verify.txt'), audit.output);
    violations.push(...toolViolations(projections, audit));

    const runs = new Map<string, Set<string>>();
    const starts = spy.records.filter((r) => r.kind === 'started');
    for (const s of starts) runs.set(`${s.taskId}/${s.attempt}`, (runs.get(`${s.taskId}/${s.attempt}`) ?? new Set()).add(s.nodeId));
    const report =
      formatReport({
        tasks: history.tasks,
        faults,
        skippedFaults,
        violations,
        recoveries: recoveries(history.tasks, faults, Date.now()),
        throughput: opts.faults && faults.length > 0 ? throughput(history.tasks, faults, phaseStart + warmupMs, faultsEnd) : null,
        phaseStart,
        recoveryBoundS: opts.recoveryS,
        recoveredInMs,
        client: {
          answers: client.answers,
          submits: client.submits.length,
          accepted: client.submits.filter((s) => s.outcome === 'accepted').length,
          rejected: client.submits.filter((s) => s.outcome === 'rejected').length,
          unknown: client.submits.filter((s) => s.outcome === 'unknown').length,
          cancels: client.cancels.length,
        },
        observedStarts: starts.length,
        deadLetteredMessages: history.deadLetteredMessages ?? 0,
        duplicateRuns: [...runs.values()].filter((nodes) => nodes.size > 1).length,
      }).replace(/\nchaos: /, `\n${selfExitsText(selfExits, opts.outDir)}chaos: `);
    writeFileSync(join(opts.outDir, 'faults.json'), JSON.stringify(faults, null, 2));
    writeFileSync(join(opts.outDir, 'violations.json'), JSON.stringify(violations, null, 2));
    writeFileSync(join(opts.outDir, 'report.txt'), report);
    return { report, violations, tasks: history.tasks.size, faults };
  } finally {
    await supervisor?.stop(3000).catch(() => {});
    await spy?.stop(0).catch(() => {});
    await Promise.all([cluster?.stop(), postgres?.destroy(), redis?.destroy()].flatMap((p) => (p ? [p.catch((error: unknown) => log(`cleanup: ${(error as Error).message}`))] : [])));
  }
}

function selfExitsText(exits: { name: string; at: number; code: number | null; signal: string | null }[], outDir: string): string {
  if (exits.length === 0) return 'processes: none exited on its own\n';
  const lines = exits.map((e) => {
    let tail = '';
    try {
      const text = readFileSync(join(outDir, 'logs', `${e.name}.log`), 'utf8');
      const fatal = text.split('\n').filter((l) => /"level":(50|60)|Error|fogsched:/.test(l)).pop();
      tail = fatal ? `: ${fatal.slice(0, 300)}` : '';
    } catch {
      // no log
    }
    return `  ${e.name} exited ${e.signal ?? `with code ${e.code}`} at ${new Date(e.at).toISOString()}${tail}`;
  });
  return `processes that exited on their own (${exits.length}; not killed by the nemesis):\n${lines.join('\n')}\n`;
}

/** After the fault phase: every broker node up, PostgreSQL and Redis up (a fault that failed to heal is healed here). */
async function healEverything(cluster: RabbitCluster, postgres: OwnPostgres, redis: OwnRedis, log: (line: string) => void): Promise<void> {
  for (let i = 0; i < cluster.urls.length; i++) {
    const u = new URL(cluster.urls[i] as string);
    if (!(await canConnect(u.hostname, Number(u.port)))) {
      log(`healing: broker node ${i + 1} is down, restarting it`);
      await cluster.heal(i).catch(() => {});
      if (!(await canConnect(u.hostname, Number(u.port)))) await cluster.restart(i);
    }
  }
  if (!(await canConnect('127.0.0.1', postgres.port))) {
    log('healing: postgresql is down, starting it');
    await postgres.start();
  }
  if (!(await canConnect('127.0.0.1', redis.port))) {
    log('healing: redis is down, starting it');
    await redis.start();
  }
}

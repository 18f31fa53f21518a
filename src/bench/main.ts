#!/usr/bin/env node
import { Command, InvalidArgumentError } from 'commander';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { drain, drainTwoIngest, overlapSingle, overlapSplit, drainLongLog, dropTemplates, fanIn, latency, memory, rebuild, relay, submitBatchScenario, submitSingle, type Metrics } from './fogsched.js';
import { PEER_SCENARIOS, peerVariants, runPeerScenario } from './peers.js';
import { errorsOf, markdown, table, type Results, type Run } from './report.js';
import { PEERS, SCENARIOS, settingsFor, type Scenario, type Settings } from './settings.js';
import { adminQuery, killAllSpawned } from './util.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

function list<T extends string>(allowed: readonly T[]) {
  return (value: string): T[] => {
    const items = value.split(',').map((x) => x.trim()).filter(Boolean);
    const bad = items.filter((x) => !(allowed as readonly string[]).includes(x));
    if (bad.length) throw new InvalidArgumentError(`unknown ${bad.join(', ')}; choose from ${allowed.join(', ')}`);
    return items as T[];
  };
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number ≥ 1');
  return n;
}

const FOGSCHED: Record<Scenario, (s: Settings) => Promise<Metrics>> = {
  'submit-single': submitSingle,
  'submit-batch': submitBatchScenario,
  drain,
  'drain-two-ingest': drainTwoIngest,
  overlap: overlapSingle,
  'overlap-split': overlapSplit,
  'drain-long-log': drainLongLog,
  latency,
  relay,
  rebuild,
  memory: () => memory(),
  'fan-in': fanIn,
};

function versionOf(pkg: string): string {
  try {
    return (JSON.parse(readFileSync(`${ROOT}node_modules/${pkg}/package.json`, 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

const short = (m: Metrics) =>
  Object.entries(m)
    .filter(([, v]) => typeof v === 'number')
    .slice(0, 6)
    .map(([k, v]) => `${k}=${(v as number).toFixed(1)}`)
    .join(' ');

/**
 * The PostgreSQL settings the figures depend on: autovacuum off (as on the node-svc machines)
 * leaves every dead outbox and task_current row in place for the whole run.
 */
async function postgresSettings(): Promise<string> {
  try {
    const r = await adminQuery(
      `SELECT name, setting, unit FROM pg_settings WHERE name IN ('server_version', 'autovacuum', 'synchronous_commit', 'fsync', 'shared_buffers') ORDER BY name`,
    );
    const v = Object.fromEntries(r.rows.map((x: { name: string; setting: string; unit: string | null }) => [x.name, x.name === 'shared_buffers' ? `${(Number(x.setting) * 8) / 1024} MiB` : x.setting]));
    return `${v.server_version}; autovacuum ${v.autovacuum}, synchronous_commit ${v.synchronous_commit}, fsync ${v.fsync}, shared_buffers ${v.shared_buffers}`;
  } catch (error) {
    return `unknown (${(error as Error).message})`;
  }
}

async function timed(system: string, scenario: string, repeat: number, f: () => Promise<Metrics>): Promise<Run> {
  const t0 = performance.now();
  process.stdout.write(`  ${system.padEnd(24)} ${scenario.padEnd(14)} #${repeat} … `);
  try {
    const metrics = await f();
    const run = { system, scenario, repeat, wallMs: performance.now() - t0, metrics };
    process.stdout.write(`${short(metrics)} (${(run.wallMs / 1000).toFixed(1)} s)\n`);
    return run;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    process.stdout.write(`ERROR ${message.split('\n')[0]?.slice(0, 200)}\n`);
    return { system, scenario, repeat, wallMs: performance.now() - t0, error: message.slice(0, 4000) };
  }
}

async function main(): Promise<number> {
  const program = new Command()
    .name('fogsched-bench')
    .description('Benchmarks fogsched and peer job queues on the local PostgreSQL, RabbitMQ and Redis')
    .option('--quick', 'short run (< 2 min), not representative', false)
    .option('--scenarios <list>', `comma-separated: ${SCENARIOS.join(', ')}`, list(SCENARIOS), [...SCENARIOS])
    .option('--peers <list>', `comma-separated: ${PEERS.join(', ')} (empty string for none)`, (v: string) => (v.trim() === '' ? [] : list(PEERS)(v)), [...PEERS])
    .option('--repeat <n>', "repeats of fogsched's scenarios (default 3; 1 with --quick)", positiveInt)
    .option('--peer-repeat <n>', "repeats of the peers' scenarios, at most --repeat (default 1)", positiveInt)
    .option('--no-docs', 'do not rewrite docs/benchmarks.md');
  program.parse(process.argv);
  const opts = program.opts<{ quick: boolean; scenarios: Scenario[]; peers: string[]; repeat?: number; peerRepeat?: number; docs: boolean }>();
  const settings = settingsFor(opts.quick, opts.repeat, opts.peerRepeat);
  const startedAt = new Date().toISOString();
  const variants = peerVariants(opts.peers);
  const runs: Run[] = [];
  const onSignal = () => {
    killAllSpawned();
    // The seeded template databases are gigabytes: drop them, but do not hang on it.
    setTimeout(() => process.exit(130), 5000).unref();
    void dropTemplates().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // A peer's stray rejection must not end the run.
  process.on('uncaughtException', (error) => process.stderr.write(`bench: uncaught exception ${error.message}\n`));
  process.on('unhandledRejection', (error) => process.stderr.write(`bench: unhandled rejection ${String(error)}\n`));

  console.log(
    `fogsched bench (${settings.quick ? 'quick' : 'full'}, ${settings.repeat} repeat(s), peers ${settings.peerRepeat}): ${opts.scenarios.join(', ')}; peers: ${opts.peers.join(', ') || 'none'}`,
  );
  try {
    for (let rep = 1; rep <= settings.repeat; rep++) {
      for (const scenario of opts.scenarios) {
        runs.push(await timed('fogsched', scenario, rep, () => FOGSCHED[scenario](settings)));
        if (!PEER_SCENARIOS.includes(scenario) || rep > settings.peerRepeat) continue;
        // fan-in has no tuning to compare: one variant per peer.
        for (const v of variants.filter((x) => scenario !== 'fan-in' || x.system === x.peer)) runs.push(await timed(v.system, scenario, rep, () => runPeerScenario(v, scenario, settings)));
      }
    }
  } finally {
    killAllSpawned();
    await dropTemplates();
  }

  const results: Results = {
    startedAt,
    finishedAt: new Date().toISOString(),
    machine: {
      cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
      memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
      os: `${os.type()} ${os.release()} ${os.arch()}`,
      node: process.version,
      postgresql: await postgresSettings(),
    },
    versions: Object.fromEntries(['fogsched', 'graphile-worker', 'pg-boss', 'bullmq', 'amqplib', 'pg', 'fastify'].map((p) => [p, p === 'fogsched' ? versionOfRoot() : versionOf(p)])),
    settings,
    systems: {
      fogsched: 'api in its own process (PG_POOL_MAX 10, SUBMIT_MAX_BATCH 500); relay, ingest and 2 fog nodes (FOG_NODE_SLOTS 25, FOG_NODE_PREFETCH 200) in a second process; other settings default',
      ...Object.fromEntries(variants.map((v) => [v.system, v.settings])),
    },
    runs,
  };
  const stamp = results.finishedAt.replace(/[:.]/g, '-');
  const jsonPath = `bench/results/${stamp}.json`;
  mkdirSync(`${ROOT}bench/results`, { recursive: true });
  writeFileSync(`${ROOT}${jsonPath}`, `${JSON.stringify(results, null, 2)}\n`);
  if (opts.docs) writeFileSync(`${ROOT}docs/benchmarks.md`, markdown(results, jsonPath));
  console.log(`\n${table(results)}\n`);
  const errors = errorsOf(results);
  if (errors.length) console.log(`errors (recorded, run continued):\n${errors.map((e) => `  ${e.split('\n')[0]?.slice(0, 300)}`).join('\n')}\n`);
  console.log(`results: ${jsonPath}${opts.docs ? '; docs/benchmarks.md regenerated' : ''}`);
  // A peer may fail on its own; fogsched's scenarios failing means the benchmark (or fogsched) broke.
  const broken = runs.filter((r) => r.system === 'fogsched' && 'error' in r && r.error);
  if (broken.length > 0) console.log(`fogsched failed ${broken.length} scenario run(s): exit 1`);
  return broken.length > 0 ? 1 : 0;
}

function versionOfRoot(): string {
  return (JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as { version: string }).version;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    killAllSpawned();
    process.stderr.write(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);

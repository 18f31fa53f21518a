import { readFileSync } from 'node:fs';
import type { Metrics } from './fogsched.js';
import { SEEDED_EVENTS_PER_TASK, type Settings } from './settings.js';

export interface Run {
  readonly system: string;
  readonly scenario: string;
  readonly repeat: number;
  readonly wallMs: number;
  readonly metrics?: Metrics;
  readonly error?: string;
}

export interface Results {
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly machine: Record<string, unknown>;
  readonly versions: Record<string, string>;
  readonly settings: Settings;
  readonly systems: Record<string, string>;
  readonly runs: readonly Run[];
}

/** A row's values per system, one per repeat, when they are not a metric of one run. */
type Derive = (r: Results, system: string) => number[];

/** drain-long-log ÷ drain of the same repeat. */
const longLogRatio: Derive = (r, system) =>
  r.runs
    .filter((x) => x.system === system && x.scenario === 'drain-long-log')
    .map((long) => {
      const empty = r.runs.find((x) => x.system === system && x.scenario === 'drain' && x.repeat === long.repeat);
      const a = long.metrics?.tasksPerS;
      const b = empty?.metrics?.tasksPerS;
      return typeof a === 'number' && typeof b === 'number' ? a / b : NaN;
    })
    .filter(Number.isFinite);

/** Rows of the table: a scenario's metric (or `derive`d values); `higher` says which way is better. */
/** `peerScenario`: the peers' scenario a fogsched-only row is compared with (the same work, another layout of fogsched). */
const ROWS: readonly { scenario: string; metric: string; label: string; unit: string; higher: boolean; ratio: boolean; derive?: Derive; peerScenario?: string }[] = [
  { scenario: 'submit-single', metric: 'tasksPerS', label: 'submit-single', unit: 'tasks/s', higher: true, ratio: true },
  { scenario: 'submit-batch', metric: 'tasksPerS', label: 'submit-batch', unit: 'tasks/s', higher: true, ratio: true },
  { scenario: 'drain', metric: 'tasksPerS', label: 'drain', unit: 'tasks/s', higher: true, ratio: true },
  { scenario: 'drain-two-ingest', metric: 'tasksPerS', label: 'drain, two ingest replicas (fogsched; vs the peers\' drain)', unit: 'tasks/s', higher: true, ratio: true, peerScenario: 'drain' },
  { scenario: 'overlap', metric: 'tasksPerS', label: 'overlap: 10,000 submitted in batches of 500 while running (fogsched: one process)', unit: 'tasks/s', higher: true, ratio: true },
  { scenario: 'overlap-split', metric: 'tasksPerS', label: 'overlap, fogsched split: api | relay+ingest+fog nodes (vs the peers\' overlap)', unit: 'tasks/s', higher: true, ratio: true, peerScenario: 'overlap' },
  { scenario: 'drain-long-log', metric: 'tasksPerS', label: 'drain with a long log (see method)', unit: 'tasks/s', higher: true, ratio: false },
  {
    scenario: 'drain-long-log',
    metric: 'longLogRatio',
    label: 'drain long log ÷ empty log, same repeat (target ≥ 0.9)',
    unit: '×',
    higher: true,
    ratio: false,
    derive: longLogRatio,
  },
  { scenario: 'latency', metric: 'startP50Ms', label: 'latency submit→start p50', unit: 'ms', higher: false, ratio: true },
  { scenario: 'latency', metric: 'startP95Ms', label: 'latency submit→start p95', unit: 'ms', higher: false, ratio: true },
  { scenario: 'latency', metric: 'startP99Ms', label: 'latency submit→start p99', unit: 'ms', higher: false, ratio: true },
  { scenario: 'latency', metric: 'startMaxMs', label: 'latency submit→start max', unit: 'ms', higher: false, ratio: false },
  { scenario: 'latency', metric: 'doneP50Ms', label: 'latency submit→succeeded p50', unit: 'ms', higher: false, ratio: false },
  { scenario: 'latency', metric: 'doneP99Ms', label: 'latency submit→succeeded p99', unit: 'ms', higher: false, ratio: false },
  { scenario: 'relay', metric: 'rowsPerS', label: 'relay outbox→RabbitMQ, from process spawn', unit: 'rows/s', higher: true, ratio: false },
  { scenario: 'relay', metric: 'publishingRowsPerS', label: 'relay outbox→RabbitMQ, publishing window', unit: 'rows/s', higher: true, ratio: false },
  { scenario: 'relay', metric: 'rawAmqpPerS', label: 'raw amqplib confirms (500/batch)', unit: 'msgs/s', higher: true, ratio: false },
  { scenario: 'relay', metric: 'relayToRaw', label: 'relay (publishing window) / raw', unit: '×', higher: true, ratio: false },
  { scenario: 'drain', metric: 'rowWritesPerTask', label: 'drain: row writes per task (inserts + updates + deletes, every table)', unit: 'rows', higher: false, ratio: false },
  { scenario: 'drain', metric: 'indexEntriesPerTask', label: 'drain: index entries written per task (upper bound)', unit: 'entries', higher: false, ratio: false },
  { scenario: 'drain', metric: 'workersPeakRssMb', label: 'drain: worker process peak RSS', unit: 'MiB', higher: false, ratio: false },
  { scenario: 'drain', metric: 'workersIdleRssMb', label: 'drain: worker process RSS after (1 s quick, 2 s full)', unit: 'MiB', higher: false, ratio: false },
  { scenario: 'rebuild', metric: 'eventsPerS', label: 'projection rebuild (replay + swap)', unit: 'events/s', higher: true, ratio: false },
  { scenario: 'rebuild', metric: 'peakRssMb', label: 'rebuild peak RSS', unit: 'MiB', higher: false, ratio: false },
  { scenario: 'memory', metric: 'fogNodeIdleRssMb', label: 'fog node alone, idle RSS', unit: 'MiB', higher: false, ratio: false },
  { scenario: 'fan-in', metric: 'elapsedMs', label: 'fan-out/fan-in: first submit → fan-in succeeded (see method)', unit: 'ms', higher: false, ratio: true },
  { scenario: 'fan-in', metric: 'tasksPerS', label: 'fan-out/fan-in: children + fan-in per second', unit: 'tasks/s', higher: true, ratio: false },
  { scenario: 'fan-in', metric: 'lastChildToFanInStartMs', label: 'fan-out/fan-in: last child finished → fan-in started', unit: 'ms', higher: false, ratio: false },
];

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

const fmt = (x: number) => (!Number.isFinite(x) ? 'n/a' : Math.abs(x) >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(Math.abs(x) >= 10 ? 1 : 2));

function values(r: Results, system: string, scenario: string, metric: string, derive?: Derive): { xs: number[]; errors: string[] } {
  const runs = r.runs.filter((x) => x.system === system && x.scenario === scenario);
  const xs = derive
    ? derive(r, system)
    : runs.map((x) => x.metrics?.[metric]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
  return { xs, errors: runs.filter((x) => x.error).map((x) => x.error as string) };
}

function cell(r: Results, system: string, scenario: string, metric: string, derive?: Derive): string {
  const { xs, errors } = values(r, system, scenario, metric, derive);
  if (xs.length === 0) {
    if (errors.length) return 'error';
    // A peer without the feature says so (metrics.unsupported), on the scenario's first row.
    const unsupported = r.runs.find((x) => x.system === system && x.scenario === scenario && typeof x.metrics?.unsupported === 'string')?.metrics?.unsupported;
    return typeof unsupported === 'string' && ROWS.find((row) => row.scenario === scenario)?.metric === metric ? `n/a: ${unsupported}` : '–';
  }
  const cut = r.runs.some((x) => x.system === system && x.scenario === scenario && x.metrics?.cutShort === 1) ? '†' : '';
  const m = fmt(median(xs)) + cut;
  return xs.length > 1 ? `${m} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})` : m;
}

function systemsOf(r: Results): string[] {
  return [...new Set(r.runs.map((x) => x.system))];
}

function visibleRows(r: Results) {
  return ROWS.filter((row) => r.runs.some((x) => x.scenario === row.scenario));
}

export function table(r: Results): string {
  const systems = systemsOf(r);
  const header = ['scenario (unit)', ...systems];
  const body = visibleRows(r)
    .map((row) => [`${row.label} (${row.unit})`, ...systems.map((s) => cell(r, s, row.scenario, row.metric, row.derive))])
    .filter((cells) => cells.slice(1).some((c) => c !== '–'));
  const rows = [header, ...body];
  const widths = header.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length)));
  const line = (row: string[]) => `| ${row.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

/** fogsched ÷ peer per scenario (> 1 means fogsched is better for throughput; for latency peer ÷ fogsched). */
export function ratioTable(r: Results): string {
  const peers = systemsOf(r).filter((s) => s !== 'fogsched');
  if (peers.length === 0) return '';
  const header = ['scenario', ...peers.map((p) => `vs ${p}`)];
  const body = visibleRows(r)
    .filter((row) => row.ratio)
    .map((row) => {
      const f = values(r, 'fogsched', row.scenario, row.metric).xs;
      return [
        `${row.label}`,
        ...peers.map((p) => {
          const x = values(r, p, row.peerScenario ?? row.scenario, row.metric).xs;
          if (!f.length || !x.length) return 'n/a';
          const ratio = median(f) / median(x);
          return `${ratio.toFixed(2)}×`;
        }),
      ];
    });
  const line = (row: string[]) => `| ${row.join(' | ')} |`;
  return [line(header), `|${header.map(() => '---').join('|')}|`, ...body.map(line)].join('\n');
}

export function errorsOf(r: Results): string[] {
  return r.runs.filter((x) => x.error).map((x) => `${x.system} / ${x.scenario} #${x.repeat}: ${x.error}`);
}

export function markdown(r: Results, jsonPath: string): string {
  const s = r.settings;
  const peerRepeat = s.peerRepeat ?? s.repeat;
  const n = (x: number) => x.toLocaleString('en-US');
  const quickNote = s.quick
    ? '\n> **Quick run, not representative.** These figures come from `npm run bench -- --quick` (short durations, small N, one repeat). Run `npm run bench` for the full figures.\n'
    : '';
  const errors = errorsOf(r);
  return `# Benchmarks

Generated by \`npm run bench${s.quick ? ' -- --quick' : ''}\` on ${r.finishedAt} from [${jsonPath}](../${jsonPath}). Do not edit by hand: rerun the bench.
${quickNote}
## Machine

${Object.entries(r.machine)
  .map(([k, v]) => `- ${k}: ${String(v)}`)
  .join('\n')}
- versions: ${Object.entries(r.versions)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')}

PostgreSQL, RabbitMQ and Redis run on the same machine as the systems under test and the load generator, so every figure includes their CPU contention.

## Method

fogsched's scenarios run ${s.repeat}×, the peers' ${peerRepeat}× (in the first ${peerRepeat === 1 ? 'repeat' : `${peerRepeat} repeats`}; \`--peer-repeat\` sets it): the peers' fixed-length scenarios alone take 40 s per variant and repeat, so three repeats of all five variants would put a full run past 15 minutes on 2 cores. Every run starts from fresh state (fogsched: a new database \`fogsched_bench_<random>\` migrated with \`migrate()\` and a new \`AMQP_PREFIX\`; graphile-worker and pg-boss: a new database; BullMQ: a new Redis key prefix), which is dropped afterwards. fogsched runs as \`node bin/fogsched.js start --roles ...\` child processes with \`LOG_LEVEL=warn\`; the peers run their client and workers inside the bench process (no HTTP hop). Handlers do nothing (fogsched: the built-in \`noop\`).

- **submit-single**: ${s.singleClients} concurrent clients each submit one task at a time for ${s.submitSeconds} s (fogsched: \`POST /v1/tasks\` over keep-alive \`http.Agent\` to \`--roles api\` only; peers: \`addJob\` / \`send\` / \`add\`).
- **submit-batch**: ${s.batchClients} clients submit ${s.batchSize} tasks per call for ${s.submitSeconds} s (\`POST /v1/tasks/batch\`; \`addJobs\` / \`insert\` / \`addBulk\`).
- **drain**: ${s.drainN.toLocaleString('en-US')} tasks are submitted with no worker running, then the workers start (fogsched: one process \`--roles relay,ingest,fog-node --fog-nodes 2\` with \`FOG_NODE_SLOTS=25\`, \`FOG_NODE_PREFETCH=200\`, i.e. 50 concurrent; peers: concurrency ${s.concurrency}). Timed from spawning/starting the workers until the store says all ${s.drainN.toLocaleString('en-US')} completed (fogsched: \`task_current.state = 'succeeded'\`, polled every 50 ms; graphile-worker: no job left; pg-boss: \`state = 'completed'\`; BullMQ: completed count). fogsched's time includes the worker process boot.
- **drain-two-ingest** (fogsched, issue 16): the drain above with ingest apart: relay and the 2 fog nodes in one process (\`--roles relay,fog-node\`), two \`--roles ingest\` replicas sharing the result lanes (\`INGEST_LANES\`, default 4). Compared with the peers' drain.
- **overlap** (issue 16, the way users run it): the workers run first, then ${n(s.overlapN)} noop tasks are submitted in batches of ${s.batchSize} by ${s.batchClients} clients while they run; timed from the first submit until every task succeeded (fogsched: one \`fogsched start\` process with every role, 2 fog nodes × 25 slots, after a warm-up task; peers: their workers at concurrency 50, then \`addJobs\` / \`insert\` / \`addBulk\`, until their store counts them completed). **overlap-split** (fogsched): the same with the api in one process and relay, ingest, scheduler and the fog nodes in another, compared with the peers' overlap. drain, overlap and latency also record \`cpuSecondsBy\` (CPU seconds per process group from /proc over the timed window; latency: over the open loop) in the results JSON.
- **drain-long-log** (fogsched): the drain above, in a database that already holds ${n(s.longLogTasks)} finished tasks: ${n(s.longLogTasks * SEEDED_EVENTS_PER_TASK)} earlier events (submitted, which queues the task, started, succeeded, each stream with its hash chain), their task_current rows (succeeded) and published outbox rows, as the loop leaves them. They are loaded once per bench run with set-based \`INSERT ... SELECT generate_series\` (hashes from \`event_hash\`, the chain trigger's function, with the trigger off while loading; projection rows equal to what \`rebuildProjections\` writes for these events), then \`VACUUM (ANALYZE)\`; each repeat drains in a fresh copy (\`CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY\`). Only the tasks it submits are counted (task_current rows with \`seq\` past the seeded ones; drain runs the same query). The ratio row divides each repeat's rate by the drain's of the same repeat (target ≥ 0.9: at most 10% slower).
- **latency**: everything running, open loop of ${s.latencyRate} submits/s for ${s.latencySeconds} s; submit→start is \`started_at - submitted_at\` from \`task_current\` (fogsched; submit→succeeded is \`finished_at - submitted_at\`) and enqueue-call→handler-start measured in process for the peers.
- **relay**: ${s.relayM.toLocaleString('en-US')} due outbox rows inserted with one \`INSERT ... SELECT generate_series\` (routing key \`light.normal\`), then \`--roles relay\` is spawned and timed until every row has \`published_at\` (the "from process spawn" rate, which includes starting node, taking the PostgreSQL lock and connecting to RabbitMQ); the "publishing window" rate counts the rows after the first confirmed batch over the time from the first \`published_at\` to the last. Next to it a raw amqplib loop publishes the same number of persistent messages to a quorum queue with the task queues' arguments, 500 per \`waitForConfirms\`, timed from its first publish (after connecting and declaring); the ratio compares it with the publishing window. The task queues' \`x-max-length\` is raised to ${Math.max(10_000, s.relayM * 2).toLocaleString('en-US')} for this scenario only.
- **rebuild**: ${(s.rebuildTasks * SEEDED_EVENTS_PER_TASK).toLocaleString('en-US')} events (${s.rebuildTasks.toLocaleString('en-US')} tasks × submitted, started, succeeded) loaded as in drain-long-log (events only, once per bench run, a fresh copy per repeat), then \`rebuildProjections\` (what \`fogsched projections rebuild\` runs) replays them into a fresh task_current table (task_history is a view of the log) in batches of 10,000 (a checkpoint every 100,000 events) and swaps them in; timed from its start to the swap.
- **fan-in**: a fan-out of ${n(s.fanInChildren ?? 10_000)} \`noop\` children and one fan-in task that depends on all of them, everything running as in latency (fogsched: the children in batches of ${s.batchSize} by ${s.batchClients} clients, each with its own \`id\`, the last batch also carrying the fan-in with \`dependsOn\` all ${n(s.fanInChildren ?? 10_000)}; BullMQ: one \`FlowProducer.add\` of a parent with ${n(s.fanInChildren ?? 10_000)} children, a child Worker at concurrency ${s.concurrency} and a parent Worker reading \`job.getChildrenValues()\`, as fogsched's fan-in receives its dependencies' outputs). Timed from the first submit until the fan-in succeeded (fogsched: \`task_current\`, polled every 50 ms, and the run fails unless the fan-in has exactly one \`TaskReleased\`; BullMQ: completed counts of both queues). "last child finished → fan-in started" is \`started_at\` of the fan-in minus the latest \`finished_at\` of its children (release, dispatch and delivery). pg-boss 10 and graphile-worker 0.17 have no dependencies between jobs (pg-boss's \`flow()\` is not in the installed version), so they have no figure.
- **memory**: \`--roles fog-node\` alone, VmRSS after 3 s idle; the drain scenario also samples the worker process RSS every 100 ms.

Cells are median (min–max over the repeats). † = cut short at the time limit (${(s.timeoutMs / 1000).toFixed(0)} s), or, for a peer, as soon as it has waited ${((s.earlyCutMs ?? s.timeoutMs) / 1000).toFixed(0)} s and its rate so far would only finish after the limit: throughput is the rate until then, latency percentiles only cover the jobs started by then (a lower bound). fogsched has no such cut: a fogsched run that does not finish within ${((s.ownTimeoutMs ?? s.timeoutMs) / 1000).toFixed(0)} s is an error.

## Settings per peer

${Object.entries(r.systems)
  .map(([k, v]) => `- **${k}**: ${v}`)
  .join('\n')}

## Results

${table(r)}
${writesByTable(r)}
## fogsched ÷ peer (medians)

Throughput rows: above 1× means fogsched is faster. Latency rows: above 1× means fogsched is slower.

${ratioTable(r)}
${boundsNotes()}${errors.length ? `\n## Errors\n\n${errors.map((e) => `- ${e.replace(/\s+/g, ' ').slice(0, 400)}`).join('\n')}\n` : ''}`;
}

/** Where the drain's row writes per task go, table by table, from its first repeat that has them. */
function writesByTable(r: Results): string {
  const run = r.runs.find((x) => x.system === 'fogsched' && x.scenario === 'drain' && typeof x.metrics?.rowWritesByTable === 'string');
  return run ? `\nRow writes per task in the drain, by table (inserts + updates + deletes, from \`pg_stat_user_tables\`): ${String(run.metrics?.rowWritesByTable)}.\n` : '';
}

/** The hand-written analysis (what bounds each figure), kept in docs/benchmark-notes.md and copied in. */
function boundsNotes(): string {
  try {
    return `\n${readFileSync(new URL('../../docs/benchmark-notes.md', import.meta.url), 'utf8').trim()}\n`;
  } catch {
    return '';
  }
}

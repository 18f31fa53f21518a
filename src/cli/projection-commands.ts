import { type Command, InvalidArgumentError } from 'commander';
import cliProgress from 'cli-progress';
import type { Config } from '../infra/config.js';
import { createPostgres, isConnectionError, pendingMigrations, type Postgres } from '../infra/postgres.js';
import { FogschedError } from '../domain/index.js';
import {
  PROJECTION_NAMES,
  rebuildProjections,
  STORED_PROJECTIONS,
  staleProjections,
  type ProjectionComparison,
  type ProjectionName,
  type RebuildOptions,
  type RebuildProgress,
  type RebuildReport,
} from '../projections/index.js';
import { sql } from 'kysely';

/**
 * `fogsched projections rebuild | verify | status`. Progress goes to stderr (a bar on a
 * terminal, a line every few seconds otherwise); the outcome to stdout.
 */
export function registerProjectionCommands(program: Command, deps: { config: () => Config }): void {
  const projections = program.command('projections').description('read models rebuilt from the event log');

  projections
    .command('rebuild')
    .description('replay the log into shadow tables while the system runs, then swap them in (resumes a killed rebuild)')
    .option('--projection <list>', `comma-separated: ${PROJECTION_NAMES.join(', ')} (task_history, a view of the log, is only compared, under --verify)`, parseProjections, [...STORED_PROJECTIONS])
    .option('--verify', 'compare with the live tables before swapping; swap only when equal, exit 1 on any difference')
    .option('--dry-run', 'replay and compare, then drop the rebuilt tables: the live tables are left alone')
    .option('--batch-size <n>', 'events read per query (a checkpoint every 10 batches)', parseBatchSize, 10_000)
    .action(async (opts: { projection: ProjectionName[]; verify?: boolean; dryRun?: boolean; batchSize: number }) => {
      await withPostgres(deps.config(), async (pg) => {
        const report = await runRebuild(pg, { projections: opts.projection, verify: opts.verify, dryRun: opts.dryRun, batchSize: opts.batchSize });
        process.exitCode = opts.verify && !report.swapped ? 1 : 0;
      });
    });

  projections
    .command('verify')
    .description('replay the log into scratch tables and compare them with the live ones row for row; exit 1 on any difference')
    .option('--projection <list>', `comma-separated: ${PROJECTION_NAMES.join(', ')}`, parseProjections, [...PROJECTION_NAMES])
    .option('--batch-size <n>', 'events read per query (a checkpoint every 10 batches)', parseBatchSize, 10_000)
    .action(async (opts: { projection: ProjectionName[]; batchSize: number }) => {
      await withPostgres(deps.config(), async (pg) => {
        const report = await runRebuild(pg, { projections: opts.projection, dryRun: true, batchSize: opts.batchSize });
        process.exitCode = differs(report) ? 1 : 0;
      });
    });

  projections
    .command('status')
    .description('the stored version of each projection against the code\'s, and a rebuild in progress')
    .action(async () => {
      await withPostgres(deps.config(), async (pg) => {
        const stale = await staleProjections(pg.db);
        const rows = await pg.db.selectFrom('projection_versions').selectAll().orderBy('projection').execute();
        for (const r of rows) {
          const s = stale.find((x) => x.projection === r.projection);
          const rebuilt = r.rebuilt_at ? `rebuilt ${r.rebuilt_at.toISOString()} from ${r.rebuilt_events ?? 0} events` : 'never rebuilt';
          process.stdout.write(`${r.projection.padEnd(14)} version ${r.version}${s ? ` STALE (code has ${s.code})` : ''}, ${rebuilt}\n`);
        }
        const running = await sql<{ projections: string[]; last_position: string; events_applied: string; updated_at: Date }>`
          SELECT projections, last_position, events_applied, updated_at FROM projection_rebuilds`.execute(pg.db);
        const r = running.rows[0];
        if (r) {
          process.stdout.write(
            `rebuild of ${r.projections.join(', ')} in progress or interrupted: ${r.events_applied} events applied, at position ${r.last_position}, last checkpoint ${r.updated_at.toISOString()}; \`fogsched projections rebuild\` resumes it\n`,
          );
        }
        process.exitCode = stale.length > 0 ? 1 : 0;
      });
    });
}

/** Runs a rebuild with progress on stderr and the outcome on stdout. */
export async function runRebuild(pg: Postgres, options: RebuildOptions): Promise<RebuildReport> {
  const progress = progressReporter();
  let report: RebuildReport;
  try {
    report = await rebuildProjections(pg, { ...options, onProgress: progress.update });
  } finally {
    progress.stop();
  }
  if (report.projections.length === 0) {
    process.stdout.write('task_history is a view of the log: nothing to rebuild (`fogsched projections verify` compares it with the log)\n');
    return report;
  }
  const seconds = report.durationMs / 1000;
  const rate = seconds > 0 ? Math.round(report.events / seconds) : report.events;
  const what = report.projections.join(', ');
  process.stdout.write(
    `${options.dryRun ? 'replayed' : 'rebuilt'} ${what} from ${report.events.toLocaleString('en')} events in ${seconds.toFixed(1)} s (${rate.toLocaleString('en')} events/s)${report.resumed ? ', resumed from a checkpoint' : ''}\n`,
  );
  for (const c of report.comparisons ?? []) process.stdout.write(formatComparison(c));
  // task_history is a view of the log (migration 16): compared under verify, never swapped.
  const tables = report.projections.filter((p) => p !== 'task_history').join(', ');
  if (report.swapped) {
    if (tables) process.stdout.write(`swapped in: ${tables} now served from the rebuilt tables\n`);
  } else if (!options.dryRun) process.stdout.write('not swapped: the rebuilt tables differ from the live ones (run without --verify to replace them)\n');
  return report;
}

export function formatComparison(c: ProjectionComparison): string {
  if (c.liveOnly === 0 && c.rebuiltOnly === 0) return `${c.projection}: ${c.liveRows} rows, equal to the log\n`;
  const lines = [`${c.projection}: DIFFERS: ${c.liveRows} live rows, ${c.rebuiltRows} rebuilt; ${c.liveOnly} live rows not in the rebuild, ${c.rebuiltOnly} rebuilt rows not live; first differences:`];
  for (const s of c.samples) {
    const cols = Object.entries(s.columns);
    const missing = cols.length > 0 && cols.every(([, [a]]) => a === undefined) ? 'missing from the live table' : cols.every(([, [, b]]) => b === undefined) ? 'not in the log' : null;
    lines.push(
      `  ${s.key}: ${missing ?? cols.map(([name, [live, rebuilt]]) => `${name} live=${show(live)} rebuilt=${show(rebuilt)}`).join(', ')}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

function differs(report: RebuildReport): boolean {
  return (report.comparisons ?? []).some((c) => c.liveOnly > 0 || c.rebuiltOnly > 0);
}

function show(value: unknown): string {
  const text = JSON.stringify(value) ?? 'undefined';
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** A bar on a terminal; elsewhere a plain line every 2 s (logs, CI). */
function progressReporter(): { update: (p: RebuildProgress) => void; stop: () => void } {
  const started = Date.now();
  const rate = (applied: number) => Math.round(applied / Math.max((Date.now() - started) / 1000, 0.001));
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { format: 'rebuild |{bar}| {percentage}% | position {value}/{total} | {rate} events/s | ETA {eta_formatted}', stream: process.stderr, etaBuffer: 20 },
      cliProgress.Presets.shades_classic,
    );
    let begun = false;
    return {
      update(p) {
        if (!begun) {
          bar.start(Math.max(p.headPosition, 1), 0, { rate: 0 });
          begun = true;
        }
        bar.setTotal(Math.max(p.headPosition, p.position, 1));
        bar.update(Math.min(p.position, Math.max(p.headPosition, p.position)), { rate: rate(p.applied).toLocaleString('en') });
      },
      stop() {
        if (begun) bar.stop();
      },
    };
  }
  let last = 0;
  return {
    update(p) {
      const now = Date.now();
      if (now - last < 2000 && p.phase === 'replay') return;
      last = now;
      const share = p.headPosition > 0 ? Math.min(100, Math.floor((100 * p.position) / p.headPosition)) : 100;
      const eps = rate(p.applied);
      const remaining = eps > 0 && p.headPosition > p.position ? Math.ceil((p.headPosition - p.position) / eps) : 0;
      process.stderr.write(`rebuild: ${p.phase} ${share}% (position ${p.position} of ${p.headPosition}), ${p.applied} events, ${eps} events/s, ETA ${remaining}s\n`);
    },
    stop() {},
  };
}

/** A small pool for a one-shot command, refused (one line) while migrations are pending. */
export async function withPostgres<T>(config: Config, fn: (pg: Postgres) => Promise<T>): Promise<T> {
  const pg = createPostgres({ url: config.DATABASE_URL, poolMax: 4, connectTimeoutMs: config.PG_CONNECT_TIMEOUT_MS, statementTimeoutMs: 0 });
  try {
    let pending: string[];
    try {
      pending = await pendingMigrations(pg.pool);
    } catch (error) {
      if (isConnectionError(error)) {
        throw new FogschedError({ code: 'SERVICE_UNAVAILABLE', status: 503, message: `cannot reach PostgreSQL (${(error as Error).message}); run \`fogsched doctor\`` });
      }
      throw error;
    }
    if (pending.length > 0) throw new FogschedError({ code: 'NOT_MIGRATED', status: 503, message: `the database lacks ${pending.length} migration(s) (${pending[0]}...): run \`fogsched migrate\` first` });
    return await fn(pg);
  } finally {
    await pg.close();
  }
}

function parseProjections(value: string): ProjectionName[] {
  const list = value.split(',').map((p) => p.trim()).filter(Boolean);
  const unknown = list.filter((p) => !(PROJECTION_NAMES as string[]).includes(p));
  if (unknown.length > 0 || list.length === 0) {
    const note = unknown.includes('node_metrics') ? ' (node_metrics holds metric samples, not events: it is not rebuilt from the log)' : '';
    throw new InvalidArgumentError(`unknown projection ${unknown.join(', ') || '(none)'}; projections are ${PROJECTION_NAMES.join(', ')}${note}`);
  }
  return list as ProjectionName[];
}

function parseBatchSize(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 100_000) throw new InvalidArgumentError('must be a whole number from 1 to 100000');
  return n;
}

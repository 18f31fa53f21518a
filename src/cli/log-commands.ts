import { type Command, InvalidArgumentError } from 'commander';
import { isUuid, TaskNotFoundError } from '../domain/index.js';
import type { Config } from '../infra/config.js';
import { cursorAfter, LOG_START, readAll, readStream, type LogCursor, type StoredEvent } from '../store/index.js';
import { withPostgres } from './projection-commands.js';

/** `fogsched task show <id>` and `fogsched events tail`: the log, read in a terminal. */
export function registerLogCommands(program: Command, deps: { config: () => Config }): void {
  program
    .command('task')
    .description('tasks: over the API (submit, get, list, ...) or from the event log (show)')
    .command('show <id>')
    .description('print the task\'s timeline: every event of its stream, oldest first')
    .option('--json', 'print the events as JSON lines')
    .action(async (id: string, opts: { json?: boolean }) => {
      if (!isUuid(id)) throw new InvalidArgumentError(`task id must be a UUID, got ${JSON.stringify(id)}`);
      await withPostgres(deps.config(), async (pg) => {
        const events = await readStream(pg.db, id);
        if (events.length === 0) throw new TaskNotFoundError(id);
        for (const e of events) process.stdout.write(opts.json ? `${JSON.stringify(e)}\n` : `${formatEvent(e)}\n`);
      });
    });

  program
    .command('events')
    .description('the event log')
    .command('tail')
    .description('follow the log as events commit (Ctrl-C to stop); starts at the end unless --from-start')
    .option('--type <types>', 'only these event types (comma-separated)', (v: string) => v.split(',').map((t) => t.trim()).filter(Boolean))
    .option('--stream <id>', 'only this stream (a task id, node:<id>, ...)')
    .option('--from-start', 'print the whole log first')
    .option('--limit <n>', 'stop after printing n events', (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number ≥ 1');
      return n;
    })
    .option('--json', 'print the events as JSON lines')
    .action(async (opts: { type?: string[]; stream?: string; fromStart?: boolean; limit?: number; json?: boolean }) => {
      await withPostgres(deps.config(), async (pg) => {
        let stop = false;
        const onSignal = () => {
          stop = true;
        };
        process.once('SIGINT', onSignal);
        process.once('SIGTERM', onSignal);
        let cursor: LogCursor = LOG_START;
        if (!opts.fromStart) cursor = await endOfLog(pg.db);
        let printed = 0;
        while (!stop) {
          const events = await readAll(pg.db, cursor, 1000);
          cursor = cursorAfter(cursor, events);
          for (const e of events) {
            if (opts.type && !opts.type.includes(e.type)) continue;
            if (opts.stream && e.streamId !== opts.stream) continue;
            process.stdout.write(opts.json ? `${JSON.stringify(e)}\n` : `${formatEvent(e, true)}\n`);
            if (opts.limit && ++printed >= opts.limit) return;
          }
          if (events.length < 1000) await new Promise((r) => setTimeout(r, 250));
        }
      });
    });
}

async function endOfLog(db: Parameters<typeof readAll>[0]): Promise<LogCursor> {
  let cursor = LOG_START;
  for (;;) {
    const batch = await readAll(db, cursor, 10_000);
    if (batch.length === 0) return cursor;
    cursor = cursorAfter(cursor, batch);
  }
}

/** One line: position, time, type, then what matters of the event. */
export function formatEvent(e: StoredEvent, withStream = false): string {
  const d = (e.data ?? {}) as Record<string, unknown>;
  const parts: string[] = [];
  const add = (label: string, value: unknown) => {
    if (value !== undefined && value !== null && value !== '') parts.push(`${label}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  };
  if (e.type === 'TaskSubmitted') {
    const t = (d.task ?? {}) as Record<string, unknown>;
    add('type', t.type);
    add('tier', t.tier);
    add('priority', t.priority);
    add('maxAttempts', t.maxAttempts);
  }
  if (e.type === 'FogTierScaled') {
    add('tier', d.tier);
    add('replicas', `${String(d.from)}->${String(d.to)}`);
  }
  add('attempt', d.attempt);
  add('node', d.nodeId);
  add('actor', d.actor ?? e.metadata.actor);
  add('reason', d.reason);
  add('returns', e.type === 'TaskReturned' ? d.returns : undefined);
  add('progress', e.type === 'TaskProgressed' ? d.fraction : undefined);
  add('message', e.type === 'TaskProgressed' ? d.message : undefined);
  const error = d.error as { message?: string; code?: string } | null | undefined;
  if (error) add('error', `${error.code ?? ''}${error.code ? ': ' : ''}${error.message ?? ''}`);
  add('delayMs', d.delayMs);
  add('durationMs', d.durationMs);
  add('availableAt', e.type === 'TaskQueued' || e.type === 'TaskRetryScheduled' ? d.availableAt : undefined);
  add('trace', e.metadata.traceId);
  const at = typeof d.at === 'string' ? d.at : e.recordedAt.toISOString();
  const stream = withStream ? ` ${e.streamType}:${e.streamId}` : '';
  return `${String(e.position).padStart(8)}  ${at}${stream}  v${e.streamVersion} ${e.type.padEnd(20)} ${parts.join(' ')}`.trimEnd();
}

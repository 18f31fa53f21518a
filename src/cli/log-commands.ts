import { type Command, InvalidArgumentError } from 'commander';
import { isUuid, TaskNotFoundError } from '../domain/index.js';
import type { Config } from '../infra/config.js';
import { createPgListener } from '../infra/pg-listener.js';
import { headCursor, LOG_START, readFeedPage, readStream, type FeedFilter, type LogCursor, type StoredEvent } from '../store/index.js';
import { withPostgres } from './projection-commands.js';
import { getTaskGraph } from '../projections/index.js';
import { formatGraph } from './client-commands.js';

/** `fogsched task show <id>` and `fogsched events tail`: the log, read in a terminal. */
export function registerLogCommands(program: Command, deps: { config: () => Config }): void {
  program
    .command('task')
    .description('tasks: over the API (submit, get, list, ...) or from the event log (show)')
    .command('show <id>')
    .description("print the task's timeline (every event of its stream, oldest first), then its dependencies and dependants with their states")
    .option('--json', 'print the events as JSON lines (then the graph as one JSON line, when the task has dependencies or dependants)')
    .action(async (id: string, opts: { json?: boolean }) => {
      if (!isUuid(id)) throw new InvalidArgumentError(`task id must be a UUID, got ${JSON.stringify(id)}`);
      await withPostgres(deps.config(), async (pg) => {
        const events = await readStream(pg.db, id);
        if (events.length === 0) throw new TaskNotFoundError(id);
        for (const e of events) process.stdout.write(opts.json ? `${JSON.stringify(e)}\n` : `${formatEvent(e)}\n`);
        const tenant = (await pg.db.selectFrom('task_current').select('tenant').where('task_id', '=', id).executeTakeFirst())?.tenant;
        // A database not migrated to task_dependencies yet (42P01, undefined table) has no graph to show: the timeline is all.
        const graph = tenant === undefined ? null : await getTaskGraph(pg.db, tenant, id, { maxNodes: 10_000 }).catch((error: unknown) => {
          if ((error as { code?: unknown }).code === '42P01') return null;
          throw error;
        });
        if (!graph || graph.nodes.length <= 1) return;
        process.stdout.write(opts.json ? `${JSON.stringify({ graph })}\n` : `\n${formatGraph(graph)}`);
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
      const config = deps.config();
      await withPostgres(config, async (pg) => {
        // The api's event streams' reader, on the database directly: one LISTEN connection wakes it
        // when the log grows, and it reads below the safe horizon, so nothing is skipped or repeated.
        const listener = createPgListener({ url: config.DATABASE_URL, channel: 'fogsched_events', pollMs: config.SSE_POLL_MS, applicationName: 'fogsched-events-tail' });
        const stop = new AbortController();
        const onSignal = () => stop.abort();
        process.once('SIGINT', onSignal);
        process.once('SIGTERM', onSignal);
        let wake: (() => void) | undefined;
        let woken = true;
        const unsubscribe = listener.subscribe(() => {
          woken = true;
          wake?.();
        });
        const filter: FeedFilter = { ...(opts.type ? { types: opts.type } : {}), ...(opts.stream ? { streamId: opts.stream } : {}) };
        let cursor: LogCursor = opts.fromStart ? LOG_START : await headCursor(pg.db);
        let printed = 0;
        let heldDelayMs = 20;
        try {
          while (!stop.signal.aborted) {
            if (!woken) {
              await new Promise<void>((resolve) => {
                wake = resolve;
                stop.signal.addEventListener('abort', () => resolve(), { once: true });
              });
            }
            woken = false;
            const page = await readFeedPage(pg.db, cursor, filter);
            cursor = page.cursor;
            for (const { event: e } of page.events) {
              process.stdout.write(opts.json ? `${JSON.stringify(e)}\n` : `${formatEvent(e, true)}\n`);
              if (opts.limit && ++printed >= opts.limit) return;
            }
            if (!page.caughtUp) woken = true;
            else if (page.heldBack) {
              // Committed events wait for an older transaction to end, which may bring no notification.
              setTimeout(() => {
                woken = true;
                wake?.();
              }, heldDelayMs).unref();
              heldDelayMs = Math.min(heldDelayMs * 2, 1000);
            } else heldDelayMs = 20;
          }
        } finally {
          unsubscribe();
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          await listener.close();
        }
      });
    });
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
  add('availableAt', e.type === 'TaskSubmitted' || e.type === 'TaskQueued' || e.type === 'TaskRetryScheduled' ? d.availableAt : undefined);
  add('trace', e.metadata.traceId);
  const at = typeof d.at === 'string' ? d.at : e.recordedAt.toISOString();
  const stream = withStream ? ` ${e.streamType}:${e.streamId}` : '';
  return `${String(e.position).padStart(8)}  ${at}${stream}  v${e.streamVersion} ${e.type.padEnd(20)} ${parts.join(' ')}`.trimEnd();
}

import { readFileSync } from 'node:fs';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { createClient, FogschedApiError, type FogschedClient, type Priority, type Schedule, type Task, type TaskGraph, type TaskState, type WorkflowInput } from '../client/index.js';

/**
 * The commands that talk to a running API through the typed client (src/client): `task submit`,
 * `task get`, `task list`, `task wait`, `task cancel`, `task requeue`, `task graph`, `workflow submit`, `dlq list|requeue` and
 * `schedules list|get|create|pause|resume|delete`. They need no database, broker or Redis: only
 * `--url` (FOGSCHED_URL) and a credential (`--api-key`/FOGSCHED_API_KEY or `--token`/FOGSCHED_TOKEN).
 * `task show` and `events tail` (log-commands.ts) read the event log from DATABASE_URL instead.
 */

const PRIORITIES = ['high', 'normal', 'low'] as const;
const STATES = ['waiting', 'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'] as const;
const REASONS = ['non-retryable', 'max-attempts', 'delivery-limit', 'rejected', 'expired', 'timeout'] as const;

interface RemoteOptions {
  url: string;
  apiKey?: string;
  token?: string;
  json?: boolean;
}

/** An error whose message is the one line the CLI prints (main.ts prefixes `fogsched: `). */
export class CliError extends Error {}

export function registerClientCommands(program: Command): void {
  const task = program.commands.find((c) => c.name() === 'task') ?? program.command('task');

  remote(task.command('submit'))
    .description('submit a task; with --wait, wait until it finishes (exit 0 only when it succeeded)')
    .requiredOption('--type <type>', 'task type (handler name)')
    .option('--payload <json|@file>', 'payload as JSON text, or @path of a JSON file')
    .addOption(new Option('--priority <priority>', 'scheduling priority').choices(PRIORITIES))
    .option('--max-attempts <n>', 'attempts before the task fails', positiveInt)
    .option('--timeout-ms <ms>', 'abort a run after this long', positiveInt)
    .option('--not-before <time>', 'do not start before this RFC 3339 time')
    .option('--deadline <time>', 'fail as expired when not started by this RFC 3339 time')
    .option('--cpu <cores>', 'resources: cores (with --memory-mb; picks the tier)', positiveNumber)
    .option('--memory-mb <mb>', 'resources: memory in MB (with --cpu)', positiveInt)
    .option('--idempotency-key <key>', 'a repeated submit with this key returns the first task')
    .option('--wait', 'wait until the task succeeded, failed or was cancelled')
    .option('--wait-timeout-ms <ms>', 'give up waiting after this long (exit 1)', positiveInt)
    .action(
      act(
        async (
          opts: RemoteOptions & {
            type: string;
            payload?: string;
            priority?: Priority;
            maxAttempts?: number;
            timeoutMs?: number;
            notBefore?: string;
            deadline?: string;
            cpu?: number;
            memoryMb?: number;
            idempotencyKey?: string;
            wait?: boolean;
            waitTimeoutMs?: number;
          },
        ) => {
          if ((opts.cpu === undefined) !== (opts.memoryMb === undefined)) throw new CliError('--cpu and --memory-mb go together');
          const payload = opts.payload === undefined ? undefined : parsePayload(opts.payload);
          const client = clientOf(opts);
          const submitted = await client.submit(
            {
              type: opts.type,
              ...(payload !== undefined ? { payload } : {}),
              ...(opts.priority ? { priority: opts.priority } : {}),
              ...(opts.maxAttempts !== undefined ? { maxAttempts: opts.maxAttempts } : {}),
              ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
              ...(opts.notBefore ? { notBefore: opts.notBefore } : {}),
              ...(opts.deadline ? { deadline: opts.deadline } : {}),
              ...(opts.cpu !== undefined && opts.memoryMb !== undefined ? { resources: { cpu: opts.cpu, memoryMb: opts.memoryMb } } : {}),
            },
            opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {},
          );
          if (!opts.wait) {
            print(opts, submitted, () => `${submitted.id}  ${submitted.state}  type=${submitted.type} priority=${submitted.priority} tier=${submitted.tier}${warnings(submitted)}\n`);
            return;
          }
          if (!opts.json) process.stderr.write(`submitted ${submitted.id}, waiting\n`);
          const done = await client.waitFor(submitted.id, opts.waitTimeoutMs !== undefined ? { timeoutMs: opts.waitTimeoutMs } : {});
          print(opts, done, () => formatTask(done));
          if (done.state !== 'succeeded') process.exitCode = 1;
        },
      ),
    );

  remote(task.command('get <id>'))
    .description('the task as the API has it (state, attempts, output, last error)')
    .action(act(async (id: string, opts: RemoteOptions) => {
      const t = await clientOf(opts).get(id);
      print(opts, t, () => formatTask(t));
    }));

  remote(task.command('graph <id>'))
    .description("the tasks it depends on and those depending on it, transitively, with their states")
    .action(act(async (id: string, opts: RemoteOptions) => {
      const g = await clientOf(opts).graph(id);
      print(opts, g, () => formatGraph(g));
    }));

  remote(task.command('list'))
    .description('tasks, newest first')
    .addOption(new Option('--state <state>', 'only this state').choices(STATES))
    .option('--type <type>', 'only this type')
    .addOption(new Option('--priority <priority>', 'only this priority').choices(PRIORITIES))
    .option('--tier <tier>', 'only this tier')
    .option('--limit <n>', 'at most this many (pages are followed)', positiveInt, 50)
    .action(act(async (opts: RemoteOptions & { state?: TaskState; type?: string; priority?: Priority; tier?: string; limit: number }) => {
      const { state, type, priority, tier } = opts;
      const tasks = await take(clientOf(opts).list({ state, type, priority, tier, limit: Math.min(opts.limit, 500) }), opts.limit);
      print(opts, tasks, () => taskTable(tasks));
    }));

  remote(task.command('wait <id>'))
    .description('wait until the task succeeded, failed or was cancelled (exit 0 only when it succeeded)')
    .option('--timeout-ms <ms>', 'give up after this long (exit 1)', positiveInt)
    .action(act(async (id: string, opts: RemoteOptions & { timeoutMs?: number }) => {
      const t = await clientOf(opts).waitFor(id, opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {});
      print(opts, t, () => formatTask(t));
      if (t.state !== 'succeeded') process.exitCode = 1;
    }));

  remote(task.command('cancel <id>'))
    .description('cancel a task that has not finished')
    .option('--reason <text>', 'recorded with the cancel')
    .action(act(async (id: string, opts: RemoteOptions & { reason?: string }) => {
      const t = await clientOf(opts).cancel(id, opts.reason !== undefined ? { reason: opts.reason } : {});
      print(opts, t, () => `${t.id}  ${t.state}\n`);
    }));

  remote(task.command('requeue <id>'))
    .description('put a failed task back with fresh attempts')
    .action(act(async (id: string, opts: RemoteOptions) => {
      const t = await clientOf(opts).requeue(id);
      print(opts, t, () => `${t.id}  ${t.state}  attempt=${t.attempt}/${t.maxAttempts}\n`);
    }));

  const workflow = program.command('workflow').description('workflows: named steps that depend on each other, over the API');
  remote(workflow.command('submit'))
    .description('submit a workflow from a JSON file ({ name?, onDependencyFailure?, steps: [{ step, type, dependsOn?, ... }] }, see docs/workflows.md)')
    .requiredOption('--file <path>', 'the workflow as JSON (- for standard input)')
    .option('--idempotency-key <key>', 'a retried submit with this key returns the same tasks')
    .action(act(async (opts: RemoteOptions & { file: string; idempotencyKey?: string }) => {
      let body: WorkflowInput;
      try {
        body = JSON.parse(readFileSync(opts.file === '-' ? 0 : opts.file, 'utf8')) as WorkflowInput;
      } catch (error) {
        throw new CliError(`--file ${opts.file}: ${(error as Error).message}`);
      }
      const r = await clientOf(opts).submitWorkflow(body, opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {});
      print(opts, r, () =>
        table(
          ['STEP', 'ID', 'STATE', 'TIER', 'DEPENDS ON'],
          Object.entries(r.steps).map(([step, t]) => [step, t.id, t.state, t.tier, (t.dependsOn ?? []).map((d) => stepOf(r.steps, d)).join(',') + warnings(t)]),
          'no steps',
        ),
      );
    }));

  const dlq = program.command('dlq').description('failed tasks (what the dead-letter queue turned into), over the API');
  const dlqFilter = (cmd: Command) =>
    cmd
      .option('--type <type>', 'only this type')
      .addOption(new Option('--reason <reason>', 'only this failure reason').choices(REASONS))
      .option('--since <time>', 'failed at or after this RFC 3339 time')
      .option('--until <time>', 'failed before this RFC 3339 time');
  type DlqFilter = { type?: string; reason?: (typeof REASONS)[number]; since?: string; until?: string };

  dlqFilter(remote(dlq.command('list')))
    .description('failed tasks, newest first, with their reason and last error')
    .option('--limit <n>', 'at most this many (pages are followed)', positiveInt, 50)
    .action(act(async (opts: RemoteOptions & DlqFilter & { limit: number }) => {
      const { type, reason, since, until } = opts;
      const tasks = await take(clientOf(opts).dlq.list({ type, reason, since, until, limit: Math.min(opts.limit, 500) }), opts.limit);
      print(opts, tasks, () => taskTable(tasks, true));
    }));

  dlqFilter(remote(dlq.command('requeue')))
    .description('requeue the failed tasks matching the filter (up to --limit per call)')
    .option('--dry-run', 'only count what would be requeued')
    .option('--limit <n>', 'requeue at most this many (the API allows 1,000)', positiveInt)
    .action(act(async (opts: RemoteOptions & DlqFilter & { dryRun?: boolean; limit?: number }) => {
      const { type, reason, since, until } = opts;
      const r = await clientOf(opts).dlq.requeue({ type, reason, since, until, dryRun: opts.dryRun === true, ...(opts.limit !== undefined ? { limit: opts.limit } : {}) });
      print(opts, r, () => (r.dryRun ? `${r.matched} failed task(s) match; nothing requeued (dry run)\n` : `${r.requeued} of ${r.matched} failed task(s) requeued\n${r.taskIds.map((i) => `${i}\n`).join('')}`));
    }));

  const schedules = program.command('schedules').description('recurring schedules, over the API');
  remote(schedules.command('list'))
    .description('schedules, newest first')
    .option('--limit <n>', 'at most this many (pages are followed)', positiveInt, 50)
    .action(act(async (opts: RemoteOptions & { limit: number }) => {
      const items = await take(clientOf(opts).schedules.list({ limit: Math.min(opts.limit, 500) }), opts.limit);
      print(opts, items, () => scheduleTable(items));
    }));
  remote(schedules.command('get <id>'))
    .description('one schedule')
    .action(act(async (id: string, opts: RemoteOptions) => {
      const s = await clientOf(opts).schedules.get(id);
      print(opts, s, () => scheduleTable([s]));
    }));
  remote(schedules.command('create'))
    .description('create a schedule that submits a task at each time its cron names')
    .requiredOption('--cron <expr>', 'cron expression (5 fields, or 6 with seconds first)')
    .requiredOption('--type <type>', 'task type each run submits')
    .option('--name <name>', 'a name to recognise it by')
    .option('--timezone <tz>', 'IANA time zone of the cron (default UTC)')
    .addOption(new Option('--catch-up <mode>', 'missed runs after downtime: skip them, or run once').choices(['skip', 'once']))
    .option('--payload <json|@file>', 'payload of each task, as JSON text or @path of a JSON file')
    .addOption(new Option('--priority <priority>', 'priority of each task').choices(PRIORITIES))
    .action(act(async (opts: RemoteOptions & { cron: string; type: string; name?: string; timezone?: string; catchUp?: 'skip' | 'once'; payload?: string; priority?: Priority }) => {
      const payload = opts.payload === undefined ? undefined : parsePayload(opts.payload);
      const s = await clientOf(opts).schedules.create({
        cron: opts.cron,
        ...(opts.name ? { name: opts.name } : {}),
        ...(opts.timezone ? { timezone: opts.timezone } : {}),
        ...(opts.catchUp ? { catchUp: opts.catchUp } : {}),
        template: { type: opts.type, ...(payload !== undefined ? { payload } : {}), ...(opts.priority ? { priority: opts.priority } : {}) },
      });
      print(opts, s, () => scheduleTable([s]));
    }));
  for (const [verb, what] of [['pause', 'stop firing until resumed'], ['resume', 'fire again from the next time due']] as const) {
    remote(schedules.command(`${verb} <id>`))
      .description(what)
      .action(act(async (id: string, opts: RemoteOptions) => {
        const s = await clientOf(opts).schedules[verb](id);
        print(opts, s, () => `${s.id}  ${s.state}\n`);
      }));
  }
  remote(schedules.command('delete <id>'))
    .description('delete a schedule (tasks it submitted stay)')
    .action(act(async (id: string, opts: RemoteOptions) => {
      await clientOf(opts).schedules.delete(id);
      print(opts, { id, deleted: true }, () => `${id}  deleted\n`);
    }));
}

/** The options every API command has. */
function remote(cmd: Command): Command {
  return cmd
    .addOption(new Option('--url <url>', 'base URL of the API').env('FOGSCHED_URL').default('http://127.0.0.1:8080').argParser(httpUrl))
    .addOption(new Option('--api-key <key>', 'API key (sent as X-API-Key)').env('FOGSCHED_API_KEY'))
    .addOption(new Option('--token <jwt>', 'bearer token, e.g. a JWT (sent as Authorization: Bearer)').env('FOGSCHED_TOKEN'))
    .option('--json', 'print JSON (for scripts) instead of a table');
}

function clientOf(opts: RemoteOptions): FogschedClient {
  return createClient({ baseUrl: opts.url, ...(opts.apiKey ? { apiKey: opts.apiKey } : {}), ...(opts.token ? { token: opts.token } : {}) });
}

/** Runs an action; an API error becomes one line: `<status> <code>: <detail>`. */
function act<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (error) {
      if (error instanceof FogschedApiError) {
        const line = error.status === 0 ? `${error.detail}` : `${error.status} ${error.code}: ${error.detail}`;
        throw new CliError(line.replace(/\s*\n\s*/g, ' '), { cause: error });
      }
      throw error;
    }
  };
}

/** `--payload '{"a":1}'` or `--payload @payload.json`. */
export function parsePayload(value: string): unknown {
  let text = value;
  let source = '--payload';
  if (value.startsWith('@')) {
    const path = value.slice(1);
    source = `--payload ${value}`;
    try {
      text = readFileSync(path, 'utf8');
    } catch (error) {
      const code = (error as { code?: string }).code;
      throw new CliError(`${source}: cannot read ${path} (${code === 'ENOENT' ? 'no such file' : (code ?? (error as Error).message)})`);
    }
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new CliError(`${source} is not valid JSON: ${(error as Error).message}`);
  }
}

function httpUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError('must be a URL such as http://127.0.0.1:8080');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError('must be an http:// or https:// URL');
  return value;
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number ≥ 1');
  return n;
}

function positiveNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('must be a number > 0');
  return n;
}

async function take<T>(items: AsyncIterable<T>, limit: number): Promise<T[]> {
  const out: T[] = [];
  if (limit <= 0) return out;
  for await (const item of items) {
    out.push(item);
    if (out.length >= limit) break;
  }
  return out;
}

function print(opts: { json?: boolean }, value: unknown, text: () => string): void {
  process.stdout.write(opts.json ? `${JSON.stringify(value, null, 2)}\n` : text());
}

const warnings = (t: Task) => (t.warnings?.length ? `  (warning: ${t.warnings.join('; ')})` : '');

/** One task as `field  value` lines. */
export function formatTask(t: Task): string {
  const rows: [string, unknown][] = [
    ['id', t.id],
    ['type', t.type],
    ['state', t.state],
    ['priority', t.priority],
    ['tier', t.tier],
    ['name', t.name],
    ['attempt', `${t.attempt}/${t.maxAttempts}`],
    ['depends on', t.dependsOn?.length ? `${t.dependsOn.join(', ')} (on failure: ${t.onDependencyFailure ?? 'cancel'})` : null],
    ['placement', t.placement ? placementText(t.placement) + (t.fallbackAfterMs !== undefined ? ` (fallback after ${t.fallbackAfterMs} ms)` : '') : null],
    ['node', t.nodeId],
    ['submitted', t.submittedAt],
    ['started', t.startedAt],
    ['finished', t.finishedAt],
    ['failure', t.failureReason],
    ['error', t.lastError ? `${t.lastError.code}: ${t.lastError.message}` : null],
    ['output', t.output === null || t.output === undefined ? null : JSON.stringify(t.output)],
  ];
  return rows
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k.padEnd(10)} ${String(v as string)}\n`)
    .join('');
}

function placementText(p: NonNullable<Task['placement']>): string {
  return [...(p.zone ? [`zone=${p.zone}`] : []), ...Object.entries(p.labels ?? {}).map(([k, v]) => `${k}=${v}`)].join(' ');
}

/** The step a task id belongs to in a workflow answer, else the id. */
function stepOf(steps: Record<string, Task>, id: string): string {
  return Object.entries(steps).find(([, t]) => t.id === id)?.[0] ?? id;
}

/**
 * A task's graph as text: what it depends on (ancestors, nearest first, indented by depth) and
 * what depends on it (descendants), each with its state.
 */
export function formatGraph(g: TaskGraph): string {
  const line = (n: TaskGraph['nodes'][number]) =>
    `${'  '.repeat(n.depth)}${n.taskId}  ${n.state.padEnd(9)}  ${n.tier}${n.name ? `  ${n.name}` : ''}${n.placement ? `  [${placementText(n.placement)}]` : ''}\n`;
  const self = g.nodes.find((n) => n.relation === 'self');
  const ancestors = g.nodes.filter((n) => n.relation === 'ancestor');
  const descendants = g.nodes.filter((n) => n.relation === 'descendant');
  return [
    self ? line(self) : '',
    `depends on (${ancestors.length}):\n`,
    ...(ancestors.length ? ancestors.map(line) : ['  none\n']),
    `dependants (${descendants.length}):\n`,
    ...(descendants.length ? descendants.map(line) : ['  none\n']),
    g.truncated ? 'truncated: the graph has more tasks than one answer holds (10,000)\n' : '',
  ].join('');
}

/** Columns padded to their widest cell; an empty list says so. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[], empty: string): string {
  if (rows.length === 0) return `${empty}\n`;
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].map((l) => `${l}\n`).join('');
}

function taskTable(tasks: readonly Task[], failed = false): string {
  const headers = failed ? ['ID', 'TYPE', 'REASON', 'ATTEMPT', 'FINISHED', 'ERROR'] : ['ID', 'TYPE', 'STATE', 'PRIORITY', 'TIER', 'ATTEMPT', 'SUBMITTED'];
  const rows = tasks.map((t) =>
    failed
      ? [t.id, t.type, t.failureReason ?? '', `${t.attempt}/${t.maxAttempts}`, t.finishedAt ?? '', t.lastError ? `${t.lastError.code}: ${t.lastError.message}` : '']
      : [t.id, t.type, t.state, t.priority, t.tier, `${t.attempt}/${t.maxAttempts}`, t.submittedAt],
  );
  return table(headers, rows, failed ? 'no failed tasks' : 'no tasks');
}

function scheduleTable(items: readonly Schedule[]): string {
  return table(
    ['ID', 'NAME', 'STATE', 'CRON', 'TIMEZONE', 'TYPE', 'NEXT'],
    items.map((s) => [s.id, s.name, s.state, s.cron, s.timezone, s.template.type, s.nextFireAt ?? '']),
    'no schedules',
  );
}

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropE2eEnvs, e2eEnv, freePort, spawnFogsched, waitReady } from '../helpers/processes.js';

// Runs the BUILT CLI (bin/fogsched.js → dist/): `npm run build` first.

/**
 * The CLI as a client of a running fogsched (api, relay, ingest and a fog node in one process,
 * API keys on): task, dlq and schedules commands over HTTP, text and --json, and each class of
 * failure as one line on stderr with a non-zero exit.
 */

const KEY = 'cli-client-operator-key';
let env: Awaited<ReturnType<typeof e2eEnv>>;
let dir: string;

beforeAll(async () => {
  env = await e2eEnv('cliclient');
  dir = mkdtempSync(join(tmpdir(), 'fogsched-cli-'));
  const server = spawnFogsched(['start', '--roles', 'api,relay,ingest,fog-node'], { ...env.env, API_KEYS: `acme:operator:${KEY}` });
  await waitReady(env.port, server, 60_000);
});

afterAll(async () => {
  await dropE2eEnvs();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Finished {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a client command against the test API (flags, unless `useEnv`: FOGSCHED_URL/FOGSCHED_API_KEY). */
async function fog(args: string[], opts: { key?: string; url?: string; useEnv?: boolean; raw?: boolean } = {}): Promise<Finished> {
  const url = opts.url ?? env.base;
  const key = opts.key ?? KEY;
  const p = spawnFogsched(opts.useEnv || opts.raw ? args : [...args, '--url', url, '--api-key', key], opts.useEnv ? { FOGSCHED_URL: url, FOGSCHED_API_KEY: key } : {});
  let stdout = '';
  let stderr = '';
  p.proc.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  p.proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => p.proc.once('close', resolve));
  return { code, stdout, stderr };
}

const STACK = /^\s+at .+:\d+/m;

/** One line on stderr, nothing on stdout, exit 1, no stack trace. */
function expectOneLineFailure(r: Finished, pattern: RegExp): void {
  expect(r.code, r.stdout + r.stderr).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr).toMatch(/^fogsched: [^\n]+\n$/);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(STACK);
}

describe('fogsched as an API client (built)', () => {
  it('task submit --wait runs a task to the end; get, list (table and JSON), show from the log', async () => {
    const submitted = await fog(['task', 'submit', '--type', 'echo', '--payload', '{"value":7}', '--priority', 'high', '--wait', '--json']);
    expect(submitted.code, submitted.stderr).toBe(0);
    const task = JSON.parse(submitted.stdout);
    expect(task).toMatchObject({ type: 'echo', state: 'succeeded', priority: 'high', output: 7 });

    const got = await fog(['task', 'get', task.id]);
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout).toMatch(/^state\s+succeeded$/m);
    expect(got.stdout).toMatch(/^output\s+7$/m);

    const payloadFile = join(dir, 'payload.json');
    writeFileSync(payloadFile, '{"ms": 1}');
    const later = await fog(['task', 'submit', '--type', 'sleep', '--payload', `@${payloadFile}`, '--not-before', new Date(Date.now() + 3_600_000).toISOString()], { useEnv: true });
    expect(later.code, later.stderr).toBe(0);
    const [laterId, laterState] = later.stdout.trim().split(/\s+/);
    expect(laterState).toBe('scheduled');

    const table = await fog(['task', 'list', '--type', 'echo']);
    expect(table.code, table.stderr).toBe(0);
    const [header, ...rows] = table.stdout.trim().split('\n');
    expect(header).toMatch(/^ID\s+TYPE\s+STATE\s+PRIORITY\s+TIER\s+ATTEMPT\s+SUBMITTED$/);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatch(new RegExp(`^${task.id}\\s+echo\\s+succeeded\\s+high\\s+light\\s+1/3\\s`));
    const json = await fog(['task', 'list', '--state', 'scheduled', '--json']);
    expect(JSON.parse(json.stdout).map((t: { id: string }) => t.id)).toEqual([laterId]);

    const cancelled = await fog(['task', 'cancel', laterId!, '--reason', 'not needed']);
    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(cancelled.stdout).toBe(`${laterId}  cancelled\n`);

    // `task show` still reads the event log from DATABASE_URL.
    const shown = spawnFogsched(['task', 'show', task.id], env.env);
    let out = '';
    shown.proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    expect(await new Promise((r) => shown.proc.once('close', r))).toBe(0);
    expect(out).toMatch(/TaskSubmitted[\s\S]*TaskSucceeded/);
  });

  it('a failed task: submit --wait exits 1, dlq list shows it, dlq requeue --dry-run counts, task requeue puts it back', async () => {
    const failed = await fog(['task', 'submit', '--type', 'fail', '--payload', '{"message":"no"}', '--max-attempts', '1', '--wait']);
    expect(failed.code, failed.stdout + failed.stderr).toBe(1);
    expect(failed.stdout).toMatch(/^state\s+failed$/m);
    const id = /^id\s+(\S+)$/m.exec(failed.stdout)![1]!;

    const dlq = await fog(['dlq', 'list', '--type', 'fail']);
    expect(dlq.code, dlq.stderr).toBe(0);
    expect(dlq.stdout).toMatch(/^ID\s+TYPE\s+REASON\s+ATTEMPT\s+FINISHED\s+ERROR$/m);
    expect(dlq.stdout).toMatch(new RegExp(`^${id}\\s+fail\\s+non-retryable\\s+1/1\\s+\\S+\\s+fail: no$`, 'm'));

    const dry = await fog(['dlq', 'requeue', '--type', 'fail', '--dry-run', '--json']);
    expect(JSON.parse(dry.stdout)).toMatchObject({ matched: 1, requeued: 0, dryRun: true });
    const requeued = await fog(['task', 'requeue', id]);
    expect(requeued.code, requeued.stderr).toBe(0);
    expect(requeued.stdout).toMatch(new RegExp(`^${id}  (queued|running|failed)  attempt=`));
  });

  it('schedules create, list, pause, resume, delete', async () => {
    const created = await fog(['schedules', 'create', '--name', 'nightly', '--cron', '0 2 * * *', '--timezone', 'Europe/Berlin', '--type', 'noop', '--json']);
    expect(created.code, created.stderr).toBe(0);
    const s = JSON.parse(created.stdout);
    expect(s).toMatchObject({ name: 'nightly', state: 'active', timezone: 'Europe/Berlin', template: { type: 'noop' } });

    const list = await fog(['schedules', 'list']);
    expect(list.stdout).toMatch(/^ID\s+NAME\s+STATE\s+CRON\s+TIMEZONE\s+TYPE\s+NEXT$/m);
    expect(list.stdout).toMatch(new RegExp(`^${s.id}\\s+nightly\\s+active\\s+0 2 \\* \\* \\*\\s+Europe/Berlin\\s+noop\\s+\\S+$`, 'm'));
    expect((await fog(['schedules', 'pause', s.id])).stdout).toBe(`${s.id}  paused\n`);
    expect((await fog(['schedules', 'resume', s.id])).stdout).toBe(`${s.id}  active\n`);
    expect((await fog(['schedules', 'delete', s.id])).stdout).toBe(`${s.id}  deleted\n`);
    expect((await fog(['schedules', 'list'])).stdout).toBe('no schedules\n');
  });

  it('each failure is one line and exit 1: bad JSON, missing file, 401, 404, 400, 422, unreachable, bad option', async () => {
    expectOneLineFailure(await fog(['task', 'submit', '--type', 'noop', '--payload', '{not json']), /^fogsched: --payload is not valid JSON: /);
    expectOneLineFailure(await fog(['task', 'submit', '--type', 'noop', '--payload', `@${join(dir, 'missing.json')}`]), /cannot read .*missing\.json \(no such file\)/);
    expectOneLineFailure(await fog(['task', 'list'], { key: 'wrong-key' }), /^fogsched: 401 UNAUTHORIZED: /);
    expectOneLineFailure(await fog(['task', 'get', '0193a5b2-0000-7000-8000-000000000000']), /^fogsched: 404 TASK_NOT_FOUND: /);
    expectOneLineFailure(await fog(['task', 'submit', '--type', 'bad type!']), /^fogsched: 400 VALIDATION_FAILED: body\/type /);
    expectOneLineFailure(await fog(['task', 'submit', '--type', 'big', '--cpu', '60', '--memory-mb', '64']), /^fogsched: 422 NO_TIER_FITS: /);
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    expectOneLineFailure(await fog(['task', 'list'], { url: nowhere }), new RegExp(`^fogsched: cannot reach ${nowhere}: connection refused`));
    expectOneLineFailure(await fog(['task', 'list', '--state', 'done']), /^fogsched: option '--state <state>' argument 'done' is invalid/);
    expectOneLineFailure(await fog(['task', 'list'], { url: 'ftp://x' }), /--url .* must be an http:\/\/ or https:\/\/ URL/);
    // The log commands' own argument checks still print their line (exitOverride lets them through).
    expectOneLineFailure(await fog(['task', 'show', 'not-a-uuid'], { raw: true }), /^fogsched: task id must be a UUID, got "not-a-uuid"$/m);
  });
});

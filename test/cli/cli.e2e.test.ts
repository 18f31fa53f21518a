import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { killAll, spawnFogsched, testEnv, waitReady, type Spawned } from '../helpers/processes.js';

// Runs the BUILT CLI (bin/fogsched.js → dist/): `npm run build` first.

interface Finished {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

/** Spawns the CLI and keeps stdout and stderr apart. */
function start(args: string[], env: Record<string, string>): Spawned & { stdout: () => string; stderr: () => string; closed: Promise<number | null> } {
  const spawned = spawnFogsched(args, env);
  // 'close' comes after 'exit' and after the pipes are drained: all output is in.
  const closed = new Promise<number | null>((resolve) => spawned.proc.once('close', (code) => resolve(code)));
  let stdout = '';
  let stderr = '';
  spawned.proc.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  spawned.proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return Object.assign(spawned, { stdout: () => stdout, stderr: () => stderr, closed });
}

/** Runs a command that should end on its own; SIGKILLs it (and fails) if it does not within `timeoutMs`. */
async function run(args: string[], env: Record<string, string>, timeoutMs = 30_000): Promise<Finished> {
  const began = performance.now();
  const p = start(args, env);
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    p.closed,
    new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
  if (code === 'timeout') {
    await p.kill('SIGKILL');
    throw new Error(`fogsched ${args.join(' ')} did not exit within ${timeoutMs} ms:\n${p.output()}`);
  }
  return { code, stdout: p.stdout(), stderr: p.stderr(), ms: performance.now() - began };
}

const STACK = /^\s+at .+:\d+/m;

let t: Awaited<ReturnType<typeof testEnv>>;
let admin: pg.Client | undefined;

beforeAll(async () => {
  t = await testEnv('cli');
});
afterEach(async () => {
  // A test that leaves a process running is a bug; this is the safety net.
  await killAll();
});
afterAll(async () => {
  await killAll();
  await admin?.end();
  await t?.drop();
});

async function query<T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> {
  if (!admin) {
    admin = new pg.Client({ connectionString: t.dbUrl });
    await admin.connect();
  }
  return (await admin.query<T>(text, values)).rows;
}

describe('fogsched CLI (built)', () => {
  it('migrate creates the missing database, applies the migrations, prints "migrations applied" and exits 0; again is a no-op', async () => {
    const first = await run(['migrate'], t.env);
    expect(first.code, first.stdout + first.stderr).toBe(0);
    expect(first.stdout).toContain('migrations applied');
    expect(first.stderr).toBe('');
    const applied = await query<{ name: string }>('SELECT name FROM pgmigrations');
    expect(applied.length).toBeGreaterThan(0);
    const tables = await query<{ table_name: string }>(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`);
    expect(tables.map((r) => r.table_name)).toEqual(expect.arrayContaining(['events', 'outbox', 'task_current', 'task_history', 'idempotency_keys']));

    const again = await run(['migrate'], t.env);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect(again.stdout).toContain('migrations applied');
    expect(await query('SELECT name FROM pgmigrations')).toHaveLength(applied.length);
  });

  it('doctor prints an ok line for postgresql, rabbitmq and redis and exits 0', async () => {
    const res = await run(['doctor'], t.env);
    expect(res.code, res.stdout + res.stderr).toBe(0);
    const lines = res.stdout.trim().split('\n');
    const pgLine = lines.find((l) => /^ok\s+postgresql\b/.test(l));
    expect(pgLine).toMatch(/migrations applied/);
    // A server without autovacuum is named: the outbox and task_current keep their dead rows.
    const [autovacuum] = await query<{ autovacuum: string }>('SHOW autovacuum');
    if (autovacuum?.autovacuum === 'off') expect(pgLine).toContain('warning: autovacuum is off');
    else expect(pgLine).not.toContain('autovacuum');
    expect(lines.some((l) => /^ok\s+rabbitmq\b/.test(l))).toBe(true);
    expect(lines.some((l) => /^ok\s+redis\b/.test(l))).toBe(true);
    expect(res.stdout).not.toMatch(/FAIL/);
  });

  it('doctor piped into a reader that closes early (| head -1) exits 0 without a stack trace', async () => {
    const spawned = spawnFogsched(['doctor'], t.env);
    let stderr = '';
    spawned.proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    // The reader goes away before the first line is written.
    spawned.proc.stdout?.destroy();
    const code = await new Promise<number | null>((resolve) => spawned.proc.once('close', (c) => resolve(c)));
    expect(stderr).not.toMatch(/EPIPE/);
    expect(stderr).not.toMatch(STACK);
    expect(code).toBe(0);
  });

  it('doctor with Redis unreachable exits 1, says FAIL for redis and how to start it', async () => {
    const res = await run(['doctor'], { ...t.env, REDIS_URL: 'redis://127.0.0.1:1' });
    expect(res.code, res.stdout + res.stderr).toBe(1);
    const lines = res.stdout.trim().split('\n');
    const fail = lines.findIndex((l) => /^FAIL\s+redis\b/.test(l));
    expect(fail, res.stdout).toBeGreaterThanOrEqual(0);
    expect(lines[fail]).toContain('redis://127.0.0.1:1');
    expect(lines[fail + 1]).toMatch(/start it with: .*redis-server/);
    expect(lines.some((l) => /^ok\s+postgresql\b/.test(l))).toBe(true);
    expect(lines.some((l) => /^ok\s+rabbitmq\b/.test(l))).toBe(true);
    expect(res.stdout + res.stderr).not.toMatch(STACK);
    expect(res.ms).toBeLessThan(15_000);
  });

  it('start --roles api serves /docs and a task submitted over HTTP reads back with its history; SIGTERM exits 0 promptly', async () => {
    const app = start(['start', '--roles', 'api'], t.env);
    await waitReady(t.port, app);
    const base = `http://127.0.0.1:${t.port}`;

    const docs = await fetch(`${base}/docs`);
    expect(docs.status).toBe(200);
    expect(await docs.text()).toMatch(/<html/i);
    const openapi = (await (await fetch(`${base}/docs/json`)).json()) as { paths: Record<string, unknown> };
    expect(openapi.paths).toHaveProperty('/v1/tasks');

    const submitted = await fetch(`${base}/v1/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-actor': 'e2e' },
      body: JSON.stringify({ type: 'noop', payload: { hello: 'cli' }, priority: 'high' }),
    });
    expect(submitted.status).toBe(202);
    const task = (await submitted.json()) as { id: string; state: string; tier: string; priority: string };
    expect(task).toMatchObject({ state: 'queued', tier: 'light', priority: 'high' });
    const location = submitted.headers.get('location');
    expect(location).toBe(`/v1/tasks/${task.id}`);

    const read = await fetch(`${base}${location}`);
    expect(read.status).toBe(200);
    expect(await read.json()).toMatchObject({ id: task.id, type: 'noop', payload: { hello: 'cli' } });

    const history = (await (await fetch(`${base}/v1/tasks/${task.id}/history`)).json()) as { events: { type: string; actor: string | null }[] };
    expect(history.events.map((e) => e.type)).toEqual(['TaskSubmitted']);
    // X-Actor is not the actor (the credential is: anonymous on an open API); it is kept as onBehalfOf in the event metadata.
    expect(history.events[0]?.actor).toBe('anonymous');

    const listed = (await (await fetch(`${base}/v1/tasks?limit=10`)).json()) as { items: { id: string }[] };
    expect(listed.items.map((i) => i.id)).toContain(task.id);

    const problem = await fetch(`${base}/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(problem.status).toBe(400);
    expect(problem.headers.get('content-type')).toMatch(/^application\/problem\+json/);

    // Written to PostgreSQL, with its dispatch row.
    expect(await query('SELECT routing_key FROM outbox WHERE stream_id = $1', [task.id])).toEqual([{ routing_key: 'light.high' }]);

    const began = performance.now();
    const code = await app.kill('SIGTERM');
    expect(code, app.output()).toBe(0);
    expect(performance.now() - began).toBeLessThan(5000);
    expect(app.stderr()).not.toMatch(STACK);
    await expect(fetch(`${base}/healthz`)).rejects.toThrow();
  });

  it.each([['migrate'], ['doctor'], ['start', '--roles', 'api']])('PORT=abc fogsched %s exits 1 with one line on stderr naming PORT, no stack', async (...args) => {
    const res = await run(args, { ...t.env, PORT: 'abc' });
    expect(res.code, res.stdout + res.stderr).toBe(1);
    const lines = res.stderr.trimEnd().split('\n');
    expect(lines, res.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^fogsched: .*PORT/);
    expect(lines[0]).toContain('abc');
    expect(res.stderr).not.toMatch(STACK);
    expect(res.stdout).not.toContain('migrations applied');
  });

  it('start --roles nope exits non-zero with a clear message and starts nothing', async () => {
    const res = await run(['start', '--roles', 'nope'], t.env);
    expect(res.code).not.toBe(0);
    expect(res.code).not.toBeNull();
    expect(res.stderr).toMatch(/unknown role nope/);
    expect(res.stderr).toMatch(/roles are api/);
    expect(res.stderr).not.toMatch(STACK);
    await expect(fetch(`http://127.0.0.1:${t.port}/healthz`)).rejects.toThrow();
  });

  it('start with PostgreSQL unreachable exits 1 with one line pointing at doctor (no hang, no stack)', async () => {
    const res = await run(['start', '--roles', 'api'], { ...t.env, DATABASE_URL: 'postgres://root@127.0.0.1:1/fogsched', PG_CONNECT_TIMEOUT_MS: '500' });
    expect(res.code, res.stdout + res.stderr).toBe(1);
    const lines = res.stderr.trimEnd().split('\n');
    expect(lines, res.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^fogsched: cannot reach PostgreSQL.*fogsched doctor/);
    expect(res.stderr).not.toMatch(STACK);
    expect(res.ms).toBeLessThan(15_000);
  });
});

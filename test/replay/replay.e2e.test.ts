import { afterEach, describe, expect, it } from 'vitest';
import { createPostgres } from '../../src/infra/postgres.js';
import { topologyNames } from '../../src/outbox/index.js';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, postJson, spawnFogsched, waitReady } from '../helpers/processes.js';
import { seedTasks } from '../helpers/seed-tasks.js';

afterEach(dropE2eEnvs);

/** Runs a fogsched command to its end; its exit code and output. */
async function run(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const p = spawnFogsched(args, env);
  const code = await p.exited;
  return { code, out: p.output() };
}

async function seed(dbUrl: string, n: number) {
  const db = createPostgres({ url: dbUrl, poolMax: 2, connectTimeoutMs: 3000, statementTimeoutMs: 0 });
  try {
    return await seedTasks(db.db, topologyNames('unused_'), n);
  } finally {
    await db.close();
  }
}

describe('projection rebuild, verify and the log in a terminal', () => {
  it('rebuilds while tasks are submitted and run: nothing committed meanwhile is missing, and verify finds the tables equal', async () => {
    const t = await e2eEnv('rblive');
    const app = spawnFogsched(['start', '--fog-nodes', '2'], t.env);
    await waitReady(t.port, app);
    // A log to replay first, then keep submitting (successes, failures, retries) during the rebuild.
    expect((await run(['migrate'], t.env)).code).toBe(0);
    await seed(t.dbUrl, 3000);
    const ids: string[] = [];
    let submitting = true;
    const bodies = [{ type: 'noop' }, { type: 'fail', payload: { retryable: false } }, { type: 'flaky', payload: { failTimes: 1 }, retry: { baseMs: 50, factor: 2, maxMs: 100 } }];
    const submitter = (async () => {
      for (let i = 0; submitting; i++) {
        const res = await postJson(`${t.base}/v1/tasks`, bodies[i % bodies.length]);
        expect(res.status).toBe(202);
        ids.push(res.body.id as string);
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    const rebuild = await run(['projections', 'rebuild', '--batch-size', '500'], t.env);
    const submittedDuringRebuild = ids.length;
    submitting = false;
    await submitter;
    expect(rebuild.code, rebuild.out).toBe(0);
    expect(rebuild.out).toMatch(/rebuilt task_current from [\d,]+ events/);
    expect(rebuild.out).toContain('swapped in');
    expect(submittedDuringRebuild).toBeGreaterThan(0);

    // Every task submitted over HTTP is in the swapped-in tables and reaches its end there.
    await eventually(
      async () => (await t.count(`SELECT count(*) AS n FROM task_current WHERE task_id = ANY($1::uuid[]) AND state IN ('succeeded', 'failed')`, [ids])) === ids.length,
      { timeoutMs: 60_000, message: 'tasks submitted during the rebuild did not all finish' },
    );
    const verify = await run(['projections', 'verify'], t.env);
    expect(verify.code, verify.out).toBe(0);
    expect(verify.out).toMatch(/task_current: \d+ rows, equal to the log/);
    expect(verify.out).toMatch(/task_history: \d+ rows, equal to the log/);
    expect(await t.count(`SELECT count(*) AS n FROM task_current`)).toBe(3000 + ids.length);
  });

  it('a rebuild SIGKILLed half-way resumes from its checkpoint and ends equal', async () => {
    const t = await e2eEnv('rbkill');
    expect((await run(['migrate'], t.env)).code).toBe(0);
    await seed(t.dbUrl, 14_000);
    const first = spawnFogsched(['projections', 'rebuild', '--batch-size', '200'], t.env);
    // The first checkpoint (a replay of these ~60,000 events takes a second or two): waiting for a later
    // one let a loaded machine's slow polls miss the whole rebuild.
    await eventually(async () => (await t.count(`SELECT events_applied AS n FROM projection_rebuilds`)) > 0, { timeoutMs: 60_000, intervalMs: 10 });
    await first.kill('SIGKILL');
    const checkpoint = await t.count(`SELECT events_applied AS n FROM projection_rebuilds`);
    expect(checkpoint).toBeGreaterThan(0);

    const status = await run(['projections', 'status'], t.env);
    expect(status.out).toMatch(/rebuild of task_current in progress or interrupted/);
    const second = await run(['projections', 'rebuild', '--verify'], t.env);
    expect(second.code, second.out).toBe(0);
    expect(second.out).toContain('resumed from a checkpoint');
    expect(second.out).toMatch(/task_current: 14000 rows, equal to the log/);
    expect(await t.count(`SELECT count(*) AS n FROM projection_rebuilds`)).toBe(0);
    expect(await t.count(`SELECT count(*) AS n FROM pg_class WHERE relname LIKE '%__rebuild'`)).toBe(0);
  });

  it('verify exits 1 and names the row when a projection row was changed behind the log\'s back', async () => {
    const t = await e2eEnv('rbverify');
    expect((await run(['migrate'], t.env)).code).toBe(0);
    const seeded = await seed(t.dbUrl, 70);
    const victim = seeded.get('succeeded')?.[0] as string;
    await t.q(`UPDATE task_current SET attempt = 9 WHERE task_id = $1`, [victim]);
    // task_history is a view of the log: it cannot be changed behind the log's back (a write to it is a write to events).
    await expect(t.q(`DELETE FROM task_history WHERE position = (SELECT min(position) FROM task_history)`)).rejects.toThrow(/append-only/);
    const verify = await run(['projections', 'verify'], t.env);
    expect(verify.code).toBe(1);
    expect(verify.out).toContain(`${victim}: attempt live=9 rebuilt=1`);
    const events = await t.count('SELECT count(*) AS n FROM events');
    expect(verify.out).toContain(`task_history: ${events} rows, equal to the log`);
    // verify changes nothing.
    expect(await t.count(`SELECT attempt AS n FROM task_current WHERE task_id = $1`, [victim])).toBe(9);
    // A rebuild of the view alone has nothing to do, and says so.
    const viewOnly = await run(['projections', 'rebuild', '--projection', 'task_history'], t.env);
    expect(viewOnly.code, viewOnly.out).toBe(0);
    expect(viewOnly.out).toContain('task_history is a view of the log: nothing to rebuild');
  });

  it('start refuses stale read models and names the fix; --rebuild-stale rebuilds them, then serves', async () => {
    const t = await e2eEnv('rbstale');
    expect((await run(['migrate'], t.env)).code).toBe(0);
    await seed(t.dbUrl, 20);
    await t.q(`UPDATE projection_versions SET version = 0 WHERE projection = 'task_current'`);
    const refused = await run(['start', '--roles', 'api'], t.env);
    expect(refused.code).toBe(1);
    expect(refused.out).toContain('stale read models: task_current (stored version 0, code version 1); run `fogsched projections rebuild`, or start with --rebuild-stale');
    expect(refused.out).not.toMatch(/\n\s+at /);

    const app = spawnFogsched(['start', '--roles', 'api', '--rebuild-stale'], t.env);
    await waitReady(t.port, app);
    expect(await t.count(`SELECT version AS n FROM projection_versions WHERE projection = 'task_current'`)).toBe(1);
    const list = (await (await fetch(`${t.base}/v1/tasks?limit=100`)).json()) as { items: unknown[] };
    expect(list.items).toHaveLength(20);
  });

  it('says in one line what is wrong: PostgreSQL down, database not migrated, bad arguments; exit 1, no stack trace', async () => {
    const t = await e2eEnv('rbbad');
    const down = await run(['projections', 'verify'], { ...t.env, DATABASE_URL: 'postgres://root@127.0.0.1:1/nowhere' });
    expect(down.code).toBe(1);
    expect(down.out).toMatch(/^fogsched: cannot reach PostgreSQL \(connect ECONNREFUSED 127\.0\.0\.1:1\); run `fogsched doctor`\n$/);
    // The database exists but has no migrations: nothing is created, the fix is named.
    await run(['migrate'], t.env);
    await t.q('DROP TABLE pgmigrations');
    const unmigrated = await run(['projections', 'rebuild'], t.env);
    expect(unmigrated.code).toBe(1);
    expect(unmigrated.out).toMatch(/the database lacks \d+ migration\(s\) .*run `fogsched migrate` first/);
    expect(await t.count(`SELECT count(*) AS n FROM pg_class WHERE relname LIKE '%__rebuild'`)).toBe(0);
    const batch = await run(['projections', 'rebuild', '--batch-size', '0'], t.env);
    expect(batch.code).toBe(1);
    expect(batch.out).toContain("option '--batch-size <n>' argument '0' is invalid. must be a whole number from 1 to 100000");
    const metrics = await run(['projections', 'rebuild', '--projection', 'node_metrics'], t.env);
    expect(metrics.code).toBe(1);
    expect(metrics.out).toContain('node_metrics holds metric samples, not events');
    for (const r of [down, unmigrated, batch, metrics]) expect(r.out).not.toMatch(/\n\s+at /);
  });

  it('task show prints a timeline; events tail follows the log with a type filter', async () => {
    const t = await e2eEnv('rbshow');
    expect((await run(['migrate'], t.env)).code).toBe(0);
    const seeded = await seed(t.dbUrl, 7);
    const retried = seeded.get('retried-then-succeeded')?.[0] as string;
    const show = await run(['task', 'show', retried], t.env);
    expect(show.code, show.out).toBe(0);
    const lines = show.out.trim().split('\n');
    expect(lines.map((l) => /v\d+ (\w+)/.exec(l)?.[1])).toEqual([
      'TaskSubmitted', 'TaskStarted', 'TaskAttemptFailed', 'TaskRetryScheduled', 'TaskStarted', 'TaskSucceeded',
    ]);
    expect(lines[2]).toContain('error=flaky: boom 1');
    expect((await run(['task', 'show', 'not-a-uuid'], t.env)).out).toContain('task id must be a UUID');

    const tail = spawnFogsched(['events', 'tail', '--type', 'TaskCancelled', '--limit', '2'], t.env);
    // The tail starts at the head of the log once it is up (how long that takes depends on the
    // machine's load): write until it has seen two, rather than guess when it is listening.
    let exited = false;
    void tail.exited.then(() => (exited = true));
    for (let i = 0; !exited && i < 60; i++) {
      await seed(t.dbUrl, 14);
      await Promise.race([tail.exited, new Promise((r) => setTimeout(r, 1000))]);
    }
    expect(await tail.exited).toBe(0);
    const tailed = tail.output().trim().split('\n');
    expect(tailed).toHaveLength(2);
    for (const line of tailed) expect(line).toMatch(/task:[0-9a-f-]{36}\s+v2 TaskCancelled\s+actor=alice reason=not needed/);
  });
});

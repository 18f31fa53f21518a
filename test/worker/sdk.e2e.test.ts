import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, getJson, postJson, spawnFogsched, waitReady } from '../helpers/processes.js';

// The whole path with a handlers module written with the SDK: HTTP → relay → fog node (the
// module in its worker threads) → results → ingest → task_current/task_history/audit views.

afterEach(dropE2eEnvs);

const handlers = fileURLToPath(new URL('./fixtures/sdk-handlers.mjs', import.meta.url));

async function waitTerminal(base: string, id: string, timeoutMs = 60_000) {
  return eventually(
    async () => {
      const task = await getJson(`${base}/v1/tasks/${id}`);
      return ['succeeded', 'failed', 'cancelled'].includes(task.state as string) ? task : null;
    },
    { timeoutMs, message: `task ${id} did not end` },
  );
}

describe('handlers written with defineHandlers, on the whole pipeline', () => {
  it('email.send retried once runs attempt 2; its progress is on the task, in its history and counted in the audit views; over-tier and out-of-memory tasks fail with their reason', async () => {
    const t = await e2eEnv('sdk');
    const env = { ...t.env, FOG_NODE_HANDLERS: handlers, RETRY_BASE_MS: '100', PROGRESS_MIN_INTERVAL_MS: '0' };
    const app = spawnFogsched(['start', '--roles', 'api,relay,ingest,scheduler'], env);
    await waitReady(t.port, app);
    // A heavy node whose tier (by its own TIERS) has 300 MB: the API routes a 900 MB task to `heavy`, the node refuses it.
    const node = spawnFogsched(['start', '--roles', 'fog-node', '--tier', 'heavy', '--no-migrate'], { ...env, FOG_NODE_ID: 'sdk-node', TIERS: 'light:0.5:512,medium:0.75:768,heavy:1:300' });

    const email = await postJson(`${t.base}/v1/tasks`, { type: 'email.send', payload: { to: 'a@example.org', failUntil: 2 }, maxAttempts: 3 });
    expect(email.status).toBe(202);
    const big = await postJson(`${t.base}/v1/tasks`, { type: 'memory.hold', payload: { mb: 1 }, resources: { cpu: 0.1, memoryMb: 900 } });
    expect(big.status).toBe(202);
    expect(big.body.tier).toBe('heavy');
    const hog = await postJson(`${t.base}/v1/tasks`, { type: 'memory.hold', payload: { mb: 400 }, resources: { cpu: 0.1, memoryMb: 64 }, maxAttempts: 3 });
    expect(hog.status).toBe(202);

    const done = await waitTerminal(t.base, email.body.id as string);
    expect(done.state, node.output()).toBe('succeeded');
    expect(done.attempt).toBe(2);
    expect(done.output).toMatchObject({ attempt: 2, maxAttempts: 3, type: 'email.send', loadedInMainThread: false });
    expect(done.progress).toEqual({ fraction: 1, message: 'sent', at: expect.any(String) });
    const history = await getJson(`${t.base}/v1/tasks/${email.body.id}/history`);
    const types = history.events.map((e: { type: string }) => e.type);
    // Attempt 1: two reports, then the retryable failure; attempt 2: three reports, then success.
    expect(types).toEqual([
      'TaskSubmitted',
      'TaskStarted',
      'TaskProgressed',
      'TaskProgressed',
      'TaskAttemptFailed',
      'TaskRetryScheduled',
      'TaskStarted',
      'TaskProgressed',
      'TaskProgressed',
      'TaskProgressed',
      'TaskSucceeded',
    ]);
    expect(done.lastError).toMatchObject({ name: 'RateLimitedError', code: 'rate_limited', retryable: true });

    const refused = await waitTerminal(t.base, big.body.id as string);
    expect(refused.state).toBe('failed');
    expect(refused.failureReason).toBe('non-retryable');
    expect(refused.lastError).toMatchObject({ code: 'too-large-for-tier', retryable: false });
    expect(refused.startedAt).toBeNull();

    const oom = await waitTerminal(t.base, hog.body.id as string);
    expect(oom.state).toBe('failed');
    expect(oom.lastError).toMatchObject({ code: 'out-of-memory', retryable: false });
    expect(oom.attempt).toBe(1);

    // The audit views count the reports.
    const [perTask] = await t.q<{ progress_reports: string }>(`SELECT progress_reports FROM audit.tasks WHERE task_id = $1`, [email.body.id]);
    expect(Number(perTask?.progress_reports)).toBe(5);
    const perAttempt = await t.q<{ attempt: number; progress_reports: string; last_progress_fraction: number; last_progress_message: string; outcome: string }>(
      `SELECT attempt, progress_reports, last_progress_fraction, last_progress_message, outcome FROM audit.task_attempts WHERE task_id = $1 ORDER BY attempt`,
      [email.body.id],
    );
    expect(perAttempt.map((a) => [a.attempt, Number(a.progress_reports), a.last_progress_fraction, a.last_progress_message, a.outcome])).toEqual([
      [1, 2, 0.5, 'connected', 'failed'],
      [2, 3, 1, 'sent', 'succeeded'],
    ]);

    // The read models equal a replay of the log.
    const verify = spawnFogsched(['projections', 'verify'], env);
    expect(await verify.exited, verify.output()).toBe(0);

    expect(await node.kill('SIGTERM')).toBe(0);
    expect(await app.kill('SIGTERM')).toBe(0);
  });
});

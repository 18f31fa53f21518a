import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createClient,
  FogschedApiError,
  isAuthError,
  isFogschedApiError,
  isInvalidRequest,
  isNotFound,
  isRetryable,
  type FogschedClient,
  type Task,
} from '../../src/client/index.js';
import { executeTaskCommands } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { freePort } from '../helpers/processes.js';
import { buildContractApi } from '../api/contract.js';

/**
 * The typed client against the real API (PostgreSQL, Redis) listening on a port: every method,
 * each error class as a typed FogschedApiError, and waitFor by polling (the API of this branch
 * has no task event stream: the client notices the 404 ROUTE_NOT_FOUND and polls).
 */

const KEY = 'client-test-operator-key';
let tdb: TestDatabase;
let api: Awaited<ReturnType<typeof buildContractApi>>;
let baseUrl: string;
let fog: FogschedClient;

beforeAll(async () => {
  tdb = await createTestDatabase('client');
  api = await buildContractApi(tdb, { prefix: `client_${process.pid}_`, apiKeys: [{ tenant: 'acme', role: 'operator', key: KEY }] });
  await api.app.listen({ host: '127.0.0.1', port: 0 });
  baseUrl = `http://127.0.0.1:${(api.app.server.address() as { port: number }).port}`;
  fog = createClient({ baseUrl, apiKey: KEY });
});

afterAll(async () => {
  // A request the client aborted mid-flight (the timeout and abort tests) can leave the server a
  // connection it still counts as busy; app.close() would wait for it.
  api?.app.server.closeAllConnections();
  await api?.close();
  await tdb?.drop();
});

/** Ends a task the way a fog node's result would (straight through the task commands). */
async function end(taskId: string, how: 'succeed' | 'deadLetter'): Promise<void> {
  const now = new Date().toISOString();
  const command =
    how === 'succeed'
      ? ({ type: 'SucceedTask', data: { attempt: 1, nodeId: 'n1', output: { ok: true }, durationMs: 1, startedAt: now, now } } as const)
      : ({ type: 'DeadLetterTask', data: { attempt: 1, reason: 'rejected', queue: null, now } } as const);
  await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId, command, metadata: { actor: 'test' } }], api.names));
}

async function caught(promise: Promise<unknown>): Promise<FogschedApiError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FogschedApiError);
  return error as FogschedApiError;
}

describe('createClient', () => {
  it('submits (idempotently), gets, lists through every page, reads history, cancels', async () => {
    const first = await fog.submit({ type: 'noop', payload: { n: 1 }, priority: 'high' }, { idempotencyKey: 'client-1' });
    expect(first).toMatchObject({ type: 'noop', state: 'queued', priority: 'high', payload: { n: 1 } });
    expect((await fog.submit({ type: 'noop', payload: { n: 1 }, priority: 'high' }, { idempotencyKey: 'client-1' })).id).toBe(first.id);

    const batch = await fog.submitBatch([{ type: 'list-me' }, { type: 'list-me' }, { type: 'list-me' }, { type: 'list-me', idempotencyKey: 'b-4' }, { type: 'list-me' }]);
    expect(batch).toHaveLength(5);
    expect((await fog.get(first.id)).id).toBe(first.id);

    // Pages of two: the iterator follows nextCursor until the end, newest first.
    const seen: string[] = [];
    for await (const t of fog.list({ type: 'list-me', limit: 2 })) seen.push(t.id);
    expect(seen).toEqual(batch.map((t) => t.id).reverse());
    expect((await fog.listPage({ type: 'list-me', limit: 2 })).nextCursor).toEqual(expect.any(String));

    expect((await fog.history(first.id)).map((e) => e.type)).toEqual(['TaskSubmitted']);
    const cancelled = await fog.cancel(first.id, { reason: 'not needed' });
    expect(cancelled.state).toBe('cancelled');
    await end(batch[0]!.id, 'succeed');
    expect((await caught(fog.cancel(batch[0]!.id))).code).toBe('TASK_NOT_CANCELLABLE');
  });

  it('lists failed tasks, requeues one, and requeues by filter with a dry run first', async () => {
    const a = await fog.submit({ type: 'client-flaky' });
    const b = await fog.submit({ type: 'client-flaky' });
    await end(a.id, 'deadLetter');
    await end(b.id, 'deadLetter');
    const failed: Task[] = [];
    for await (const t of fog.dlq.list({ type: 'client-flaky', limit: 1 })) failed.push(t);
    expect(failed.map((t) => t.id).sort()).toEqual([a.id, b.id].sort());
    expect(failed.every((t) => t.state === 'failed' && t.failureReason === 'rejected')).toBe(true);

    expect((await fog.requeue(a.id)).state).toBe('queued');
    expect((await caught(fog.requeue(a.id))).code).toBe('TASK_NOT_REQUEUEABLE');
    expect(await fog.dlq.requeue({ type: 'client-flaky', dryRun: true })).toMatchObject({ matched: 1, requeued: 0, dryRun: true });
    expect(await fog.dlq.requeue({ type: 'client-flaky' })).toMatchObject({ matched: 1, requeued: 1, taskIds: [b.id] });
  });

  it('creates, lists, pauses, resumes and deletes schedules', async () => {
    const s = await fog.schedules.create({ name: 'nightly', cron: '0 2 * * *', timezone: 'Europe/Berlin', template: { type: 'noop' } });
    expect(s).toMatchObject({ name: 'nightly', state: 'active', template: { type: 'noop' } });
    const listed = [];
    for await (const x of fog.schedules.list()) listed.push(x.id);
    expect(listed).toContain(s.id);
    expect((await fog.schedules.pause(s.id)).state).toBe('paused');
    expect((await fog.schedules.resume(s.id)).state).toBe('active');
    await expect(fog.schedules.delete(s.id)).resolves.toBeUndefined();
    const gone = await caught(fog.schedules.get(s.id));
    expect(gone.is('SCHEDULE_NOT_FOUND')).toBe(true);
  });

  it('throws one FogschedApiError typed by the problem code: 404, 400 with field errors, 422, 401, unreachable', async () => {
    const missing = await caught(fog.get('0193a5b2-0000-7000-8000-000000000000'));
    expect(missing).toMatchObject({ status: 404, code: 'TASK_NOT_FOUND' });
    expect(isNotFound(missing) && missing.is('TASK_NOT_FOUND')).toBe(true);
    expect(isFogschedApiError(missing, 'TASK_NOT_FOUND', 'SCHEDULE_NOT_FOUND')).toBe(true);
    expect(missing.problem?.detail).toBe(missing.detail);

    const invalid = await caught(fog.submit({ type: 'bad type!' }));
    expect(invalid).toMatchObject({ status: 400, code: 'VALIDATION_FAILED' });
    expect(isInvalidRequest(invalid)).toBe(true);
    expect(invalid.fieldErrors[0]?.path).toBe('body/type');

    const tooBig = await caught(fog.submit({ type: 'big', resources: { cpu: 60, memoryMb: 64 } }));
    expect(tooBig).toMatchObject({ status: 422, code: 'NO_TIER_FITS' });

    const stranger = createClient({ baseUrl, apiKey: 'not-a-key' });
    const refused = await caught(stranger.get('0193a5b2-0000-7000-8000-000000000000'));
    expect(refused).toMatchObject({ status: 401, code: 'UNAUTHORIZED' });
    expect(isAuthError(refused)).toBe(true);
    // The same key as a bearer token works.
    await expect(createClient({ baseUrl, token: KEY }).listPage({ limit: 1 })).resolves.toHaveProperty('items');

    const nowhere = createClient({ baseUrl: `http://127.0.0.1:${await freePort()}`, apiKey: KEY });
    const down = await caught(nowhere.get('0193a5b2-0000-7000-8000-000000000000'));
    expect(down).toMatchObject({ status: 0, code: 'UNREACHABLE' });
    expect(down.message).toMatch(/cannot reach http:\/\/127\.0\.0\.1:\d+: connection refused/);
    expect(isRetryable(down)).toBe(true);
  });

  it('waitFor follows the task event stream where the API has it, and resolves once the task is terminal', async () => {
    const requests: string[] = [];
    const watched = createClient({
      baseUrl,
      apiKey: KEY,
      fetch: (input, init) => {
        requests.push(`${init?.method ?? 'GET'} ${new URL(input).pathname}`);
        return fetch(input, init);
      },
    });
    const task = await watched.submit({ type: 'noop' });
    const waiting = watched.waitFor(task.id, { timeoutMs: 60_000, pollIntervalMs: 20, maxPollIntervalMs: 200 });
    await expect.poll(() => requests.includes(`GET /v1/tasks/${task.id}/events`), { timeout: 30_000 }).toBe(true);
    await end(task.id, 'succeed');
    const done = await waiting;
    expect(done).toMatchObject({ id: task.id, state: 'succeeded', output: { ok: true } });
    // One stream, no polling: the task is read before the stream opens, once it is open, and at its end.
    expect(requests.filter((r) => r.endsWith('/events'))).toEqual([`GET /v1/tasks/${task.id}/events`]);
    expect(requests.filter((r) => r === `GET /v1/tasks/${task.id}`).length).toBeLessThanOrEqual(3);
  });

  it('waitFor polls when the API has no task event stream (an older API: the route is 404), and resolves once the task is terminal', async () => {
    const requests: string[] = [];
    const watched = createClient({
      baseUrl,
      apiKey: KEY,
      fetch: (input, init) => {
        const path = new URL(input).pathname;
        requests.push(`${init?.method ?? 'GET'} ${path}`);
        // What an API from before the stream existed answers for it.
        if (path.endsWith('/events')) {
          return Promise.resolve(
            new Response(JSON.stringify({ type: 'about:blank', title: 'Not Found', status: 404, code: 'ROUTE_NOT_FOUND', detail: `no route GET ${path}` }), {
              status: 404,
              headers: { 'content-type': 'application/problem+json' },
            }),
          );
        }
        return fetch(input, init);
      },
    });
    const task = await watched.submit({ type: 'noop' });
    const waiting = watched.waitFor(task.id, { timeoutMs: 60_000, pollIntervalMs: 20, maxPollIntervalMs: 200 });
    // Let it try the stream and poll a few times before the task ends.
    await expect.poll(() => requests.filter((r) => r === `GET /v1/tasks/${task.id}`).length, { timeout: 30_000 }).toBeGreaterThanOrEqual(3);
    await end(task.id, 'succeed');
    const done = await waiting;
    expect(done).toMatchObject({ id: task.id, state: 'succeeded', output: { ok: true } });
    expect(requests.filter((r) => r.endsWith('/events'))).toEqual([`GET /v1/tasks/${task.id}/events`]);

    // The client remembers the API has no stream: the next wait polls at once; a terminal task returns at once.
    requests.length = 0;
    expect((await watched.waitFor(task.id)).state).toBe('succeeded');
    expect(requests).toEqual([`GET /v1/tasks/${task.id}`]);
  });

  it('waitFor gives up with WAIT_TIMEOUT, stops on the caller\'s abort, and throws TASK_NOT_FOUND for an unknown id', async () => {
    const task = await fog.submit({ type: 'never-runs' });
    const timedOut = await caught(fog.waitFor(task.id, { timeoutMs: 300, pollIntervalMs: 20 }));
    expect(timedOut).toMatchObject({ code: 'WAIT_TIMEOUT', status: 0 });

    const abort = new AbortController();
    const waiting = fog.waitFor(task.id, { signal: abort.signal, pollIntervalMs: 20 });
    abort.abort(new Error('user stopped'));
    await expect(waiting).rejects.toThrow('user stopped');

    expect((await caught(fog.waitFor('0193a5b2-0000-7000-8000-000000000000'))).code).toBe('TASK_NOT_FOUND');
  });
});

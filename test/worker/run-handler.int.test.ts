import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runHandler } from '../../src/worker/testing.js';

// runHandler runs a handler in a worker thread as a node does; threads run the built code.
const builtWorker = fileURLToPath(new URL('../../dist/fog-node/handler-worker.js', import.meta.url));
const built = existsSync(builtWorker);
if (!built) console.warn(`skipping runHandler tests: worker threads run the built code; run npm run build first (${builtWorker} is missing)`);
const module = new URL('./fixtures/sdk-handlers.mjs', import.meta.url);

describe.skipIf(!built)('runHandler: a handler run as a node runs it', () => {
  it('gives the handler its ctx (attempt, maxAttempts, tenant, type, tier) and returns output, progress and log lines', async () => {
    const { output, progress, logs } = await runHandler<{ attempt: number; loadedInMainThread: boolean }>('email.send', { to: 'a@example.org' }, { module, attempt: 2, maxAttempts: 4, tenant: 'acme', taskId: '00000000-0000-4000-8000-000000000042' });
    expect(output).toMatchObject({ id: '00000000-0000-4000-8000-000000000042/2', attempt: 2, maxAttempts: 4, tenant: 'acme', type: 'email.send', tier: 'light', loadedInMainThread: false });
    expect(progress.map((p) => [p.fraction, p.message])).toEqual([
      [0.25, 'rendered'],
      [0.5, 'connected'],
      [1, 'sent'],
    ]);
    expect(logs).toEqual([expect.objectContaining({ msg: 'sending email', to: 'a@example.org', taskId: '00000000-0000-4000-8000-000000000042', attempt: 2, level: 30 })]);
    // The module ran in the worker thread only.
    expect((globalThis as { __sdkFixtureLoads?: number }).__sdkFixtureLoads).toBeUndefined();
  });

  it('gives the handler ctx.dependencies ({} and false by default) and ctx.dependenciesTruncated', async () => {
    const none = await runHandler('deps.echo', null, { module });
    expect(none.output).toEqual({ dependencies: {}, truncated: false, frozen: true });
    const id = '00000000-0000-4000-8000-0000000000d1';
    const some = await runHandler('deps.echo', null, { module, dependencies: { [id]: { state: 'succeeded', output: { sum: 3 } } }, dependenciesTruncated: true });
    expect(some.output).toEqual({ dependencies: { [id]: { state: 'succeeded', output: { sum: 3 } } }, truncated: true, frozen: true });
  });

  it('rejects with the handler’s error rebuilt: class name, message, code and retryable', async () => {
    await expect(runHandler('email.send', { to: 'x', failUntil: 2 }, { module, attempt: 1 })).rejects.toMatchObject({
      name: 'RateLimitedError',
      message: 'rate limited on attempt 1',
      code: 'rate_limited',
      retryable: true,
    });
    await expect(runHandler('errors.validation', {}, { module })).rejects.toMatchObject({ name: 'ValidationError', message: 'no such mailbox', code: 'bad_address', retryable: false });
    await expect(runHandler('errors.handler', {}, { module })).rejects.toMatchObject({ name: 'HandlerError', code: 'quota', retryable: false });
    await expect(runHandler('errors.string', {}, { module })).rejects.toMatchObject({ message: 'a bare string', code: 'handler_error', retryable: true });
  });

  it('a bad progress value throws in the handler, clearly', async () => {
    await expect(runHandler('progress.bad', { fraction: 1.5 }, { module })).rejects.toMatchObject({ name: 'RangeError', message: expect.stringContaining('fraction must be a number in [0, 1], got 1.5') });
    await expect(runHandler('progress.bad', { fraction: 0.5, message: 'x'.repeat(1001) }, { module })).rejects.toMatchObject({ name: 'RangeError', message: expect.stringContaining('at most 1000') });
  });

  it('plain exported functions keep working: (payload, signal, ctx)', async () => {
    const { output } = await runHandler('legacy', null, { module, attempt: 3 });
    expect(output).toEqual({ legacy: true, aborted: false, attempt: 3 });
  });

  it('the heap limit is memoryMb: a handler holding more fails out-of-memory (not retryable), one within it succeeds', async () => {
    await expect(runHandler('memory.hold', { mb: 200 }, { module, memoryMb: 64 })).rejects.toMatchObject({ code: 'out-of-memory', retryable: false });
    const { output } = await runHandler('memory.hold', { mb: 40 }, { module, memoryMb: 128 });
    expect(output).toEqual({ heldMb: 40 });
  });

  it('timeoutMs aborts ctx.signal and fails with code timeout; an unknown type fails unknown_handler', async () => {
    await expect(runHandler('wait.abort', {}, { module, timeoutMs: 100 })).rejects.toMatchObject({ code: 'timeout' });
    await expect(runHandler('no.such.type', {}, { module })).rejects.toMatchObject({ code: 'unknown_handler', retryable: false });
  });
});

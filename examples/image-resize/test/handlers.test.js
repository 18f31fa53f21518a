// Runs each handler as a fog node would (a worker thread with the task's heap limit, the same
// ctx), through fogsched's runHandler: `npm test` (node --test, no test framework to install).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runHandler } from 'fogsched/worker';

const module = new URL('../handlers.js', import.meta.url);

test('image.resize downsizes a generated bitmap to a PNG and reports progress by rows', async () => {
  const { output, progress } = await runHandler('image.resize', { source: { width: 1200, height: 800 }, width: 300, height: 200, returnPng: true }, { module, memoryMb: 256 });
  assert.equal(output.width, 300);
  assert.equal(output.height, 200);
  const png = Buffer.from(output.png, 'base64');
  assert.deepEqual([...png.subarray(1, 4)], [...Buffer.from('PNG')]);
  assert.equal(png.readUInt32BE(16), 300); // IHDR width
  assert.equal(output.bytes, png.length);
  assert.ok(progress.length >= 2);
  assert.deepEqual(progress.at(-1), { fraction: 1, message: 'row 200 of 200', at: progress.at(-1).at });
});

test('image.resize is deterministic: the same request gives the same image', async () => {
  const payload = { source: { width: 640, height: 480, pattern: 'checker' }, width: 64, height: 48 };
  const [a, b] = await Promise.all([runHandler('image.resize', payload, { module }), runHandler('image.resize', payload, { module })]);
  assert.equal(a.output.sha256, b.output.sha256);
});

test('image.thumbnails reports "resized i of n" after each size', async () => {
  const { output, progress } = await runHandler('image.thumbnails', { source: { width: 800, height: 600 }, sizes: [256, 128, 64, 32] }, { module });
  assert.deepEqual(output.thumbnails.map((t) => [t.width, t.height]), [[256, 192], [128, 96], [64, 48], [32, 24]]);
  assert.deepEqual(progress.map((p) => p.message), ['resized 1 of 4', 'resized 2 of 4', 'resized 3 of 4', 'resized 4 of 4']);
});

test('a bad size fails at once, not retryable, with its code', async () => {
  await assert.rejects(runHandler('image.resize', { source: { width: 10, height: 10 }, width: 0, height: 5 }, { module }), {
    name: 'RangeError',
    code: 'bad_dimensions',
    retryable: false,
    message: 'width must be an integer in [1, 16384], got 0',
  });
});

test('a timeout aborts ctx.signal: the handler stops between rows', async () => {
  await assert.rejects(runHandler('image.resize', { source: { width: 4000, height: 4000 }, width: 3000, height: 3000 }, { module, memoryMb: 512, timeoutMs: 200 }), { code: 'timeout' });
});

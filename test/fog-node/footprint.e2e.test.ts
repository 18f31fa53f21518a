import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { killAll, spawnFogsched, testEnv } from '../helpers/processes.js';

// Runs the BUILT CLI (bin/fogsched.js → dist/): `npm run build` first.

let t: Awaited<ReturnType<typeof testEnv>>;
let dir: string;
let preload: string;

beforeAll(async () => {
  t = await testEnv('footprint');
  dir = mkdtempSync(join(tmpdir(), 'fogsched-footprint-'));
  // Preloaded into the CLI process: at exit, writes the paths of the CommonJS modules it loaded to $LOADED_OUT.
  preload = join(dir, 'loaded.mjs');
  writeFileSync(
    preload,
    `import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
const require = createRequire(import.meta.url);
process.on('exit', () => writeFileSync(process.env.LOADED_OUT, JSON.stringify(Object.keys(require.cache))));
`,
  );
});
afterEach(async () => {
  await killAll();
});
afterAll(async () => {
  await killAll();
  await t?.drop();
  rmSync(dir, { recursive: true, force: true });
});

/** The npm packages a `fogsched start` process loaded by the time it stopped. */
async function packagesLoaded(args: string[]): Promise<Set<string>> {
  const out = join(dir, `loaded-${args.join('_').replace(/[^\w-]/g, '')}.json`);
  const p = spawnFogsched(['start', ...args], { ...t.env, LOG_LEVEL: 'info', NODE_OPTIONS: `--import ${pathToFileURL(preload).href}`, LOADED_OUT: out });
  const deadline = Date.now() + 20_000;
  while (!p.output().includes('fogsched started')) {
    if (p.proc.exitCode !== null || Date.now() > deadline) throw new Error(`fogsched did not start:\n${p.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  // The fog node is still setting up its broker connection here: a stop then must not hang.
  const stopped = await Promise.race([p.kill('SIGTERM'), new Promise((resolve) => setTimeout(() => resolve('still running 10 s after SIGTERM'), 10_000))]);
  expect(stopped).toBe(0);
  const names = (JSON.parse(readFileSync(out, 'utf8')) as string[]).map((path) => /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(path)?.[1]).filter((n): n is string => n !== undefined);
  return new Set(names);
}

it('a fog node alone loads neither the database nor the HTTP stack (its idle memory)', async () => {
  const loaded = await packagesLoaded(['--roles', 'fog-node', '--no-migrate']);
  expect(loaded.has('amqplib')).toBe(true); // the check sees what the fog node does load
  for (const name of ['pg', 'pg-pool', 'fastify', '@fastify/swagger', 'cli-progress']) expect(loaded.has(name), name).toBe(false);
});

it('a process running the api loads them when that role starts', async () => {
  const loaded = await packagesLoaded(['--roles', 'fog-node,api']);
  for (const name of ['amqplib', 'pg', 'fastify']) expect(loaded.has(name), name).toBe(true);
});

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testEnv } from '../helpers/processes.js';

// Packs the BUILT package (`npm run build` first; `npm pack` alone builds through prepack).

/**
 * The package as a user gets it: `npm pack`, then `npm install <tarball>` into an empty project,
 * then from that project only: the `fogsched` bin, a fog node running the project's own handlers
 * module (`npx fogsched start`), and a script that submits through `fogsched/client` and waits.
 *
 * The handlers module default-exports `defineHandlers({ 'email.send': ... })` from
 * 'fogsched/worker': its first attempt asks for a retry, the second reports progress and reads
 * `ctx.attempt`.
 */

const HANDLERS = {
  file: 'handlers.mjs',
  source: `// The handler SDK, as a user writes it: any string as a type name, the context, progress.
import { defineHandlers } from 'fogsched/worker';

export default defineHandlers({
  'email.send': async (payload, ctx) => {
    ctx.log.info({ to: payload.to }, 'sending');
    if (ctx.attempt === 1) throw ctx.retryable(new Error('smtp: try again later'));
    ctx.progress(0.5, 'rendered');
    return { sentTo: payload.to, attempt: ctx.attempt, of: ctx.maxAttempts };
  },
});
`,
};
const TASK = {
  type: 'email.send',
  payload: { to: 'ops@example.org' },
  extra: { maxAttempts: 3, retry: { baseMs: 100, factor: 1, maxMs: 100 } },
  output: { sentTo: 'ops@example.org', attempt: 2, of: 3 },
};

const exec = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const NPX = process.platform === 'win32' ? 'npx.cmd' : 'npx';

let work: string;
let project: string;
let tarball: string;
let files: string[];
let env: Awaited<ReturnType<typeof testEnv>>;
let node: ChildProcess | undefined;
let nodeOutput = '';

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'fogsched-pack-'));
  // --ignore-scripts: the build is already there (prepack would build it again).
  const packed = await exec(NPM, ['pack', '--ignore-scripts', '--json', '--pack-destination', work], { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 });
  const [info] = JSON.parse(packed.stdout) as [{ filename: string; files: { path: string }[] }];
  tarball = join(work, info.filename);
  files = info.files.map((f) => f.path);

  project = join(work, 'app');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'fogsched-user', version: '1.0.0', private: true, type: 'module' }, null, 2));
  await exec(NPM, ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: project, timeout: 600_000, maxBuffer: 64 * 1024 * 1024 });
  env = await testEnv('pack');
}, 660_000);

afterAll(async () => {
  if (node?.pid && node.exitCode === null) {
    const exited = new Promise((r) => node!.once('exit', r));
    process.kill(-node.pid, 'SIGKILL'); // npx and the fogsched it started
    await exited;
  }
  await env?.drop();
  if (work) rmSync(work, { recursive: true, force: true });
}, 60_000);

describe('the packed package, installed into an empty project', () => {
  it('holds the runtime only: no tests, benchmark, chaos harness, source maps or sources', () => {
    expect(files).toEqual(expect.arrayContaining(['bin/fogsched.js', 'dist/cli/main.js', 'dist/client/index.js', 'dist/client/index.d.ts', 'dist/index.d.ts', 'migrations/1700000000001_event-store.sql', 'package.json', 'README.md']));
    expect(files.filter((f) => /^(test|src|bench|scripts|deploy)\/|^dist\/(bench|chaos)\/|\.map$/.test(f))).toEqual([]);
  });

  it('`npx fogsched --help` works', async () => {
    const help = await exec(NPX, ['--no-install', 'fogsched', '--help'], { cwd: project });
    expect(help.stdout).toMatch(/^Usage: fogsched /);
    expect(help.stdout).toMatch(/\bstart\b/);
    expect(help.stdout).toMatch(/\bschedules\b/);
  });

  it('its types resolve: `fogsched/client`, `fogsched/worker` and `fogsched` type-check in a strict NodeNext project', () => {
    const file = join(project, 'typed.ts');
    writeFileSync(
      file,
      `import { createClient, FogschedApiError, type Task } from 'fogsched/client';
import { createClient as fromRoot } from 'fogsched';
import { defineHandlers } from 'fogsched/worker';
export const handlers = defineHandlers<{ 'email.send': { in: { to: string }; out: { id: string } } }>({
  'email.send': async (payload, ctx) => ({ id: \`\${payload.to}/\${ctx.attempt}\` }),
});
const fog = createClient({ baseUrl: 'http://127.0.0.1:8080', apiKey: 'k' });
export async function run(): Promise<Task['state']> {
  try {
    return (await fog.waitFor((await fog.submit({ type: 'x', priority: 'high' })).id, { timeoutMs: 1000 })).state;
  } catch (e) {
    if (e instanceof FogschedApiError && e.is('NO_TIER_FITS')) return 'failed';
    throw e;
  }
}
export const same: typeof createClient = fromRoot;
`,
    );
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      lib: ['lib.es2023.d.ts', 'lib.dom.d.ts'],
      types: [],
      skipLibCheck: true,
    });
    const diagnostics = ts.getPreEmitDiagnostics(program);
    expect(ts.formatDiagnostics(diagnostics, { getCanonicalFileName: (f) => f, getCurrentDirectory: () => project, getNewLine: () => '\n' })).toBe('');
  });

  it("runs the project's handlers on a fog node started from the package, and a script submits and waits through fogsched/client", async () => {
    writeFileSync(join(project, HANDLERS.file), HANDLERS.source);
    writeFileSync(
      join(project, 'submit.mjs'),
      `import { createClient } from 'fogsched/client';
const fog = createClient({ baseUrl: process.env.FOGSCHED_URL });
const task = await fog.submit(JSON.parse(process.argv[2]));
const done = await fog.waitFor(task.id, { timeoutMs: 120000 });
const history = await fog.history(task.id);
process.stdout.write(JSON.stringify({ done, history }));
`,
    );
    node = spawn(NPX, ['--no-install', 'fogsched', 'start', '--roles', 'api,relay,ingest,fog-node'], {
      cwd: project,
      env: { ...process.env, ...env.env, LOG_LEVEL: 'warn', FOG_NODE_HANDLERS: join(project, HANDLERS.file) },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group: afterAll stops npx and the node it started together
    });
    node.stdout?.on('data', (d: Buffer) => (nodeOutput = (nodeOutput + d.toString()).slice(-20_000)));
    node.stderr?.on('data', (d: Buffer) => (nodeOutput = (nodeOutput + d.toString()).slice(-20_000)));

    const base = `http://127.0.0.1:${env.port}`;
    const deadline = Date.now() + 120_000;
    for (;;) {
      expect(node.exitCode, nodeOutput).toBeNull();
      const ready = await fetch(`${base}/readyz`).then((r) => r.status === 200, () => false);
      if (ready) break;
      if (Date.now() > deadline) throw new Error(`not ready:\n${nodeOutput}`);
      await new Promise((r) => setTimeout(r, 250));
    }

    const { stdout } = await exec(process.execPath, ['submit.mjs', JSON.stringify({ type: TASK.type, payload: TASK.payload, ...TASK.extra })], { cwd: project, env: { ...process.env, FOGSCHED_URL: base }, timeout: 150_000 });
    const { done, history } = JSON.parse(stdout) as { done: Record<string, unknown>; history: { type: string; data: Record<string, unknown> }[] };
    expect(done, nodeOutput).toMatchObject({ type: TASK.type, state: 'succeeded', attempt: 2, output: TASK.output });
    expect(done.progress, nodeOutput).toMatchObject({ fraction: 0.5, message: 'rendered' });
    const types = history.map((e) => e.type);
    expect(types).toContain('TaskAttemptFailed');
    expect(types).toContain('TaskProgressed');
    expect(types.at(-1)).toBe('TaskSucceeded');
    expect(readdirSync(join(project, 'node_modules', 'fogsched'))).not.toContain('test');
  }, 300_000);
});

import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The Dockerfile, checked without building it. hadolint is used when it is on PATH; it does
 * not install on our machines (not in Debian bookworm, and the npm package `hadolint` is a
 * wrapper that needs the binary), so the structural checks below stand in for it.
 */
const DOCKERFILE = fileURLToPath(new URL('../../Dockerfile', import.meta.url));
const text = readFileSync(DOCKERFILE, 'utf8');
// Instructions with their continuation lines joined, comments dropped.
const instructions = text
  .replace(/\\\n/g, ' ')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'))
  .map((l) => {
    const [op = '', ...rest] = l.split(/\s+/);
    return { op: op.toUpperCase(), args: rest.join(' ') };
  });
const stages: { name: string; base: string; body: { op: string; args: string }[] }[] = [];
for (const i of instructions) {
  if (i.op === 'FROM') {
    const m = /^(\S+)(?:\s+AS\s+(\S+))?/i.exec(i.args);
    stages.push({ base: m?.[1] ?? '', name: m?.[2] ?? '', body: [] });
  } else {
    stages.at(-1)?.body.push(i);
  }
}
const args = Object.fromEntries(instructions.filter((i) => i.op === 'ARG' && i.args.includes('=')).map((i) => i.args.split('=') as [string, string]));
const resolve = (base: string) => base.replace(/^\$\{(\w+)\}$/, (_, name: string) => args[name] ?? base);
const runtime = stages.at(-1)!;
const build = stages[0]!;
const has = (stage: typeof runtime, op: string, pattern: RegExp) => stage.body.some((i) => i.op === op && pattern.test(i.args));

describe('Dockerfile', () => {
  it('passes hadolint when it is installed', (ctx) => {
    const result = spawnSync('hadolint', [DOCKERFILE], { encoding: 'utf8' });
    if ((result.error as { code?: string } | undefined)?.code === 'ENOENT') {
      process.stdout.write('hadolint is not installed here (not in Debian, npm `hadolint` is only a wrapper): structural checks only\n');
      ctx.skip();
    }
    expect(result.stdout + result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  it('is multi-stage on a Node 24 slim image pinned by version and digest, never :latest', () => {
    expect(stages.map((s) => s.name)).toEqual(['build', 'runtime']);
    for (const s of stages) expect(resolve(s.base)).toMatch(/^node:24\.\d+\.\d+-bookworm-slim@sha256:[0-9a-f]{64}$/);
    expect(text).not.toMatch(/:latest\b/);
    expect(instructions.some((i) => i.op === 'ADD')).toBe(false);
  });

  it('builds with npm ci in the build stage and installs only production dependencies in the runtime stage', () => {
    expect(has(build, 'RUN', /^npm ci\b/)).toBe(true);
    expect(has(build, 'RUN', /npm run build/)).toBe(true);
    expect(has(runtime, 'RUN', /npm ci --omit=dev/)).toBe(true);
    expect(has(runtime, 'RUN', /npm run build/)).toBe(false);
    for (const what of [/^--from=build \/app\/dist /, /^bin /, /^migrations /, /^package\.json package-lock\.json /]) {
      expect(has(runtime, 'COPY', what), String(what)).toBe(true);
    }
  });

  it('installs tini pinned, without recommends, and cleans the apt lists in the same layer', () => {
    const apt = runtime.body.find((i) => i.op === 'RUN' && i.args.includes('apt-get install'))!;
    expect(apt.args).toMatch(/apt-get update && apt-get install -y --no-install-recommends "tini=\$\{TINI_VERSION\}"/);
    expect(apt.args).toMatch(/rm -rf \/var\/lib\/apt\/lists\/\*/);
    expect(args.TINI_VERSION).toMatch(/^\d+\.\d+\.\d+-/);
  });

  it('runs as a non-root user under tini, with fogsched as entrypoint and a health check of /healthz on the ops port (exec form, no CLI process)', () => {
    const user = runtime.body.filter((i) => i.op === 'USER').at(-1);
    expect(user?.args).toBeDefined();
    expect(['root', '0']).not.toContain(user?.args);
    const order = runtime.body.map((i) => i.op);
    expect(order.lastIndexOf('USER')).toBeLessThan(order.indexOf('ENTRYPOINT'));
    expect(runtime.body.find((i) => i.op === 'ENTRYPOINT')?.args).toBe('["/usr/bin/tini", "--", "fogsched"]');
    expect(runtime.body.find((i) => i.op === 'CMD')?.args).toBe('["start"]');
    expect(runtime.body.find((i) => i.op === 'HEALTHCHECK')?.args).toMatch(/--timeout=\d+s .*CMD \["node", "-e", ".*\/healthz/);
  });

  it('.dockerignore keeps node_modules, build output, VCS data and env files out of the context', () => {
    const ignore = readFileSync(new URL('../../.dockerignore', import.meta.url), 'utf8').split('\n').map((l) => l.trim());
    for (const entry of ['node_modules', 'dist', '.git', '.env', 'test']) expect(ignore).toContain(entry);
  });
});

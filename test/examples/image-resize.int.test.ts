import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// examples/image-resize is a project of its own: its tests (node --test, through runHandler)
// run against this checkout's fogsched, linked as its node_modules/fogsched the way its README
// says. Worker threads run the built code.

const root = fileURLToPath(new URL('../../', import.meta.url));
const example = fileURLToPath(new URL('../../examples/image-resize/', import.meta.url));
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { exports?: Record<string, unknown> };
const built = existsSync(`${root}dist/worker/index.js`);
const exported = pkg.exports !== undefined && './worker' in pkg.exports;
const why = !built ? 'run npm run build first (dist/worker/index.js is missing)' : !exported ? "package.json has no `exports` entry for ./worker yet, so `import 'fogsched/worker'` cannot resolve" : '';
if (why) console.warn(`skipping the examples/image-resize tests: ${why}`);

function run(cmd: string, args: string[], cwd: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('exit', (code) => resolve({ code, output: output.slice(-5000) }));
  });
}

describe('examples/image-resize', () => {
  it.skipIf(Boolean(why))('its own tests pass (npm test: node --test) against this fogsched', async () => {
    const link = `${example}node_modules/fogsched`;
    if (!existsSync(link) && !(() => { try { return lstatSync(link).isSymbolicLink(); } catch { return false; } })()) {
      mkdirSync(`${example}node_modules`, { recursive: true });
      symlinkSync('../../..', link, 'dir');
    }
    const { code, output } = await run(process.execPath, ['--test', 'test/'], example);
    expect(code, output).toBe(0);
    expect(output).toMatch(/# pass [1-9]/);
    expect(output).toContain('# fail 0');
  });

  it('its Dockerfile builds FROM the fogsched image and points FOG_NODE_HANDLERS at the handlers it copies', () => {
    const dockerfile = readFileSync(`${example}Dockerfile`, 'utf8');
    expect(dockerfile).toMatch(/^ARG FOGSCHED_IMAGE=fogsched\/fogsched:\S+$/m);
    expect(dockerfile).toMatch(/^FROM \$\{FOGSCHED_IMAGE\}$/m);
    expect(dockerfile).toMatch(/^WORKDIR \/app\/handlers\/image-resize$/m);
    expect(dockerfile).toMatch(/^COPY handlers\.js \.\/$/m);
    expect(dockerfile).toMatch(/^COPY lib \.\/lib$/m);
    expect(dockerfile).toMatch(/^ENV FOG_NODE_HANDLERS=\/app\/handlers\/image-resize\/handlers\.js$/m);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toContain('CMD ["start", "--roles", "fog-node"]');
    // The handlers it copies import only the SDK and their own files (nothing native to install).
    const handlers = readFileSync(`${example}handlers.js`, 'utf8');
    const imports = [...handlers.matchAll(/^import .* from '([^']+)';$/gm)].map((m) => m[1]);
    expect(imports.filter((m) => !m?.startsWith('node:') && !m?.startsWith('./'))).toEqual(['fogsched/worker']);
  });
});

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { chaosUnavailable } from '../../src/chaos/run.js';

// The whole chaos harness on a calm system: its own 3-node RabbitMQ cluster, PostgreSQL and
// Redis, 14 fogsched processes, 50 tasks, no faults. A fault-free run must find nothing.
const MAIN = fileURLToPath(new URL('../../dist/chaos/main.js', import.meta.url));
const unavailable = chaosUnavailable();
if (unavailable) console.warn(`skipping the chaos smoke run: ${unavailable}`);

const out = mkdtempSync(join(tmpdir(), 'fogsched-chaos-e2e-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe.skipIf(unavailable !== null)('npm run chaos', () => {
  it('runs 50 tasks on a calm system and finds no violation', async () => {
    const proc = spawn(process.execPath, [MAIN, '--tasks', '50', '--duration', '10', '--no-faults', '--seed', 'smoke', '--recovery', '90', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20_000)));
    const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
    const last = stdout.trim().split('\n').pop() ?? '';
    expect({ code, last }, `${stdout}\n${stderr}`).toEqual({ code: 0, last: expect.stringMatching(/^chaos: \d+ tasks, 0 faults, 0 violations$/) });
    // The records it leaves: every request and answer, every run the nodes reported.
    const client = readFileSync(join(out, 'client.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { kind: string });
    expect(client.filter((r) => r.kind === 'submit' || r.kind === 'batch').length).toBeGreaterThan(0);
    expect(readFileSync(join(out, 'results.jsonl'), 'utf8')).toContain('"kind":"started"');
    expect(Number(/^chaos: (\d+) tasks/.exec(last)?.[1])).toBeGreaterThanOrEqual(50);
  }, 420_000);
});

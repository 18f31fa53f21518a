import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, freePort, spawnFogsched, waitReady } from '../helpers/processes.js';

// Runs the BUILT CLI (bin/fogsched.js → dist/): `npm run build` first.

/**
 * Two `fogsched start --roles api` processes with one database and one Redis prefix: the
 * per-tenant limits live in Redis, so together they admit what one would.
 */
const KEY = 'acme-key-0123456789abcdef';
const RATE = 5;
const BURST = 5;
const CAP = 30;

afterEach(dropE2eEnvs);

describe('submit limits across two API replicas', () => {
  it('the rate holds for both together (accepted ≤ rate × window + burst), then the active cap does too', async () => {
    const t = await e2eEnv('limits');
    const env = { ...t.env, API_KEYS: `acme:${KEY}`, TENANT_SUBMIT_RATE: String(RATE), TENANT_SUBMIT_BURST: String(BURST), TENANT_MAX_ACTIVE_TASKS: String(CAP) };
    const a = spawnFogsched(['start', '--roles', 'api'], env);
    await waitReady(t.port, a);
    const port2 = await freePort();
    const b = spawnFogsched(['start', '--roles', 'api'], { ...env, PORT: String(port2) });
    await waitReady(port2, b);
    const bases = [t.base, `http://127.0.0.1:${port2}`];

    const submit = async (base: string, n: number) => {
      const res = await fetch(`${base}/v1/tasks/batch`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-api-key': KEY },
        body: JSON.stringify({ tasks: Array.from({ length: n }, () => ({ type: 'noop' })) }),
      });
      return { status: res.status, retryAfter: res.headers.get('retry-after'), body: (await res.json()) as { code?: string; tasks?: unknown[]; activeTasks?: number } };
    };

    // Two clients per replica submit batches of 1-3 tasks as fast as they get answers, for ~3 s.
    const accepted = [0, 0];
    const statuses = new Map<string, number>();
    const began = performance.now();
    await Promise.all(
      [0, 0, 1, 1].map(async (replica, client) => {
        for (let i = 0; performance.now() - began < 3000; i++) {
          const n = 1 + ((i + client) % 3);
          const res = await submit(bases[replica] as string, n);
          const key = `${res.status} ${res.body.code ?? ''}`;
          statuses.set(key, (statuses.get(key) ?? 0) + 1);
          if (res.status === 202) accepted[replica] = (accepted[replica] ?? 0) + n;
          else expect(res.retryAfter).toMatch(/^[1-9]\d*$/);
        }
      }),
    );
    const windowSeconds = (performance.now() - began) / 1000;
    const total = (accepted[0] ?? 0) + (accepted[1] ?? 0);
    const summary = `accepted ${accepted.join(' + ')} in ${windowSeconds.toFixed(2)} s; answers ${JSON.stringify([...statuses])}`;
    expect(total, summary).toBeLessThanOrEqual(RATE * windowSeconds + BURST);
    expect(accepted[0], summary).toBeGreaterThan(0);
    expect(accepted[1], summary).toBeGreaterThan(0);
    expect([...statuses.keys()].sort(), summary).toEqual(['202 ', '429 RATE_LIMITED']);
    expect(await t.count(`SELECT count(*) AS n FROM task_current WHERE tenant = 'acme'`), summary).toBe(total);

    // Now up to the cap (no relay runs, so every task stays queued), alternating replicas and
    // waiting out the rate: both count against one counter, so the cap holds exactly.
    for (let i = 0; ; i++) {
      const res = await eventually(
        async () => {
          const r = await submit(bases[i % 2] as string, 1);
          return r.status === 429 && r.body.code === 'RATE_LIMITED' ? null : r;
        },
        { timeoutMs: 10_000, intervalMs: 1000 / RATE },
      );
      if (res.status === 429) {
        expect(res.body).toMatchObject({ code: 'TOO_MANY_ACTIVE_TASKS', activeTasks: CAP, maxActiveTasks: CAP });
        break;
      }
      expect(res.status).toBe(202);
    }
    expect(await t.count(`SELECT count(*) AS n FROM task_current WHERE tenant = 'acme'`)).toBe(CAP);
    for (const base of bases) expect((await submit(base, 1)).body).toMatchObject({ code: 'TOO_MANY_ACTIVE_TASKS', activeTasks: CAP });
  });
});

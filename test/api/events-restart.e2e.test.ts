import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createPostgres } from '../../src/infra/postgres.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, freePort, spawnFogsched, waitReady } from '../helpers/processes.js';
import { openSse } from '../helpers/sse-client.js';

// Runs the BUILT CLI (bin/fogsched.js → dist/): `npm run build` first.

/**
 * Resuming an event stream across an api restart: an api process streams while tasks are
 * submitted, is killed (SIGKILL) mid-stream, more events are written while no api runs, and the
 * client resumes with Last-Event-ID on another api process: every event of its tenant arrives
 * exactly once.
 */
const KEY = 'acme-submitter-key-0123456789';

afterEach(dropE2eEnvs);

describe('event stream resume across an api restart', () => {
  it('no gap and no duplicate: events before the kill, while down, and after, each once', async () => {
    const t = await e2eEnv('sse');
    const env = { ...t.env, API_KEYS: `acme:submitter:${KEY}`, SSE_HEARTBEAT_MS: '500' };
    const first = spawnFogsched(['start', '--roles', 'api'], env);
    await waitReady(t.port, first);
    const submit = async (base: string) => {
      const res = await fetch(`${base}/v1/tasks`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': KEY }, body: JSON.stringify({ type: 'noop' }) });
      return res.status;
    };

    const s1 = await openSse(`${t.base}/v1/events?after=0`, { 'x-api-key': KEY });
    expect(s1.status).toBe(200);
    // A client submits without pause; the api is killed while events flow.
    let submitting = true;
    const writer = (async () => {
      while (submitting) await submit(t.base).catch(() => 0);
    })();
    await eventually(() => s1.events.length >= 20, { timeoutMs: 60_000 });
    await first.kill('SIGKILL');
    submitting = false;
    await writer;
    await s1.ended;
    const lastId = s1.events.at(-1)?.id;
    expect(lastId).toBeDefined();

    // Written while no api runs (the task service on the database, as another writer would).
    const pg = createPostgres({ url: t.dbUrl, poolMax: 2, connectTimeoutMs: 3000, statementTimeoutMs: 30_000 });
    const tasks = createTaskService({ db: pg.db, names: topologyNames(t.prefix), tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 50 });
    for (let i = 0; i < 5; i++) await tasks.submit({ type: 'noop', idempotencyKey: null }, { tenant: 'acme', actor: 'test', traceId: `down-${i}` });
    await tasks.idle();

    const port2 = await freePort();
    const second = spawnFogsched(['start', '--roles', 'api'], { ...env, PORT: String(port2) });
    await waitReady(port2, second);
    const base2 = `http://127.0.0.1:${port2}`;
    const s2 = await openSse(`${base2}/v1/events`, { 'x-api-key': KEY, 'last-event-id': lastId! });
    expect(s2.status).toBe(200);
    for (let i = 0; i < 3; i++) expect(await submit(base2)).toBe(202);

    const all = async () => (await t.q<{ position: number }>("SELECT e.position FROM events e JOIN task_current c ON c.task_id::text = e.stream_id WHERE c.tenant = 'acme' ORDER BY e.position")).map((r) => Number(r.position));
    const expected = await all();
    await eventually(() => s1.events.length + s2.events.length >= expected.length, { timeoutMs: 60_000, message: 'not every event arrived' });
    await new Promise((r) => setTimeout(r, 500)); // anything more would be a duplicate
    const seen = [...s1.events, ...s2.events].map((e) => Number(e.id));
    expect(new Set(seen).size).toBe(seen.length); // nothing twice
    expect([...seen].sort((a, b) => a - b)).toEqual(expected); // nothing missing
    expect(s2.events.length).toBeGreaterThanOrEqual(5 + 3); // what came while down and after (one event per submit)
    s2.close();
    await pg.close();
  });
});

import { afterEach, describe, expect, it } from 'vitest';
import { createHealthTracker } from '../../src/infra/health.js';
import { createLogger } from '../../src/infra/logger.js';
import { addReadinessCheck, startOpsServer, type OpsServer } from '../../src/infra/ops-server.js';

/** The ops server over HTTP on 127.0.0.1 (no services needed): the status codes each path answers. */
const logger = createLogger('silent');
const open: OpsServer[] = [];
const cleanups: (() => void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  for (const s of open.splice(0)) await s.close();
});

async function serve(now: () => number) {
  const health = createHealthTracker(now);
  const server = await startOpsServer({ host: '127.0.0.1', port: 0, logger, health });
  open.push(server);
  const get = async (path: string, init?: RequestInit) => {
    const res = await fetch(`http://127.0.0.1:${server.port}${path}`, init);
    return { status: res.status, text: await res.text() };
  };
  return { health, server, get };
}

describe('ops server', () => {
  it('/healthz is 503 once a loop stalls, 200 again after its next beat', async () => {
    let t = 0;
    const { health, get } = await serve(() => t);
    const loop = health.loop('relay', { intervalMs: 1000, graceMs: 1000 });
    expect((await get('/healthz')).status).toBe(200);
    t = 2001;
    const stalled = await get('/healthz');
    expect(stalled.status).toBe(503);
    expect(JSON.parse(stalled.text)).toEqual({ status: 'stalled', loops: { relay: { ok: false, sinceProgressMs: 2001, allowedMs: 2000 } } });
    loop.beat();
    expect((await get('/healthz')).status).toBe(200);
  });

  it('/readyz: 503 when a critical check fails, 200 degraded for a non-critical one; names and ok only, never the error text', async () => {
    const { get } = await serve(() => 0);
    let pgDown = true;
    cleanups.push(
      addReadinessCheck({ name: 'relay:postgresql', critical: true, check: () => (pgDown ? Promise.reject(new Error('connect ECONNREFUSED postgres://fogsched:hunter2@db')) : Promise.resolve()) }),
      addReadinessCheck({ name: 'fog-node:redis', critical: false, check: () => Promise.reject(new Error('redis down')) }),
    );
    const down = await get('/readyz');
    expect(down.status).toBe(503);
    expect(JSON.parse(down.text)).toEqual({ status: 'unavailable', checks: { 'relay:postgresql': { ok: false, critical: true }, 'fog-node:redis': { ok: false, critical: false } } });
    expect(down.text).not.toContain('hunter2');
    pgDown = false;
    const degraded = await get('/readyz');
    expect(degraded.status).toBe(200);
    expect(JSON.parse(degraded.text).status).toBe('degraded');
  });

  it('/metrics is Prometheus text with the process metrics; other paths 404, other methods 405', async () => {
    const { get } = await serve(() => 0);
    const m = await get('/metrics');
    expect(m.status).toBe(200);
    expect(m.text).toMatch(/^# TYPE process_cpu_seconds_total counter$/m);
    expect((await get('/')).status).toBe(404);
    expect((await get('/metrics', { method: 'POST' })).status).toBe(405);
  });

  it('a port already taken: logged, the process goes on without an ops server (port null)', async () => {
    const { server } = await serve(() => 0);
    const second = await startOpsServer({ host: '127.0.0.1', port: server.port as number, logger });
    expect(second.port).toBeNull();
    await second.close();
  });
});

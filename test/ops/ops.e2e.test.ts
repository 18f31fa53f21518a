import { afterEach, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { eventually } from '../helpers/database.js';
import { withDatabase } from '../helpers/services.js';
import { dropE2eEnvs, e2eEnv, opsPortOf, spawnFogsched, tcpProxy } from '../helpers/processes.js';

afterEach(dropE2eEnvs);

async function get(port: number, path: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, text: await res.text() };
}

describe('the ops port of a relay-only process', () => {
  it('serves /metrics with the relay metrics and the process metrics, /healthz and /readyz, on the port it logged', async () => {
    const t = await e2eEnv('opsrelay');
    const relay = spawnFogsched(['start', '--roles', 'relay'], { ...t.env, OPS_PORT: '0', LOG_LEVEL: 'info' });
    const port = await opsPortOf(relay);

    await eventually(async () => (await get(port, '/readyz')).status === 200, { timeoutMs: 30_000 });
    const ready = JSON.parse((await get(port, '/readyz')).text);
    // Names and ok only, as on the api's public /readyz: never an error text.
    expect(ready).toEqual({ status: 'ready', checks: { 'relay:postgresql': { ok: true, critical: true }, 'relay:rabbitmq': { ok: true, critical: true } } });
    const health = await get(port, '/healthz');
    expect(health.status).toBe(200);
    expect(JSON.parse(health.text)).toMatchObject({ status: 'ok', loops: { relay: { ok: true } } });

    // A dispatch row, as a submit would write it: the relay publishes it and counts it.
    await t.q(`INSERT INTO outbox (message_id, stream_id, exchange, routing_key, body) VALUES (gen_random_uuid(), 'ops-test', $1, 'light.normal', '{"taskId":"ops-test"}')`, [`${t.prefix}tasks`]);
    await eventually(async () => /^fogsched_relay_published_total 1$/m.test((await get(port, '/metrics')).text), { timeoutMs: 30_000 });
    // The outbox gauges are read from PostgreSQL on scrape and cached for 5 s: the row shows as published within a few scrapes.
    const expected = ['fogsched_relay_leader 1', 'fogsched_outbox_pending_rows 0', 'fogsched_outbox_lag_seconds 0', 'fogsched_relay_refused_total 0'];
    const metrics = await eventually(
      async () => {
        const m = await get(port, '/metrics');
        return m.status === 200 && expected.every((line) => m.text.split('\n').includes(line)) ? m : undefined;
      },
      { timeoutMs: 30_000, message: `metrics lack one of ${expected.join(', ')}` },
    );
    expect(metrics.text).toMatch(/^process_cpu_seconds_total \d/m);
    expect(metrics.text).toMatch(/^nodejs_eventloop_lag_seconds \d/m);
    // A relay-only process exports no metric of a role it does not run.
    expect(metrics.text).not.toContain('fogsched_fog_node_slots');
    expect(metrics.text).not.toContain('fogsched_http_request_duration_seconds');
    expect((await get(port, '/nope')).status).toBe(404);

    expect(await relay.kill('SIGTERM')).toBe(0);
  });

  it('with its PostgreSQL connection gone: /healthz stays 200 (the loop keeps turning), /readyz is 503 naming the check, and ready again once it is back', async () => {
    const t = await e2eEnv('opspgdown');
    const pgUrl = new URL(inject('postgresUrl'));
    const proxy = await tcpProxy({ host: pgUrl.hostname, port: Number(pgUrl.port || 5432) });
    const viaProxy = new URL(withDatabase(inject('postgresUrl'), t.db));
    viaProxy.hostname = '127.0.0.1';
    viaProxy.port = String(proxy.port);
    try {
      const relay = spawnFogsched(['start', '--roles', 'relay'], { ...t.env, DATABASE_URL: viaProxy.toString(), OPS_PORT: '0', LOG_LEVEL: 'info' });
      const port = await opsPortOf(relay);
      await eventually(async () => (await get(port, '/readyz')).status === 200 && /publishing replica/.test(relay.output()), { timeoutMs: 30_000 });

      await proxy.down();
      const downAt = performance.now();
      const unready = await eventually(
        async () => {
          const r = await get(port, '/readyz');
          return r.status === 503 ? JSON.parse(r.text) : undefined;
        },
        { timeoutMs: 30_000 },
      );
      expect(unready).toEqual({ status: 'unavailable', checks: { 'relay:postgresql': { ok: false, critical: true }, 'relay:rabbitmq': { ok: true, critical: true } } });

      // /healthz answers 200 throughout, and the relay's loop beats after the outage began
      // (a turn that fails on its dependency is a turn): it would be restarted otherwise.
      let beatAfterOutage = false;
      for (let i = 0; i < 20; i++) {
        const h = await get(port, '/healthz');
        expect(h.status, h.text).toBe(200);
        const body = JSON.parse(h.text) as { loops: { relay: { ok: boolean; sinceProgressMs: number } } };
        expect(body.loops.relay.ok).toBe(true);
        if (body.loops.relay.sinceProgressMs < performance.now() - downAt) beatAfterOutage = true;
        await new Promise((r) => setTimeout(r, 500));
      }
      expect(beatAfterOutage).toBe(true);

      await proxy.up();
      await eventually(async () => (await get(port, '/readyz')).status === 200, { timeoutMs: 60_000 });
      expect((await get(port, '/healthz')).status).toBe(200);
      expect(await relay.kill('SIGTERM')).toBe(0);
    } finally {
      await proxy.down();
    }
  });
});

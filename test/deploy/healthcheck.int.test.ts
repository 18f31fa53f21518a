import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, inject, it } from 'vitest';
import { freePort } from '../helpers/processes.js';
import { loadConfig } from '../../src/infra/config.js';
import { runHealthcheck } from '../../src/cli/healthcheck.js';

/** `fogsched healthcheck --role R` against the real local services and a stand-in /readyz. */
describe('fogsched healthcheck', () => {
  const lines: string[] = [];
  const write = (l: string) => lines.push(l);
  const base = () => ({ DATABASE_URL: inject('postgresUrl'), AMQP_URL: inject('amqpUrl'), REDIS_URL: inject('redisUrl') });

  it.each(['relay', 'ingest', 'coordinator', 'scheduler'] as const)('%s is healthy when PostgreSQL answers', async (role) => {
    expect(await runHealthcheck(loadConfig(base()), { role, timeoutMs: 15_000, write })).toBe(true);
    expect(lines.at(-1)).toMatch(new RegExp(`^ok {4}${role} postgresql `));
  });

  it('a role needing PostgreSQL is unhealthy when it is unreachable, within the timeout', async () => {
    const port = 1;
    const started = Date.now();
    expect(await runHealthcheck(loadConfig({ ...base(), DATABASE_URL: `postgres://root@127.0.0.1:${port}/x` }), { role: 'relay', timeoutMs: 1000, write })).toBe(false);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(lines.at(-1)).toMatch(/^FAIL {2}relay ECONNREFUSED postgresql /);
  });

  it('fog-node is healthy when one broker of the list accepts it, and says which are down', async () => {
    // Port 1: nothing listens there (a free port from freePort() could be taken meanwhile by the boot test's nodes).
    const dead = 'amqp://guest:guest@127.0.0.1:1';
    // A generous timeout for the live broker: this machine may be busy (the boot test runs beside it).
    expect(await runHealthcheck(loadConfig({ ...base(), AMQP_URL: `${dead},${inject('amqpUrl')}` }), { role: 'fog-node', timeoutMs: 15_000, write })).toBe(true);
    expect(lines.at(-1)).toMatch(/^ok {4}fog-node rabbitmq amqp:\/\/guest:\*\*\*@/);
    expect(await runHealthcheck(loadConfig({ ...base(), AMQP_URL: dead }), { role: 'fog-node', timeoutMs: 1000, write })).toBe(false);
    expect(lines.at(-1)).toMatch(/^FAIL {2}fog-node rabbitmq unreachable: .*ECONNREFUSED/);
  });

  it('api follows GET /readyz: 200 healthy, 503 or nothing listening unhealthy', async () => {
    let status = 200;
    const server = http.createServer((_, res) => res.writeHead(status).end('{}'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      const config = loadConfig({ ...base(), PORT: String(port) });
      expect(await runHealthcheck(config, { role: 'api', timeoutMs: 15_000, write })).toBe(true);
      status = 503;
      expect(await runHealthcheck(config, { role: 'api', timeoutMs: 15_000, write })).toBe(false);
      expect(lines.at(-1)).toBe(`FAIL  api http://127.0.0.1:${port}/readyz answered 503`);
    } finally {
      await new Promise((r) => server.close(r));
    }
    const closed = await freePort();
    expect(await runHealthcheck(loadConfig({ ...base(), PORT: String(closed) }), { role: 'api', timeoutMs: 1000, write })).toBe(false);
    expect(lines.at(-1)).toBe(`FAIL  api http://127.0.0.1:${closed}/readyz ECONNREFUSED`);
  });
});

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { parseApiKeys } from '../../src/infra/config.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { ID, METHODS, V1_ROUTES, variants } from './v1-routes.js';

/**
 * Issue 14: the key check looked at the raw URL (`startsWith('/v1/')`) while the router matched the
 * decoded path, so `POST /%761/tasks` submitted without a key. Every /v1 route, written every way
 * a router or proxy might read differently, with every method, and no credential: each answer is
 * the auth hook's 401 or the not-found handler's 404 (no handler ever answers with those codes),
 * and nothing is written.
 */
const ACME = 'acme-key-0123456789abcdef';
let tdb: TestDatabase;
let app: FastifyInstance;
let port: number;

beforeAll(async () => {
  tdb = await createTestDatabase('bypass');
  const names = topologyNames('bypass_');
  app = await buildApi({
    apiKeys: parseApiKeys(`acme:${ACME}`),
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: tdb.db,
    tasks: createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 }),
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [],
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as AddressInfo).port;
});

afterAll(async () => {
  await app?.close();
  await tdb?.drop();
});

const rows = async () => Number((await sql<{ n: string }>`SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM schedules) AS n`.execute(tdb.db)).rows[0]?.n);
const BODIES: Record<string, unknown> = { '/v1/tasks': { type: 'noop' }, '/v1/tasks/batch': { tasks: [{ type: 'noop' }] }, '/v1/schedules': { cron: '* * * * *', template: { type: 'noop' } } };

/** The path exactly as written (node:http sends it verbatim; light-my-request and fetch would normalise some). */
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
function raw(method: string, path: string, body: unknown): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {} }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: text }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

describe('/v1 without a credential, however the path is written', () => {
  it('POST /%761/tasks (the reported bypass) is 401 and writes nothing', async () => {
    const res = await raw('POST', '/%761/tasks', { type: 'noop' });
    expect(res.status, res.body).toBe(401);
    expect(await rows()).toBe(0);
  });

  it('every variant of every /v1 route, with every method: 401 from the auth hook or 404 from the not-found handler, nothing written', async () => {
    const seen = { 401: 0, 404: 0 };
    const wrong: string[] = [];
    for (const [, route] of V1_ROUTES) {
      const path = route.replace(':id', ID);
      for (const variant of variants(path)) {
        for (const method of METHODS) {
          const res = await raw(method, variant, method === 'GET' || method === 'HEAD' || method === 'OPTIONS' ? undefined : (BODIES[route] ?? {}));
          const code = res.body ? (JSON.parse(res.body) as { code?: string }).code : undefined;
          const ok =
            (res.status === 401 && (method === 'HEAD' || code === 'UNAUTHORIZED')) || (res.status === 404 && (method === 'HEAD' || code === 'ROUTE_NOT_FOUND'));
          if (!ok || !res.type.startsWith('application/problem+json')) wrong.push(`${method} ${variant} → ${res.status} ${res.type} ${res.body.slice(0, 120)}`);
          else seen[res.status as 401 | 404]++;
        }
      }
    }
    expect(wrong).toEqual([]);
    expect(seen[401]).toBeGreaterThan(V1_ROUTES.length * 3); // the decoded spellings do reach the routes, and are refused there
    expect(await rows()).toBe(0);
  });

  it('the same through inject (light-my-request), which normalises some paths itself', async () => {
    for (const [method, route] of V1_ROUTES) {
      for (const variant of variants(route.replace(':id', ID))) {
        const res = await app.inject({ method: method as 'GET', url: variant, ...(method === 'GET' ? {} : { payload: (BODIES[route] ?? {}) }) });
        expect([401, 404], `${method} ${variant}: ${res.body}`).toContain(res.statusCode);
        expect(res.json<{ code: string }>().code).toBe(res.statusCode === 401 ? 'UNAUTHORIZED' : 'ROUTE_NOT_FOUND');
      }
    }
    expect(await rows()).toBe(0);
  });
});

import net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { parseApiKeys } from '../../src/infra/config.js';
import { createLogger } from '../../src/infra/logger.js';
import { createPgListener, type PgListener } from '../../src/infra/pg-listener.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import { createTaskService, type TaskService } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';
import { openSse, type SseConnection } from '../helpers/sse-client.js';

/**
 * Server-sent events from the log over a real PostgreSQL with LISTEN/NOTIFY: live delivery,
 * filters, tenants, resume, out-of-order commits, heartbeats, the per-tenant bound, a slow
 * client, and the per-task stream's end.
 */
const ACME = 'acme-submitter-key-0123456789';
const ACME_OP = 'acme-operator-key-0123456789';
const ACME_AUDIT = 'acme-auditor-key-0123456789';
const GLOBEX = 'globex-submitter-key-012345678';
const SLOW = 'slow-submitter-key-0123456789';
const HASTY = 'hasty-submitter-key-012345678';
const MAX_STREAMS = 3;
const STALL_MS = 1500;

let tdb: TestDatabase;
let app: FastifyInstance;
let listener: PgListener;
let tasks: TaskService;
let base: string;
const open: SseConnection[] = [];

beforeAll(async () => {
  tdb = await createTestDatabase('sse');
  const names = topologyNames('sse_');
  tasks = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });
  listener = createPgListener({ url: tdb.url, channel: 'fogsched_events', pollMs: 60_000 });
  app = await buildApi({
    apiKeys: parseApiKeys(`acme:submitter:${ACME},acme:operator:${ACME_OP},acme:auditor:${ACME_AUDIT},globex:submitter:${GLOBEX},slow:submitter:${SLOW},hasty:submitter:${HASTY}`),
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 }),
    db: tdb.db,
    tasks,
    logger: createLogger(process.env.SSE_TEST_LOG === '1' ? 'debug' : 'silent'),
    version: '0.0.0-test',
    readiness: [],
    liveEvents: listener,
    // The poll is a minute: what arrives live here was woken by a notification.
    sse: { heartbeatMs: 200, maxConnectionsPerTenant: MAX_STREAMS, stallTimeoutMs: STALL_MS, maxBufferBytes: 8 * 1024 * 1024, pollMs: 60_000 },
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  await eventually(() => listener.listening, { message: 'listener never connected' });
});

afterEach(() => {
  for (const c of open.splice(0)) c.close();
});

afterAll(async () => {
  await app?.close();
  await listener?.close();
  await tasks?.idle();
  await tdb?.drop();
});

async function stream(path: string, key: string, headers: Record<string, string> = {}): Promise<SseConnection> {
  const c = await openSse(`${base}${path}`, { 'x-api-key': key, ...headers });
  open.push(c);
  return c;
}

async function submit(key: string, body: Record<string, unknown> = { type: 'noop' }): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/tasks', headers: { 'x-api-key': key }, payload: body });
  expect(res.statusCode, res.body).toBe(202);
  return res.json<{ id: string }>().id;
}

async function positionsOf(taskIds: string[]): Promise<number[]> {
  const { rows } = await tdb.pool.query<{ position: number }>('SELECT position FROM events WHERE stream_id = ANY($1) ORDER BY position', [taskIds]);
  return rows.map((r) => r.position);
}

describe('GET /v1/events', () => {
  it('delivers events live: id is the position, event the type, data the event', async () => {
    const s = await stream('/v1/events', ACME);
    expect(s.status).toBe(200);
    expect(s.contentType).toMatch(/^text\/event-stream/);
    const id = await submit(ACME);
    await eventually(() => s.events.filter((e) => e.event !== 'dropped').length >= 1, { timeoutMs: 20_000 });
    const [submitted] = s.json();
    // One event is the submit and the first dispatch: it leaves the task queued.
    expect(submitted).toMatchObject({ taskId: id, type: 'TaskSubmitted', streamType: 'task', version: 1, state: 'queued' });
    expect(new Date(submitted.at).toISOString()).toBe(submitted.at);
    expect(s.events.map((e) => Number(e.id))).toEqual(await positionsOf([id]));
    expect(s.events.map((e) => e.event)).toEqual(['TaskSubmitted']);
    s.close();
  });

  it('filters by type, task and state', async () => {
    const byType = await stream('/v1/events?type=TaskSubmitted,TaskCancelled', ACME);
    const [one, two] = [await submit(ACME), await submit(ACME)];
    const byTask = await stream(`/v1/events?task=${two}`, ACME);
    const byState = await stream('/v1/events?state=cancelled', ACME);
    const cancel = await app.inject({ method: 'POST', url: `/v1/tasks/${two}/cancel`, headers: { 'x-api-key': ACME_OP } });
    expect(cancel.statusCode, cancel.body).toBe(200);
    await eventually(() => byType.events.length >= 3 && byTask.events.length >= 1 && byState.events.length >= 1, { timeoutMs: 20_000 });
    expect(byType.json().map((e) => [e.taskId, e.type])).toEqual([
      [one, 'TaskSubmitted'],
      [two, 'TaskSubmitted'],
      [two, 'TaskCancelled'],
    ]);
    expect(byTask.json().map((e) => [e.taskId, e.type])).toEqual([[two, 'TaskCancelled']]);
    expect(byState.json().map((e) => [e.taskId, e.type, e.state])).toEqual([[two, 'TaskCancelled', 'cancelled']]);
    for (const s of [byType, byTask, byState]) s.close();
  });

  it("a tenant sees only its own tasks' events; an auditor of the tenant may read the stream", async () => {
    const globex = await stream('/v1/events?after=0', GLOBEX);
    const auditor = await stream('/v1/events', ACME_AUDIT);
    const acmeTask = await submit(ACME);
    const globexTask = await submit(GLOBEX);
    await eventually(() => globex.events.length >= 1 && auditor.events.length >= 1, { timeoutMs: 20_000 });
    // From the start of the log: everything globex sees is its own, though acme wrote most of the log.
    expect(new Set(globex.json().map((e) => e.taskId))).toEqual(new Set([globexTask]));
    expect(auditor.json().map((e) => e.taskId)).toContain(acmeTask);
    expect(auditor.json().map((e) => e.taskId)).not.toContain(globexTask);
    globex.close();
    auditor.close();
  });

  it('events of fog nodes and the autoscaler (tenant `system` in their metadata) reach no tenant, even one whose name they carry', async () => {
    const s = await stream('/v1/events?after=0', ACME);
    await tdb.pool.query(
      `INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data, metadata)
       VALUES ('node:edge-1', 'node', 1, gen_random_uuid(), 'FogNodeJoined', '{"nodeId":"edge-1"}', '{"tenant":"acme"}'),
              ('autoscale:light', 'autoscale', 1, gen_random_uuid(), 'FogTierScaled', '{"tier":"light"}', '{"tenant":"acme"}')`,
    );
    const marker = await submit(ACME); // written after them: once it arrives, they would have too
    await eventually(() => s.events.some((e) => e.data.includes(marker)), { timeoutMs: 20_000 });
    expect(s.events.map((e) => e.event)).not.toContain('FogNodeJoined');
    expect(s.events.map((e) => e.event)).not.toContain('FogTierScaled');
    s.close();
  });

  it('resumes with Last-Event-ID (or ?after=): everything after it, nothing twice', async () => {
    const first = await stream('/v1/events', ACME);
    const a = await submit(ACME);
    await eventually(() => first.events.length >= 1, { timeoutMs: 20_000 });
    first.close();
    const lastId = first.events.at(-1)!.id!;
    const b = await submit(ACME); // written while nobody listens
    const resumed = await stream('/v1/events', ACME, { 'last-event-id': lastId });
    const c = await submit(ACME);
    await eventually(() => resumed.events.length >= 2, { timeoutMs: 20_000 });
    const seen = [...first.events, ...resumed.events].map((e) => Number(e.id));
    expect(seen).toEqual(await positionsOf([a, b, c]));
    const viaQuery = await stream(`/v1/events?after=${lastId}`, ACME);
    await eventually(() => viaQuery.events.length >= 2, { timeoutMs: 20_000 });
    expect(viaQuery.events.map((e) => e.id)).toEqual(resumed.events.map((e) => e.id));
    resumed.close();
    viaQuery.close();
  });

  it('a Last-Event-ID that names no event, or is no position, is 400 problem+json before any stream', async () => {
    for (const value of ['999999999999', 'abc', '-1', '99999999999999999999']) {
      const res = await app.inject({ method: 'GET', url: '/v1/events', headers: { 'x-api-key': ACME, 'last-event-id': value } });
      expect(res.statusCode, `${value}: ${res.body}`).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.json<{ code: string }>().code).toBe('VALIDATION_FAILED');
    }
    const bad = await app.inject({ method: 'GET', url: '/v1/events?state=nope', headers: { 'x-api-key': ACME } });
    expect(bad.statusCode).toBe(400);
  });

  it('misses nothing when transactions commit out of position order', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 8; i++) ids.push(await submit(ACME));
    const s = await stream('/v1/events?type=TestMarker', ACME);
    // Writers that take their positions in one order and commit in the reverse one.
    const writers = await Promise.all(
      ids.map(async () => {
        const c = new pg.Client({ connectionString: tdb.url });
        await c.connect();
        return c;
      }),
    );
    const taken: number[] = [];
    try {
      for (const [i, c] of writers.entries()) {
        await c.query('BEGIN');
        const { rows } = await c.query<{ position: number }>(
          `INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data, metadata)
           VALUES ($1, 'task', 2, gen_random_uuid(), 'TestMarker', jsonb_build_object('writer', $2::int), '{}') RETURNING position`,
          [ids[i], i],
        );
        taken.push(Number(rows[0]!.position));
      }
      // Commit the highest position first: a reader by position alone would pass the lower ones.
      for (const i of [...writers.keys()].reverse()) {
        await writers[i]!.query('COMMIT');
        if (i === 4) await new Promise((r) => setTimeout(r, 200)); // let the reader look while the lower half is open
      }
      expect(taken).toEqual([...taken].sort((x, y) => x - y)); // positions rose with the writers; commits ran backwards
      await eventually(() => s.events.length >= writers.length, { timeoutMs: 20_000 });
      await new Promise((r) => setTimeout(r, 300)); // anything more would be a duplicate
      expect(s.events.map((e) => Number(e.id)).sort((x, y) => x - y)).toEqual(taken);
      expect(s.events).toHaveLength(taken.length);
    } finally {
      for (const c of writers) await c.end().catch(() => {});
      s.close();
    }
  });

  it('sends a `: hb` comment every SSE_HEARTBEAT_MS', async () => {
    const s = await stream('/v1/events', ACME);
    await eventually(() => s.comments.filter((c) => c === 'hb').length >= 3, { timeoutMs: 20_000 });
    s.close();
  });

  it('bounds open streams per tenant: 429 TOO_MANY_STREAMS past SSE_MAX_CONNECTIONS_PER_TENANT, other tenants unaffected', async () => {
    const held = [];
    for (let i = 0; i < MAX_STREAMS; i++) held.push(await stream('/v1/events', GLOBEX));
    const refused = await stream('/v1/events', GLOBEX);
    expect(refused.status).toBe(429);
    expect(refused.contentType).toMatch(/^application\/problem\+json/);
    expect(JSON.parse(refused.body)).toMatchObject({ code: 'TOO_MANY_STREAMS', status: 429 });
    const other = await stream('/v1/events', ACME);
    expect(other.status).toBe(200);
    other.close();
    held[0]!.close();
    const again = await eventually(async () => {
      const c = await stream('/v1/events', GLOBEX);
      return c.status === 200 ? c : null;
    }, { timeoutMs: 20_000 });
    for (const c of [...held, again]) c.close();
  });

  it('a client that hangs up before its stream starts gives its slot back (no lockout by abandoned requests)', async () => {
    const port = (app.server.address() as AddressInfo).port;
    // Each request is abandoned at once: most are gone before the route has read the log head.
    for (let i = 0; i < MAX_STREAMS * 4; i++) {
      const socket = net.connect(port, '127.0.0.1');
      await new Promise((r) => socket.once('connect', r));
      socket.write(`GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nX-API-Key: ${HASTY}\r\n\r\n`);
      socket.destroy();
    }
    // Every slot comes back: the tenant can hold MAX_STREAMS streams again.
    const held = await eventually(async () => {
      const cs: SseConnection[] = [];
      for (let i = 0; i < MAX_STREAMS; i++) cs.push(await stream('/v1/events', HASTY));
      if (cs.every((c) => c.status === 200)) return cs;
      for (const c of cs) c.close();
      return null;
    }, { timeoutMs: 20_000, intervalMs: 200, message: 'abandoned requests kept their slots' });
    for (const c of held) c.close();
  });

  it('drops a client that does not read, with a final `event: dropped` naming the reason', async () => {
    const task = await submit(SLOW);
    // ~16 MiB of events: more than the kernel buffers of both ends hold.
    const big = 'x'.repeat(64 * 1024);
    await tdb.pool.query(
      `INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data, metadata)
       SELECT $1, 'task', 1 + g, gen_random_uuid(), 'TestMarker', jsonb_build_object('filler', $2::text), '{}' FROM generate_series(1, 250) g`,
      [task, big],
    );
    const socket = net.connect((app.server.address() as AddressInfo).port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    socket.pause(); // reads nothing
    socket.write(`GET /v1/events?after=0 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nX-API-Key: ${SLOW}\r\n\r\n`);
    // The slow client holds one of tenant slow's slots until it is dropped.
    const others = [await stream('/v1/events', SLOW), await stream('/v1/events', SLOW)];
    await eventually(async () => {
      const c = await stream('/v1/events', SLOW);
      c.close();
      return c.status === 200;
    }, { timeoutMs: 30_000, intervalMs: 200, message: 'the slow client was never dropped' });
    // Now read what it was sent: it ends with the drop and its reason.
    let text = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => (text = (text + d).slice(-4096)));
    socket.resume();
    await eventually(() => /event: dropped\ndata: [^\n]*\n\n/.test(text), { timeoutMs: 30_000, message: `no dropped event at the end of ${text.slice(-300)}` });
    socket.destroy();
    const tail = text.slice(text.lastIndexOf('event: '));
    expect(tail).toMatch(/^event: dropped\ndata: \{"reason":"the client took nothing for 1500 ms/);
    for (const c of others) c.close();
  });
});

describe('GET /v1/tasks/:id/events', () => {
  it("sends the task's events from the first and ends after its terminal event", async () => {
    const id = await submit(ACME);
    const s = await stream(`/v1/tasks/${id}/events`, ACME);
    expect(s.status).toBe(200);
    await eventually(() => s.events.length >= 1, { timeoutMs: 20_000 });
    expect(s.isEnded()).toBe(false);
    await app.inject({ method: 'POST', url: `/v1/tasks/${id}/cancel`, headers: { 'x-api-key': ACME_OP } });
    await s.ended;
    expect(s.events.map((e) => e.event)).toEqual(['TaskSubmitted', 'TaskCancelled']);
    expect(s.events.map((e) => Number(e.id))).toEqual(await positionsOf([id]));
    // Resumed after the terminal event: nothing more, and it ends at once.
    const after = await stream(`/v1/tasks/${id}/events`, ACME, { 'last-event-id': s.events.at(-1)!.id! });
    await after.ended;
    expect(after.events).toEqual([]);
    // Resumed in the middle: the rest, then the end.
    const middle = await stream(`/v1/tasks/${id}/events?after=${s.events[0]!.id!}`, ACME);
    await middle.ended;
    expect(middle.events.map((e) => e.event)).toEqual(['TaskCancelled']);
  });

  it('a task of another tenant, or none, is 404 problem+json before the stream starts; a foreign Last-Event-ID is 400', async () => {
    const acmeTask = await submit(ACME);
    const globexTask = await submit(GLOBEX);
    for (const [id, key] of [[acmeTask, GLOBEX], ['0190a0b0-0000-7000-8000-00000000abcd', ACME]] as const) {
      const res = await app.inject({ method: 'GET', url: `/v1/tasks/${id}/events`, headers: { 'x-api-key': key } });
      expect(res.statusCode).toBe(404);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.json<{ code: string }>().code).toBe('TASK_NOT_FOUND');
    }
    const [foreign] = await positionsOf([globexTask]);
    const res = await app.inject({ method: 'GET', url: `/v1/tasks/${acmeTask}/events`, headers: { 'x-api-key': ACME, 'last-event-id': String(foreign) } });
    expect(res.statusCode).toBe(400);
    const noKey = await app.inject({ method: 'GET', url: `/v1/tasks/${acmeTask}/events` });
    expect(noKey.statusCode).toBe(401);
  });
});

import fc from 'fast-check';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { executeTaskCommands } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import {
  buildContractApi,
  createContractValidator,
  documentedCodes,
  mediaType,
  operationsOf,
  rowCounts,
  type ContractValidator,
  type OpenApiDocument,
  type OperationRef,
} from './contract.js';
import { broken, hostileString, validValue, type SchemaContext } from './schema-arbitrary.js';

/**
 * Requests generated from the OpenAPI document for every operation (valid ones, ones at the
 * boundaries, and broken ones: bodies, query strings, path parameters, headers, raw bytes), sent
 * to the API over a real PostgreSQL and Redis. Every answer must be below 500; an error must be
 * problem+json with a code docs/errors.md lists and a status the operation declares; a success
 * must match its declared schema; and a refused request must not have written a row.
 * Seeded (FUZZ_SEED to replay another run, FUZZ_RUNS to change the count per operation).
 */

const SEED = Number(process.env.FUZZ_SEED ?? 20261127);
const RUNS = Number(process.env.FUZZ_RUNS ?? 110);

let tdb: TestDatabase;
let api: Awaited<ReturnType<typeof buildContractApi>>;
let doc: OpenApiDocument;
let validator: ContractValidator;
let codes: Set<string>;
const pools = { task: [] as string[], schedule: [] as string[], failed: [] as string[], audit: ['cancellations', 'requeues', 'failed-last-24h', 'nodes-lost'] };
const tally = new Map<string, Map<number, number>>();
let sent = 0;

beforeAll(async () => {
  tdb = await createTestDatabase('fuzz');
  api = await buildContractApi(tdb, { prefix: `fuzz_${process.pid}_`, maxSchedules: 25, minIntervalMs: 1000, limits: { maxPayloadBytes: 4096 } });
  await api.app.ready();
  doc = (await api.app.inject({ method: 'GET', url: '/docs/json' })).json<OpenApiDocument>();
  validator = createContractValidator(doc);
  codes = documentedCodes();
  for (let i = 0; i < 3; i++) pools.task.push((await api.app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'seed' } })).json<{ id: string }>().id);
  for (let i = 0; i < 2; i++) {
    pools.schedule.push((await api.app.inject({ method: 'POST', url: '/v1/schedules', payload: { cron: '0 * * * *', template: { type: 'seed' } } })).json<{ id: string }>().id);
  }
});

afterAll(async () => {
  await api?.close();
  await tdb?.drop();
});

// ------------------------------------------------------------------ what a request is made of

/** A path parameter: an id the API knows (picked when sent), or a literal (already percent-encoded). */
type PathValue = { known: keyof typeof pools; pick: number } | { literal: string };

interface Generated {
  readonly path: Record<string, PathValue>;
  /** Query string pieces, already encoded. */
  readonly query: string[];
  readonly headers: Record<string, string>;
  /** The body as sent: JSON text, or raw bytes meant to be something else. */
  readonly body?: string;
  readonly kind: string;
}

const ctx: SchemaContext = {
  resolve(ref) {
    const name = ref.replace('#/components/schemas/', '');
    const schema = doc.components.schemas[name];
    if (!schema) throw new Error(`no component ${name}`);
    return schema;
  },
  hints: {
    cron: fc.oneof(fc.constantFrom('0 * * * *', '*/5 * * * *', '0 2 * * 1-5', '*/2 * * * * *', '* * * * * *', '30 9 1 * *'), fc.string({ maxLength: 20 })),
    timezone: fc.oneof(fc.constantFrom('UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata'), fc.string({ minLength: 1, maxLength: 64 })),
    cpu: fc.oneof({ arbitrary: fc.double({ min: 0.01, max: 1, noNaN: true }), weight: 3 }, fc.double({ min: 0.01, max: 64, noNaN: true })),
    memoryMb: fc.oneof({ arbitrary: fc.integer({ min: 1, max: 1024 }), weight: 3 }, fc.integer({ min: 1, max: 1048576 })),
    payload: fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.constant('x'.repeat(4094)), fc.constant('x'.repeat(4095))),
    // Random ids name no task (INVALID_DEPENDENCIES) and random step names no step (INVALID_WORKFLOW): mostly none, so valid requests get through.
    dependsOn: fc.oneof({ arbitrary: fc.constant([]), weight: 3 }, fc.array(fc.uuid(), { maxLength: 2 })),
    placement: fc.oneof(fc.constantFrom({ zone: 'site-a' }, { labels: { gpu: 'yes', 'os.family': 'linux' } }, { zone: 'z', labels: {} }, {}), fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 2 }).map((labels) => ({ labels }))),
  },
};

/** Encodes a query value the way a client would; a lone surrogate cannot be encoded, so it goes as raw CESU-8 escapes. */
function encode(value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value) ?? '';
  try {
    return encodeURIComponent(text);
  } catch {
    return '%ED%A0%80';
  }
}

const hostileQueryPiece = fc.oneof(
  fc.constantFrom('%00', '%zz', '%ED%A0%80', '%C0%80', '%F0%9F%98%80', '+', '&&', '=', '%', 'a=%00', 'limit=1&limit=2', 'state[]=queued', 'cursor=9223372036854775807', 'cursor=9223372036854775808'),
  fc.tuple(fc.string({ maxLength: 10 }), hostileString).map(([k, v]) => `${encode(k)}=${encode(v)}`),
);

const hostilePath = fc.constantFrom(
  'not-a-uuid',
  '%00',
  '%zz',
  '%2F',
  '..',
  '%2E%2E',
  '0193A5B2-7C4E-7D1A-9F3E-2B8C6D0E4F11',
  '{0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11}',
  '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11%00',
  'x'.repeat(300),
  '%ED%A0%80',
  '%F0%9F%98%80',
  ' ',
);

const RAW_BODIES = [
  'not json',
  '{',
  '{"type":"noop",}',
  '\ufeff{"type":"noop"}',
  '{"type":"noop","__proto__":{"polluted":1}}',
  '{"type":"noop","constructor":{"prototype":{"polluted":1}}}',
  '{"type":"noop","payload":1e400}',
  '{"type":"noop","payload":-1e400}',
  '{"type":"noop","payload":123456789012345678901234567890}',
  '{"type":"noop","maxAttempts":1e400}',
  '{"type":"noop","type":"dup"}',
  '{"type":"noop","payload":"\\u0000"}',
  '{"type":"noop","payload":{"\\u0000":1}}',
  '{"type":"noop","payload":"\\ud800"}',
  '{"tasks":[{"type":"noop","payload":"\\udfff"}]}',
  '{"cron":"0 * * * *","template":{"type":"noop","payload":{"\\ud800x":1}}}',
  `{"type":"noop","payload":${'['.repeat(10_000)}${']'.repeat(10_000)}}`,
  '[' .repeat(100_000),
  'null',
  '"noop"',
  '1',
  '',
];

const CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON', 'text/plain', 'application/xml', 'application/problem+json', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x'];

function requestsFor(op: OperationRef, mode: 'valid' | 'broken'): fc.Arbitrary<Generated> {
  const params = op.operation.parameters ?? [];
  const pathParams = params.filter((p) => p.in === 'path');
  const queryParams = params.filter((p) => p.in === 'query');
  const headerParams = params.filter((p) => p.in === 'header');
  const pool: keyof typeof pools = op.path.startsWith('/v1/audit/') ? 'audit' : op.path.startsWith('/v1/schedules') ? 'schedule' : op.operation.operationId === 'requeueTask' ? 'failed' : 'task';
  const bodySchema = op.operation.requestBody?.content['application/json']?.schema;

  const path = fc.record(
    Object.fromEntries(
      pathParams.map((p) => [
        p.name,
        mode === 'valid'
          ? fc.oneof({ arbitrary: fc.nat().map((pick): PathValue => ({ known: pool, pick })), weight: 4 }, fc.uuid().map((u): PathValue => ({ literal: u })))
          : fc.oneof(fc.nat().map((pick): PathValue => ({ known: pool, pick })), hostilePath.map((literal): PathValue => ({ literal }))),
      ]),
    ),
  ) as fc.Arbitrary<Record<string, PathValue>>;

  const validQuery = fc
    .tuple(...queryParams.map((p) => fc.option(validValue(p.schema, ctx, p.name), { nil: undefined, freq: 2 })))
    .map((values) => values.flatMap((v, i) => (v === undefined ? [] : [`${encodeURIComponent(queryParams[i]!.name)}=${encode(v)}`])));
  const query =
    mode === 'valid'
      ? validQuery
      : fc.tuple(validQuery, fc.array(hostileQueryPiece, { maxLength: 2 }), fc.array(fc.constantFrom(...queryParams.map((p) => p.name), 'colour'), { maxLength: 2 }), hostileString).map(
          ([valid, hostile, names, value]) => [...valid, ...hostile, ...names.map((n) => `${n}=${encode(value)}`)],
        );

  const validHeaders = fc
    .tuple(...headerParams.map((p) => fc.option(validValue(p.schema, ctx, p.name), { nil: undefined })))
    .map((values) => Object.fromEntries(values.flatMap((v, i) => (v === undefined ? [] : [[headerParams[i]!.name, typeof v === 'string' ? v : JSON.stringify(v)]]))) as Record<string, string>);
  const headers =
    mode === 'valid'
      ? validHeaders
      : fc
          .tuple(validHeaders, fc.option(fc.constantFrom('idempotency-key', 'x-actor', 'accept', 'x-request-id', ...headerParams.map((p) => p.name))), hostileString)
          .map(([h, name, value]) => (name ? { ...h, [name]: value } : h));

  let body: fc.Arbitrary<{ body?: string; contentType?: string }>;
  if (!bodySchema) {
    // Operations without a body still parse one when it is sent.
    body = mode === 'valid' ? fc.constant({}) : fc.oneof(fc.constant({}), fc.constantFrom(...RAW_BODIES).map((b) => ({ body: b, contentType: 'application/json' })));
  } else if (mode === 'valid') {
    body = validValue(bodySchema, ctx).map((v) => ({ body: JSON.stringify(v), contentType: 'application/json' }));
  } else {
    body = fc.oneof(
      { arbitrary: broken(validValue(bodySchema, ctx)).map((v) => ({ body: JSON.stringify(v) ?? 'null', contentType: 'application/json' })), weight: 5 },
      fc.constantFrom(...RAW_BODIES).map((b) => ({ body: b, contentType: 'application/json' })),
      fc.tuple(validValue(bodySchema, ctx), fc.constantFrom(...CONTENT_TYPES)).map(([v, contentType]) => ({ body: JSON.stringify(v), contentType })),
      fc.constant({}),
    );
  }

  return fc.tuple(path, query, headers, body).map(([p, q, h, b]) => ({
    path: p,
    query: q,
    headers: { ...h, ...(b.contentType ? { 'content-type': b.contentType } : {}) },
    ...(b.body !== undefined ? { body: b.body } : {}),
    kind: mode,
  }));
}

function toInject(op: OperationRef, g: Generated): InjectOptions & { url: string } {
  const url =
    op.path.replace(/\{(\w+)\}/g, (_, name: string) => {
      const v = g.path[name];
      if (!v) return 'missing';
      if ('literal' in v) return v.literal;
      const pool = pools[v.known];
      return pool[v.pick % pool.length] ?? 'none';
    }) + (g.query.length > 0 ? `?${g.query.join('&')}` : '');
  return { method: op.method.toUpperCase() as 'GET', url, headers: g.headers, ...(g.body !== undefined ? { payload: g.body } : {}) };
}

/** Schedules to pause and resume: the generated deletes may have used up the pool. */
async function freshSchedules(n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await api.app.inject({ method: 'POST', url: '/v1/schedules', payload: { cron: '0 * * * *', template: { type: 'seed' } } })).json<{ id: string }>().id);
  lastRows = await rowCounts(tdb.db);
  return ids;
}

/** Tasks that failed as a dead-lettered delivery would leave them, written straight to the event store. */
async function failedTasks(n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const id = (await api.app.inject({ method: 'POST', url: '/v1/tasks', payload: { type: 'flaky' } })).json<{ id: string }>().id;
    const command = { type: 'DeadLetterTask' as const, data: { attempt: 1, reason: 'rejected' as const, queue: null, now: new Date().toISOString() } };
    await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId: id, command, metadata: { actor: 'test' } }], api.names));
    ids.push(id);
  }
  lastRows = await rowCounts(tdb.db);
  return ids;
}

/** Operations that answer with server-sent events: their streams do not end by themselves. */
function isEventStream(op: OperationRef): boolean {
  return Object.values(op.operation.responses).some((r) => r.content?.['text/event-stream'] !== undefined);
}

/**
 * Sends a request to an event-stream operation: the answer is taken once its head is written; a
 * stream is closed at once (as a client hanging up), any other answer read whole.
 */
async function injectStream(req: InjectOptions): Promise<{ statusCode: number; headers: LightMyRequestResponse['headers']; body: string }> {
  const res = await api.app.inject({ ...req, payloadAsStream: true });
  if (mediaType(res.headers['content-type'] as string) === 'text/event-stream') {
    (res.raw.res as unknown as { destroy(): void }).destroy(); // the client hangs up: the server ends its stream
    return { statusCode: res.statusCode, headers: res.headers, body: '' };
  }
  const chunks: Buffer[] = [];
  for await (const chunk of res.stream()) chunks.push(chunk as Buffer);
  return { statusCode: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') };
}

// ------------------------------------------------------------------ what must hold for every answer

let lastRows: Awaited<ReturnType<typeof rowCounts>>;

async function sendAndJudge(op: OperationRef, g: Generated): Promise<void> {
  const req = toInject(op, g);
  const show = () => `${req.method} ${req.url.slice(0, 300)} headers=${JSON.stringify(req.headers).slice(0, 300)} body=${(typeof req.payload === 'string' ? req.payload : JSON.stringify(req.payload ?? '')).slice(0, 300)}`;
  let res: { statusCode: number; headers: LightMyRequestResponse['headers']; body: string };
  try {
    res = isEventStream(op) ? await injectStream(req) : await api.app.inject(req);
  } catch (error) {
    throw new Error(`inject failed (${(error as Error).message}) for ${show()}`);
  }
  sent++;
  const statuses = tally.get(op.operation.operationId!) ?? new Map<number, number>();
  statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
  tally.set(op.operation.operationId!, statuses);

  const fail = (why: string) => {
    throw new Error(`${why}\n  request: ${show()}\n  answer: ${res.statusCode} ${String(res.headers['content-type'])} ${res.body.slice(0, 500)}`);
  };
  if (res.statusCode >= 500) fail('a 5xx');
  let body: unknown;
  if (mediaType(res.headers['content-type'] as string) === 'text/event-stream') {
    if (res.statusCode !== 200) fail('an event stream with a status other than 200');
    body = '';
  } else if (res.body.length > 0) {
    try {
      body = JSON.parse(res.body);
    } catch {
      fail('an answer that is not JSON');
    }
  }
  if (res.statusCode >= 400) {
    if (mediaType(res.headers['content-type'] as string) !== 'application/problem+json') fail('an error that is not problem+json');
    const problem = validator.component('Problem', body);
    if (problem) fail(`a problem that does not match the Problem schema: ${problem}`);
    const p = body as { code: string; status: number };
    if (!codes.has(p.code)) fail(`code ${p.code} is not in docs/errors.md`);
    if (p.status !== res.statusCode) fail('problem.status differs from the HTTP status');
  }
  const mismatch = validator.response(op, res.statusCode, res.headers['content-type'] as string | undefined, body);
  if (mismatch) fail(`the answer does not match the document: ${mismatch}`);

  // Writes: a refused request wrote nothing; a success may have (and GETs never do).
  if (res.statusCode >= 400 || op.method === 'post' || op.method === 'delete') {
    const rows = await rowCounts(tdb.db);
    if (res.statusCode >= 400 && JSON.stringify(rows) !== JSON.stringify(lastRows)) fail(`a refused request wrote rows: ${JSON.stringify(lastRows)} → ${JSON.stringify(rows)}`);
    lastRows = rows;
  }
  // Remember what was created, so later requests can name it.
  if (res.statusCode < 300 && body && typeof body === 'object') {
    if (op.operation.operationId === 'submitTask') pools.task.push((body as { id: string }).id);
    if (op.operation.operationId === 'submitTaskBatch') pools.task.push(...(body as { tasks: { id: string }[] }).tasks.map((t) => t.id));
    if (op.operation.operationId === 'createSchedule') pools.schedule.push((body as { id: string }).id);
  }
}

describe('fuzzing every operation from the OpenAPI document', () => {
  it('every answer is below 500, errors are documented problems, successes match their schema, refusals write nothing', async () => {
    lastRows = await rowCounts(tdb.db);
    const operations = operationsOf(doc);
    expect(operations.length).toBeGreaterThan(0);
    for (const [i, op] of operations.entries()) {
      // Requeue needs failed tasks (no fog node runs here, and requeueFailedTasks may have put the earlier ones back).
      if (op.operation.operationId === 'requeueTask') pools.failed = await failedTasks(5);
      if (op.operation.operationId === 'pauseSchedule' || op.operation.operationId === 'resumeSchedule') pools.schedule = await freshSchedules(2);
      for (const mode of ['valid', 'broken'] as const) {
        await fc.assert(
          fc.asyncProperty(requestsFor(op, mode), (g) => sendAndJudge(op, g)),
          { seed: SEED + i * 2 + (mode === 'broken' ? 1 : 0), numRuns: mode === 'valid' ? Math.ceil(RUNS / 2) : RUNS, endOnFailure: true },
        );
      }
    }

    // Requests that match no operation: the same writer answers them.
    for (const [method, url] of [
      ['GET', '/v1/tasks/%zz'],
      ['GET', '/v1/nope'],
      ['PUT', '/v1/tasks'],
      ['PATCH', '/v1/schedules'],
      ['GET', '/v1/tasks/00000000-0000-0000-0000-000000000000/nope'],
      ['POST', '/%00'],
      ['GET', `/${'x'.repeat(5000)}`],
    ] as const) {
      const res = await api.app.inject({ method, url });
      expect(res.statusCode, `${method} ${url}`).toBeLessThan(500);
      expect(mediaType(res.headers['content-type'] as string), `${method} ${url}`).toBe('application/problem+json');
      expect(codes, `${method} ${url}`).toContain(res.json<{ code: string }>().code);
    }

    // The generators reached both sides of every operation.
    const summary = Object.fromEntries([...tally].map(([id, s]) => [id, Object.fromEntries(s)]));
    for (const op of operations) {
      const statuses = [...(tally.get(op.operation.operationId!)?.keys() ?? [])];
      expect(statuses.some((s) => s < 300), `${op.operation.operationId} never succeeded: ${JSON.stringify(summary)}`).toBe(true);
      if (op.path.startsWith('/v1/')) expect(statuses.some((s) => s >= 400), `${op.operation.operationId} was never refused`).toBe(true);
    }
    expect(sent).toBeGreaterThan(operations.length * RUNS);
    console.log(`contract fuzz: ${sent} requests, seed ${SEED}`, JSON.stringify(summary));
  });
});

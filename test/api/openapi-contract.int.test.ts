import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import createClient from 'openapi-fetch';
import openapiTS, { astToString } from 'openapi-typescript';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PRIORITIES, TASK_STATUSES } from '../../src/domain/index.js';
import { executeTaskCommands } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { buildContractApi, createContractValidator, documentedCodes, operationsOf, type ContractValidator, type OpenApiDocument, type OperationRef } from './contract.js';

/**
 * The OpenAPI document against the server that serves it, as a third party would check it:
 * what the document promises (names, errors, examples, shared shapes), then a client generated
 * from it (openapi-typescript + openapi-fetch) that must type-check and work, each answer
 * validated with ajv against the document.
 */

let tdb: TestDatabase;
let api: Awaited<ReturnType<typeof buildContractApi>>;
let doc: OpenApiDocument;
let validator: ContractValidator;
let operations: OperationRef[];

beforeAll(async () => {
  tdb = await createTestDatabase('contract');
  api = await buildContractApi(tdb, { prefix: `contract_${process.pid}_`, minIntervalMs: 2000 });
  await api.app.ready();
  const res = await api.app.inject({ method: 'GET', url: '/docs/json' });
  expect(res.statusCode).toBe(200);
  doc = res.json<OpenApiDocument>();
  validator = createContractValidator(doc);
  operations = operationsOf(doc);
});

afterAll(async () => {
  await api?.close();
  await tdb?.drop();
});

const label = (op: OperationRef) => `${op.method.toUpperCase()} ${op.path}`;
const isV1 = (op: OperationRef) => op.path.startsWith('/v1/');

/** Every value in a JSON tree, with its path. */
function* walk(value: unknown, path = '#'): Generator<[string, unknown]> {
  yield [path, value];
  if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) yield* walk(v, `${path}/${k}`);
}

describe('the OpenAPI document', () => {
  it('is 3.1 with servers, and names every operation (unique operationId) with a summary', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.servers?.length).toBeGreaterThan(0);
    expect(operations.length).toBe(25);
    const ids = operations.map((op) => op.operation.operationId);
    for (const op of operations) {
      expect(op.operation.operationId, label(op)).toMatch(/^[a-z][A-Za-z]+$/);
      expect(op.operation.summary, label(op)).toBeTruthy();
    }
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('declares every /v1 error as application/problem+json with the Problem schema, and the statuses each operation can give', () => {
    // /readyz answers 503 with its checks (application/json), which is what load balancers read.
    for (const op of operations.filter(isV1)) {
      const statuses = Object.keys(op.operation.responses).map(Number);
      for (const status of statuses.filter((s) => s >= 400)) {
        const content = op.operation.responses[String(status)]!.content!;
        expect(Object.keys(content), `${label(op)} ${status}`).toEqual(['application/problem+json']);
        expect(content['application/problem+json']!.schema).toEqual({ $ref: '#/components/schemas/Problem' });
      }
      expect(statuses, label(op)).toEqual(expect.arrayContaining([400, 401, 403, 503]));
      if (op.path.includes('{')) expect(statuses, label(op)).toContain(404);
      if (op.method === 'post' || op.method === 'delete') expect(statuses, label(op)).toEqual(expect.arrayContaining([413, 415]));
      if (['submitTask', 'submitTaskBatch'].includes(op.operation.operationId!)) {
        expect(statuses, label(op)).toEqual(expect.arrayContaining([422, 429]));
        expect(op.operation.responses['429']!.headers, 'Retry-After on 429').toHaveProperty('retry-after');
      }
      expect(op.operation.responses['503']!.headers, 'Retry-After on 503').toHaveProperty('retry-after');
    }
  });

  it('has an example for every request body and answer, each valid against its own schema', () => {
    // The checker itself refuses what does not match.
    const submit = operations.find((op) => op.operation.operationId === 'submitTask')!;
    expect(validator.response(submit, 202, 'application/json', { id: 'x' })).toMatch(/required|format/);
    expect(validator.response(submit, 202, 'application/problem+json', {})).toMatch(/declared as application\/json/);
    expect(validator.response(submit, 418, 'application/json', {})).toMatch(/does not declare/);
    for (const op of operations) {
      const body = op.operation.requestBody?.content['application/json'];
      if (op.operation.requestBody) {
        expect(body?.example, `${label(op)} request example`).toBeDefined();
        const at = `/paths/${op.path.replace(/\//g, '~1')}/${op.method}/requestBody/content/application~1json/schema`;
        expect(validator.at(at, body!.example), `${label(op)} request example`).toBeNull();
      }
      for (const [status, response] of Object.entries(op.operation.responses)) {
        for (const [type, media] of Object.entries(response.content ?? {})) {
          expect(media.example, `${label(op)} ${status} ${type} example`).toBeDefined();
          expect(validator.response(op, Number(status), type, media.example), `${label(op)} ${status} example`).toBeNull();
        }
      }
    }
  });

  it('names the shared shapes (no def-0), defines the task shape once, and lists states and priorities as enums', () => {
    const names = Object.keys(doc.components.schemas);
    expect(names).toEqual(expect.arrayContaining(['Task', 'TaskList', 'Problem', 'Schedule', 'ScheduleList', 'HistoryEntry', 'TaskHistory', 'Cluster', 'Priority', 'TaskState']));
    expect(names.filter((n) => /^def-\d+$/.test(n))).toEqual([]);
    expect(JSON.stringify(doc)).not.toMatch(/def-\d+/);

    // The task's own fields appear in one schema only: everything else refers to it.
    const taskLike = [...walk(doc)].filter(([, v]) => {
      const props = (v as { properties?: Record<string, unknown> } | null)?.properties;
      return props && typeof props === 'object' && 'submittedAt' in props && 'maxAttempts' in props;
    });
    expect(taskLike.map(([p]) => p)).toEqual(['#/components/schemas/Task']);

    expect(doc.components.schemas.TaskState).toMatchObject({ type: 'string', enum: [...TASK_STATUSES] });
    expect(doc.components.schemas.Priority).toMatchObject({ type: 'string', enum: [...PRIORITIES] });
    // No union of constants anywhere: a generator would make them an anonymous union.
    const constUnions = [...walk(doc)].filter(([, v]) => {
      const anyOf = (v as { anyOf?: unknown[] } | null)?.anyOf;
      return Array.isArray(anyOf) && anyOf.length > 1 && anyOf.every((m) => m && typeof m === 'object' && 'const' in m);
    });
    expect(constUnions.map(([p]) => p)).toEqual([]);
  });

  it("keeps errors[].code in a problem (the response schema no longer strips it)", async () => {
    expect((doc.components.schemas.Problem as { properties: { errors: { items: { properties: object } } } }).properties.errors.items.properties).toHaveProperty('code');
    const res = await api.app.inject({ method: 'POST', url: '/v1/tasks/batch', payload: { tasks: [{ type: 'a' }, { type: 'b', resources: { cpu: 64, memoryMb: 64 } }] } });
    expect(res.statusCode).toBe(422);
    expect(res.json()).toMatchObject({ code: 'NO_TIER_FITS', errors: [{ path: 'body/tasks/1', code: 'NO_TIER_FITS' }] });
  });

  it('every code in an example is one docs/errors.md lists', () => {
    const codes = documentedCodes();
    for (const [path, v] of walk(doc)) {
      if (!path.includes('application/problem+json/example/code')) continue;
      expect(codes, path).toContain(v);
    }
  });

  it('/docs still serves the UI', async () => {
    const html = await api.app.inject({ method: 'GET', url: '/docs' });
    expect([200, 302]).toContain(html.statusCode);
  });
});

describe('a client generated from the document', () => {
  let dir: string;
  let baseUrl: string;
  beforeAll(async () => {
    await api.app.listen({ host: '127.0.0.1', port: 0 });
    baseUrl = `http://127.0.0.1:${(api.app.server.address() as { port: number }).port}`;
    dir = mkdtempSync(join(tmpdir(), 'fogsched-contract-'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('is generated by openapi-typescript, type-checks strictly, and works against the API: every operation, every answer valid against the document', async () => {
    writeFileSync(join(dir, 'openapi.ts'), astToString(await openapiTS(doc as never)));
    copyFileSync(fileURLToPath(new URL('./contract-client.ts', import.meta.url)), join(dir, 'contract-client.ts'));

    const root = fileURLToPath(new URL('../../', import.meta.url));
    const program = ts.createProgram([join(dir, 'contract-client.ts')], {
      strict: true,
      noUncheckedIndexedAccess: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      lib: ['lib.es2023.d.ts'],
      types: ['node'],
      typeRoots: [join(root, 'node_modules/@types')],
      skipLibCheck: true,
      // The copy lives outside the project: point it at the project's openapi-fetch.
      paths: { 'openapi-fetch': [join(root, 'node_modules/openapi-fetch/dist/index.d.ts')] },
    });
    const diagnostics = ts.getPreEmitDiagnostics(program);
    const text = ts.formatDiagnostics(diagnostics, { getCanonicalFileName: (f) => f, getCurrentDirectory: () => dir, getNewLine: () => '\n' });
    expect(diagnostics.length, text).toBe(0);

    interface ClientModule {
      exercise(h: {
        createClient: typeof createClient;
        baseUrl: string;
        seen(operationId: string, response: Response, body: unknown): void;
        succeed(taskId: string): Promise<void>;
        deadLetter(taskId: string): Promise<void>;
        check(condition: boolean, message: string): void;
      }): Promise<void>;
    }
    const client = (await import(pathToFileURL(join(dir, 'contract-client.ts')).href)) as ClientModule;
    const byId = new Map(operations.map((op) => [op.operation.operationId!, op]));
    const seen = new Map<string, Set<number>>();
    const codes = documentedCodes();
    const end = (taskId: string, command: Parameters<typeof executeTaskCommands>[1][number]['command']) =>
      tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId, command, metadata: { actor: 'test' } }], api.names)).then(() => undefined);

    await client.exercise({
      createClient,
      baseUrl,
      seen(operationId, response, body) {
        const op = byId.get(operationId);
        expect(op, operationId).toBeDefined();
        const problem = validator.response(op!, response.status, response.headers.get('content-type') ?? undefined, body);
        expect(problem, `${operationId} ${response.status} ${JSON.stringify(body)}`).toBeNull();
        if (response.status >= 400) expect(codes).toContain((body as { code: string }).code);
        seen.set(operationId, (seen.get(operationId) ?? new Set()).add(response.status));
      },
      succeed: (taskId) => {
        const now = new Date().toISOString();
        return end(taskId, { type: 'SucceedTask', data: { attempt: 1, nodeId: 'n1', output: { ok: true }, durationMs: 1, startedAt: now, now } });
      },
      deadLetter: (taskId) => end(taskId, { type: 'DeadLetterTask', data: { attempt: 1, reason: 'rejected', queue: null, now: new Date().toISOString() } }),
      check: (condition, message) => expect(condition, message).toBe(true),
    });

    // Every operation was called and answered with a success at least once.
    for (const op of operations) {
      const statuses = [...(seen.get(op.operation.operationId!) ?? [])];
      expect(statuses.some((s) => s < 300), `${op.operation.operationId}: ${statuses.join(', ') || 'never called'}`).toBe(true);
    }
  });
});

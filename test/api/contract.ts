import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ajv2020 from 'ajv/dist/2020.js';
import ajvFormats from 'ajv-formats';
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import { inject } from 'vitest';
import { buildApi, type ApiLimits } from '../../src/api/app.js';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import type { ApiKey } from '../../src/infra/config.js';
import { readClusterView } from '../../src/infra/cluster-view.js';
import { createLogger } from '../../src/infra/logger.js';
import { createRedis, recordCancelled, redisKeys, whenReady } from '../../src/infra/redis.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduleService } from '../../src/schedules/index.js';
import type { Database } from '../../src/store/index.js';
import { createTaskService } from '../../src/tasks/index.js';

/**
 * The API contract as a third party sees it: the OpenAPI document the server serves, a validator
 * of answers against it, and the error codes docs/errors.md promises. Used by the typed-client
 * test and by the fuzz test.
 */

export type JsonSchema = Record<string, unknown> & { $ref?: string };

export interface MediaObject {
  readonly schema: JsonSchema;
  readonly example?: unknown;
}

export interface Parameter {
  readonly in: 'query' | 'path' | 'header' | 'cookie';
  readonly name: string;
  readonly required?: boolean;
  readonly schema: JsonSchema;
}

export interface Operation {
  readonly operationId?: string;
  readonly summary?: string;
  readonly parameters?: readonly Parameter[];
  readonly requestBody?: { readonly required?: boolean; readonly content: Record<string, MediaObject> };
  readonly responses: Record<string, { readonly description: string; readonly content?: Record<string, MediaObject>; readonly headers?: Record<string, unknown> }>;
  readonly security?: readonly unknown[];
}

export interface OpenApiDocument {
  readonly openapi: string;
  readonly servers?: readonly { url: string }[];
  readonly paths: Record<string, Record<string, Operation>>;
  readonly components: { readonly schemas: Record<string, JsonSchema> };
}

export interface OperationRef {
  readonly method: string;
  readonly path: string;
  readonly operation: Operation;
}

export const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'] as const;

export function operationsOf(doc: OpenApiDocument): OperationRef[] {
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([method]) => (METHODS as readonly string[]).includes(method))
      .map(([method, operation]) => ({ method, path, operation })),
  );
}

/** The media type without parameters: `application/problem+json; charset=utf-8` → `application/problem+json`. */
export function mediaType(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase();
}

const pointer = (...parts: string[]) => parts.map((p) => p.replace(/~/g, '~0').replace(/\//g, '~1')).join('/');

/**
 * Validates answers against the document with ajv (JSON Schema 2020-12, as OpenAPI 3.1 says),
 * the document added whole so `#/components/schemas/...` references resolve.
 */
export function createContractValidator(doc: OpenApiDocument) {
  const Ajv = ajv2020.default;
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: true });
  ajvFormats.default(ajv);
  ajv.addSchema(doc, 'openapi.json');
  const cache = new Map<string, ReturnType<typeof ajv.getSchema>>();
  const validatorAt = (ref: string) => {
    if (!cache.has(ref)) cache.set(ref, ajv.getSchema(ref));
    const validate = cache.get(ref);
    if (!validate) throw new Error(`no schema at ${ref}`);
    return validate;
  };
  const check = (ref: string, value: unknown): string | null => {
    const validate = validatorAt(ref);
    return validate(value) ? null : ajv.errorsText(validate.errors, { dataVar: 'body' });
  };
  return {
    /** Null when `body` matches the schema the operation declares for this status and media type; else why not. */
    response(op: OperationRef, status: number, contentType: string | undefined, body: unknown): string | null {
      const declared = op.operation.responses[String(status)];
      if (!declared) return `${op.method.toUpperCase()} ${op.path} does not declare status ${status}`;
      if (!declared.content) return body === undefined || body === '' || body === null ? null : `status ${status} declares no body`;
      const type = mediaType(contentType);
      if (!declared.content[type]) return `status ${status} is declared as ${Object.keys(declared.content).join(', ')}, sent as ${type || 'nothing'}`;
      return check(`openapi.json#/${pointer('paths', op.path, op.method, 'responses', String(status), 'content', type, 'schema')}`, body);
    },
    /** Null when `value` matches a named component schema. */
    component(name: string, value: unknown): string | null {
      return check(`openapi.json#/${pointer('components', 'schemas', name)}`, value);
    },
    /** Null when `value` matches the schema at a JSON pointer of the document (without the leading #). */
    at(path: string, value: unknown): string | null {
      return check(`openapi.json#${path}`, value);
    },
  };
}
export type ContractValidator = ReturnType<typeof createContractValidator>;

/** The codes docs/errors.md lists: the backticked names in the first column of its table. */
export function documentedCodes(): Set<string> {
  const text = readFileSync(fileURLToPath(new URL('../../docs/errors.md', import.meta.url)), 'utf8');
  const codes = new Set<string>();
  for (const line of text.split('\n')) {
    const first = /^\|([^|]*)\|/.exec(line)?.[1];
    if (!first) continue;
    for (const m of first.matchAll(/`([A-Z][A-Z0-9_]*)`/g)) codes.add(m[1]!);
  }
  return codes;
}

/** Rows of every table a request could write. */
export async function rowCounts(db: Kysely<Database>): Promise<{ events: number; outbox: number; idempotency_keys: number; schedules: number }> {
  const r = await sql<{ events: number; outbox: number; idempotency_keys: number; schedules: number }>`
    SELECT (SELECT count(*)::int FROM events) AS events, (SELECT count(*)::int FROM outbox) AS outbox,
      (SELECT count(*)::int FROM idempotency_keys) AS idempotency_keys, (SELECT count(*)::int FROM schedules) AS schedules`.execute(db);
  return r.rows[0]!;
}

/** The API over a test database and the real Redis, wired as the api role wires it (cluster view, cancels). */
export async function buildContractApi(tdb: { db: Kysely<Database> }, opts: { prefix: string; limits?: Partial<ApiLimits>; maxSchedules?: number; minIntervalMs?: number; apiKeys?: readonly ApiKey[] }) {
  const names = topologyNames(opts.prefix);
  const redis = createRedis(inject('redisUrl'), { logger: createLogger('silent'), name: 'contract-test' });
  await whenReady(redis, 5000);
  const keys = redisKeys(opts.prefix);
  const tasks = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });
  const app = await buildApi({
    schedules: createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxPerTenant: opts.maxSchedules ?? 1000, minIntervalMs: opts.minIntervalMs ?? 1000 }),
    db: tdb.db,
    tasks,
    logger: createLogger('silent'),
    version: '0.0.0-test',
    readiness: [
      { name: 'postgresql', critical: true, check: async () => void (await sql`SELECT 1`.execute(tdb.db)) },
      { name: 'redis', critical: false, check: async () => void (await redis.ping()) },
    ],
    cluster: { read: () => readClusterView(redis, keys, { brokers: [], staleAfterMs: 10_000 }) },
    recordCancelled: (taskId) => recordCancelled(redis, keys, taskId),
    ...(opts.limits ? { inputLimits: opts.limits } : {}),
    ...(opts.apiKeys ? { apiKeys: opts.apiKeys } : {}),
  });
  return {
    app,
    names,
    async close() {
      await app.close();
      await tasks.idle();
      const stale = await redis.keys(`${opts.prefix}*`);
      if (stale.length > 0) await redis.del(...stale);
      redis.disconnect();
    },
  };
}

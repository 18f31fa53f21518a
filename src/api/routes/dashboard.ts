import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { sql } from 'kysely';
import { FogschedError, ValidationError } from '../../domain/index.js';
import { AUDIT_QUERIES, checkAuditParams, type AuditQuery } from '../../audit/queries.js';
import { readDashboardStats, STATS_LIMITS } from '../../projections/index.js';
import type { ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';
import { json, problems, ref } from '../schemas.js';
import { ForbiddenError } from '../auth.js';

/** The API the dashboard draws from: GET /v1/stats and the documented audit questions. */

/** Rows an audit query answers with at most; `truncated` says when there were more. */
export const AUDIT_ROW_CAP = 1000;
/** statement_timeout of an audit query. */
export const AUDIT_STATEMENT_TIMEOUT_MS = 5000;

export class AuditQueryNotFoundError extends FogschedError {
  constructor(name: string) {
    super({ code: 'AUDIT_QUERY_NOT_FOUND', status: 404, message: `no audit query ${name}; GET /v1/audit/queries lists them` });
  }
}

const StatsQuery = Type.Object(
  {
    windowSeconds: Type.Optional(Type.Integer({ minimum: 60, maximum: STATS_LIMITS.maxWindowSeconds, default: 3600, description: 'the window, up to 24 h' })),
    bucketSeconds: Type.Optional(Type.Integer({ minimum: STATS_LIMITS.minBucketSeconds, maximum: 3600, default: 60, description: `bucket width; at most ${STATS_LIMITS.maxBuckets} buckets per window` })),
  },
  { additionalProperties: false },
);
const Ms = Type.Union([Type.Number(), Type.Null()]);
const Stats = Type.Object(
  {
    windowSeconds: Type.Integer(),
    bucketSeconds: Type.Integer(),
    buckets: Type.Array(
      Type.Object(
        { at: Type.String({ format: 'date-time' }), submitted: Type.Integer(), succeeded: Type.Integer(), failed: Type.Integer(), cancelled: Type.Integer(), deadLettered: Type.Integer() },
        { additionalProperties: false },
      ),
    ),
    tiers: Type.Array(Type.Object({ tier: Type.String(), queueWaitP50Ms: Ms, queueWaitP95Ms: Ms, runP50Ms: Ms, runP95Ms: Ms }, { additionalProperties: false })),
    depth: Type.Array(Type.Object({ tier: Type.String(), priority: Type.String(), queued: Type.Integer() }, { additionalProperties: false })),
    outbox: Type.Object({ pending: Type.Integer(), lagSeconds: Type.Number() }, { additionalProperties: false }),
  },
  { $id: 'Stats', additionalProperties: false, description: "the caller's tenant only" },
);
const STATS_EXAMPLE = {
  windowSeconds: 120,
  bucketSeconds: 60,
  buckets: [
    { at: '2026-11-27T10:14:00.000Z', submitted: 40, succeeded: 38, failed: 1, cancelled: 0, deadLettered: 0 },
    { at: '2026-11-27T10:15:00.000Z', submitted: 12, succeeded: 10, failed: 0, cancelled: 1, deadLettered: 0 },
  ],
  tiers: [{ tier: 'light', queueWaitP50Ms: 12.5, queueWaitP95Ms: 80, runP50Ms: 3, runP95Ms: 21.4 }],
  depth: [{ tier: 'light', priority: 'normal', queued: 4 }],
  outbox: { pending: 0, lagSeconds: 0 },
};

const AuditParamSchema = Type.Object({ name: Type.String(), type: Type.Union(['string', 'uuid', 'timestamp', 'integer'].map((t) => Type.Literal(t))), required: Type.Boolean() }, { additionalProperties: false });
const AuditQueryList = Type.Object(
  {
    items: Type.Array(
      Type.Object({ name: Type.String(), title: Type.String(), description: Type.String(), operatorOnly: Type.Boolean(), params: Type.Array(AuditParamSchema) }, { additionalProperties: false }),
    ),
  },
  { $id: 'AuditQueryList', additionalProperties: false },
);
const AuditResult = Type.Object(
  {
    name: Type.String(),
    columns: Type.Array(Type.String()),
    rows: Type.Array(Type.Array(Type.Unknown())),
    truncated: Type.Boolean({ description: `more than ${AUDIT_ROW_CAP} rows: the first ${AUDIT_ROW_CAP} are here` }),
  },
  { $id: 'AuditResult', additionalProperties: false },
);
const AuditNameParams = Type.Object({ name: Type.String({ pattern: '^[a-z0-9-]{1,64}$', description: 'a name from GET /v1/audit/queries' }) });

/** Components of these routes, added with the shared ones (app.ts). */
export const DASHBOARD_SCHEMAS = [Stats, AuditQueryList, AuditResult] as const;

export const dashboardRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {

  app.get(
    '/v1/stats',
    {
      config: { access: 'submitter' },
      schema: {
        operationId: 'getStats',
        summary: "Throughput, queue wait and run time per tier, queue depth and outbox lag (the caller's tenant)",
        description: `Buckets of the events recorded in the window (at most 24 h and ${STATS_LIMITS.maxBuckets} buckets); p50/p95 of queue wait (start minus the attempt's dispatch) and run time (a success's durationMs) of attempts in the window, per tier; queued tasks per tier and priority now; due, unpublished outbox rows of the tenant's tasks and the oldest one's age.`,
        tags: ['dashboard'],
        querystring: StatsQuery,
        response: { 200: json(ref(Stats), 'the numbers', STATS_EXAMPLE), ...problems(400, 401, 403, 503) },
      },
    },
    async (request) => {
      const windowSeconds = request.query.windowSeconds ?? 3600;
      const bucketSeconds = request.query.bucketSeconds ?? 60;
      if (windowSeconds / bucketSeconds > STATS_LIMITS.maxBuckets) {
        throw new ValidationError(`windowSeconds / bucketSeconds is ${Math.ceil(windowSeconds / bucketSeconds)} buckets; at most ${STATS_LIMITS.maxBuckets}`, {
          errors: [{ path: 'querystring/bucketSeconds', message: `gives more than ${STATS_LIMITS.maxBuckets} buckets` }],
        });
      }
      // One connection of the pool (its four statements one after another), read-only, with the
      // audit queries' statement timeout: a dashboard left open cannot tie up the pool.
      return deps.db.transaction().execute(async (trx) => {
        await sql`SET TRANSACTION READ ONLY`.execute(trx);
        await sql`SELECT set_config('statement_timeout', ${String(AUDIT_STATEMENT_TIMEOUT_MS)}, true)`.execute(trx);
        return readDashboardStats(trx, callerOf(request).tenant, windowSeconds, Math.min(bucketSeconds, windowSeconds));
      });
    },
  );

  app.get(
    '/v1/audit/queries',
    {
      config: { access: 'auditor' },
      schema: {
        operationId: 'listAuditQueries',
        summary: 'The audit questions of docs/audit.md, with their parameters',
        tags: ['audit'],
        response: {
          200: json(ref(AuditQueryList), 'the questions', {
            items: [{ name: 'task-timeline', title: 'What happened to task X, in order?', description: 'Every event of the task.', operatorOnly: false, params: [{ name: 'task_id', type: 'uuid', required: true }] }],
          }),
          ...problems(400, 401, 403, 503),
        },
      },
    },
    async (request) => {
      const operator = request.principal?.role === 'operator';
      return {
        items: AUDIT_QUERIES.filter((q) => operator || !q.operatorOnly).map((q) => ({ name: q.name, title: q.title, description: q.description, operatorOnly: q.operatorOnly, params: q.params.map((p) => ({ ...p })) })),
      };
    },
  );

  app.get(
    '/v1/audit/queries/:name',
    {
      config: { access: 'auditor' },
      schema: {
        operationId: 'runAuditQuery',
        summary: 'Run one audit question with its parameters (read-only, filtered to the caller\'s tenant)',
        description: `Runs in a READ ONLY transaction with a ${AUDIT_STATEMENT_TIMEOUT_MS} ms statement timeout and answers at most ${AUDIT_ROW_CAP} rows. Parameters go in the query string by name (?task_id=..., see the params of the question); any other name is 400. Always filtered to the caller's tenant; the questions about fog nodes alone are for operators (403 for auditors).`,
        tags: ['audit'],
        params: AuditNameParams,
        response: {
          200: json(ref(AuditResult), 'the answer', { name: 'cancellations', columns: ['task_id', 'cancelled_by'], rows: [['0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11', 'key:acme/1a2b3c4d']], truncated: false }),
          ...problems(400, 401, 403, 404, 503),
        },
      },
    },
    async (request) => {
      const query = AUDIT_QUERIES.find((q) => q.name === request.params.name);
      if (!query) throw new AuditQueryNotFoundError(request.params.name);
      if (query.operatorOnly && request.principal?.role !== 'operator') {
        throw new ForbiddenError(`audit query ${query.name} reads fog nodes of every tenant; it needs operator`, { role: request.principal?.role ?? null });
      }
      const given = request.query as Record<string, unknown>;
      const errors = checkAuditParams(query, given);
      if (errors.length > 0) throw new ValidationError(errors.map((e) => `${e.path} ${e.message}`).join('; '), { errors });
      return { name: query.name, ...(await runAuditQuery(deps, query, given as Record<string, string>, callerOf(request).tenant)) };
    },
  );
};

/** Runs a question read-only with a timeout and the row cap; columns come back even when no row does. */
async function runAuditQuery(deps: ApiDeps, query: AuditQuery, params: Readonly<Record<string, string>>, tenant: string) {
  return deps.db.transaction().execute(async (trx) => {
    await sql`SET TRANSACTION READ ONLY`.execute(trx);
    await sql`SELECT set_config('statement_timeout', ${String(AUDIT_STATEMENT_TIMEOUT_MS)}, true)`.execute(trx);
    // One row of NULLs with __n NULL when the answer is empty, so its columns are still known.
    const { rows } = await sql<Record<string, unknown>>`
      SELECT r.* FROM (SELECT 1) AS one
      LEFT JOIN (SELECT q.*, row_number() OVER () AS "__n" FROM (${query.sql(params, tenant)}) q LIMIT ${AUDIT_ROW_CAP + 1}) r ON true
      ORDER BY r."__n"`.execute(trx);
    const columns = Object.keys(rows[0] ?? {}).filter((c) => c !== '__n');
    const data = rows.filter((r) => r.__n !== null && r.__n !== undefined);
    return {
      columns,
      rows: data.slice(0, AUDIT_ROW_CAP).map((r) => columns.map((c) => plain(r[c]))),
      truncated: data.length > AUDIT_ROW_CAP,
    };
  });
}

/** A value as JSON shows it: times as ISO text, intervals as ISO 8601 durations. */
function plain(value: unknown): unknown {
  if (value instanceof Date) return value.toISOString();
  if (value && typeof value === 'object' && 'toISOString' in value && typeof value.toISOString === 'function') return (value as { toISOString(): string }).toISOString();
  return value;
}

import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import ajvFormats from 'ajv-formats';
import { fullFormats } from 'ajv-formats/dist/formats.js';
import type { Kysely } from 'kysely';
import type { Logger } from '../infra/logger.js';
import type { Database } from '../store/index.js';
import type { TaskService } from '../tasks/index.js';
import type { ScheduleService } from '../schedules/index.js';
import { clientErrorHandler, errorHandler, notFoundHandler } from './errors.js';
import { refuseBadTextInBody, refuseBadTextInRequest, strictDateTime } from './input.js';
import { accessHook, declareAccess, requireAccessDeclarations } from './auth.js';
import { registerJwt } from './jwt.js';
import { uiRoutes } from './ui.js';
import { registerRequestTracing, requestLogger, startRequestTrace } from './request-trace.js';
import type { SubmitLimits } from './limits.js';
import type { LiveNode } from './placement-warning.js';
import type { ApiKey, JwtSettings } from '../infra/config.js';
import { taskRoutes } from './routes/tasks.js';
import { clusterRoutes, type ClusterReader } from './routes/cluster.js';
import { dlqRoutes } from './routes/dlq.js';
import { scheduleRoutes } from './routes/schedules.js';
import { registerMetrics } from './metrics-route.js';
import { eventRoutes } from './routes/events.js';
import { DASHBOARD_SCHEMAS, dashboardRoutes } from './routes/dashboard.js';
import { workflowRoutes } from './routes/workflows.js';
import type { SseSettings } from './sse.js';
import type { PgListener } from '../infra/pg-listener.js';
import { Health, OPTIONAL_BODY_OPERATIONS, Readiness, SHARED_SCHEMAS, json, problems } from './schemas.js';

export interface ReadinessCheck {
  readonly name: string;
  /** Critical checks make /readyz fail; the others only report `degraded`. */
  readonly critical: boolean;
  check(): Promise<void>;
}

export interface ApiDeps {
  readonly db: Kysely<Database>;
  readonly tasks: TaskService;
  readonly schedules: ScheduleService;
  readonly logger: Logger;
  readonly readiness: readonly ReadinessCheck[];
  readonly version: string;
  /** Membership from Redis for GET /v1/cluster; absent: the route answers `redis: "unavailable"`. */
  readonly cluster?: ClusterReader;
  /** Tiers some live fog node serves (from Redis), or null when unknown; a submit to another tier gets a warning. */
  readonly liveTiers?: () => Promise<ReadonlySet<string> | null>;
  /** The live fog nodes with their tiers, zones and labels (from Redis), or null when unknown; a submit whose placement none matches gets a warning. */
  readonly liveNodes?: () => Promise<readonly LiveNode[] | null>;
  /** Tells fog nodes that join later about a cancel (best effort; the broadcast reaches the live ones). */
  readonly recordCancelled?: (taskId: string) => Promise<void>;
  /** API keys for /v1 (each with its tenant and role); none and no `jwt`: no authentication, every caller is an operator of tenant `default`. */
  readonly apiKeys?: readonly ApiKey[];
  /** JWT bearer tokens beside the keys (jwtSettings of the config); absent: off. */
  readonly jwt?: JwtSettings | null;
  /** Where the built dashboard is (served at /ui); default dist/ui of this package. */
  readonly uiDir?: string;
  /** Per-tenant submit rate and active-task cap (createSubmitLimits); absent: unlimited. */
  readonly limits?: SubmitLimits | null;
  /** Request limits; each missing one takes its default (DEFAULT_API_LIMITS). */
  readonly inputLimits?: Partial<ApiLimits>;
  /** Wakes the event streams when the log grows (the process's one LISTEN connection); absent: they poll every `sse.pollMs`. */
  readonly liveEvents?: PgListener;
  /** Server-sent event settings; each missing one takes its default (DEFAULT_SSE_SETTINGS). */
  readonly sse?: Partial<SseSettings>;
}

/** What the API accepts and how long it waits; set from the environment variables named. */
export interface ApiLimits {
  /** API_BODY_LIMIT_BYTES: largest body read (413 FST_ERR_CTP_BODY_TOO_LARGE). */
  readonly bodyLimitBytes: number;
  /** MAX_PAYLOAD_BYTES: largest task or template payload as JSON (413 PAYLOAD_TOO_LARGE). */
  readonly maxPayloadBytes: number;
  /** API_REQUEST_TIMEOUT_MS: a request must arrive whole within this (408); 0 = none. */
  readonly requestTimeoutMs: number;
  /** API_CONNECTION_TIMEOUT_MS: an idle socket is closed after this; 0 = never. */
  readonly connectionTimeoutMs: number;
  /** API_KEEP_ALIVE_TIMEOUT_MS: an idle keep-alive connection is closed after this. */
  readonly keepAliveTimeoutMs: number;
  /** API_MAX_REQUESTS_PER_SOCKET: requests on one connection before it closes; 0 = no limit. */
  readonly maxRequestsPerSocket: number;
}

export const DEFAULT_API_LIMITS: ApiLimits = Object.freeze({
  bodyLimitBytes: 4 * 1024 * 1024,
  maxPayloadBytes: 256 * 1024,
  requestTimeoutMs: 30_000,
  connectionTimeoutMs: 120_000,
  keepAliveTimeoutMs: 72_000,
  maxRequestsPerSocket: 0,
});

/** ajv's `date-time`, narrowed to instants both JavaScript and PostgreSQL hold (no leap second, no year 0). */
function fogschedFormats<A extends { addFormat(name: string, format: unknown): unknown }>(ajv: A): A {
  const base = fullFormats['date-time'] as { validate: (s: string) => boolean; compare: unknown };
  ajv.addFormat('date-time', { type: 'string', validate: strictDateTime(base.validate), compare: base.compare });
  return ajv;
}

/** Builds the Fastify app without listening (tests use `inject`). */
export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const limits: ApiLimits = { ...DEFAULT_API_LIMITS, ...deps.inputLimits };
  const app = Fastify({
    // The assertion picks Fastify's logger type for the instance (pino's own would not fit FastifyInstance).
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-assertion
    loggerInstance: deps.logger as FastifyBaseLogger,
    // Access logs on (`incoming request`, `request completed`), each line with the request's
    // trace_id; the request id is the span id of its trace (request-trace.ts). At LOG_LEVEL=warn
    // (the bench) they cost next to nothing.
    genReqId: startRequestTrace,
    childLoggerFactory: requestLogger,
    bodyLimit: limits.bodyLimitBytes,
    requestTimeout: limits.requestTimeoutMs,
    connectionTimeout: limits.connectionTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    maxRequestsPerSocket: limits.maxRequestsPerSocket,
    // ajv-formats first (a tuple: its options type is narrower than Fastify's Plugin), then our date-time over it.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: true }, plugins: [[ajvFormats.default as never, {}], fogschedFormats] },
    // Every error Fastify raises itself is answered by the one problem writer too.
    // The handler returns the reply, which is thenable; Fastify does not await it here, nor need to.
    // eslint-disable-next-line @typescript-eslint/no-misused-promises
    frameworkErrors: errorHandler,
    clientErrorHandler,
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.setErrorHandler(errorHandler);
  registerRequestTracing(app);
  requireAccessDeclarations(app);
  app.decorateRequest('tenant', 'default');
  app.decorateRequest('principal', null);
  const jwt = deps.jwt ? await registerJwt(app, deps.jwt) : undefined;
  app.addHook('onRequest', refuseBadTextInRequest);
  app.addHook('onRequest', accessHook({ keys: deps.apiKeys ?? [], jwt }));
  app.addHook('preValidation', refuseBadTextInBody);
  app.setNotFoundHandler(notFoundHandler);
  registerMetrics(app);
  for (const schema of [...SHARED_SCHEMAS, ...DASHBOARD_SCHEMAS]) app.addSchema(schema);

  await app.register(swagger, {
    // Components are named by their $id (Task, Problem, ...), not def-0, def-1.
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'fogsched',
        version: deps.version,
        description: 'Event-sourced task scheduler for fog computing. Every error is application/problem+json with a stable `code` (docs/errors.md). Limits: README, HTTP API.',
      },
      servers: [{ url: '/', description: 'this server (the document is served by the API it describes)' }],
      tags: [{ name: 'tasks' }, { name: 'workflows' }, { name: 'dlq' }, { name: 'schedules' }, { name: 'cluster' }, { name: 'events' }, { name: 'dashboard' }, { name: 'audit' }, { name: 'health' }],
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'an API key (API_KEYS / API_KEYS_FILE) or a JWT (JWT_SECRET / JWT_JWKS_URL); not needed when the server has neither' },
          apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
        },
      },
      security: [{ bearer: [] }, { apiKey: [] }],
    },
    transformObject: (documentObject) => ('openapiObject' in documentObject ? optionalBodies(documentObject.openapiObject) : documentObject.swaggerObject),
  });
  // The docs are public: the routes @fastify/swagger-ui (and its static files) add are declared so here.
  await app.register(async (docs) => {
    docs.addHook('onRoute', declareAccess('public'));
    await docs.register(swaggerUi, { routePrefix: '/docs' });
  });
  // The dashboard's static files, public like the docs (src/api/ui.ts); its data comes from /v1.
  await app.register(uiRoutes, deps.uiDir ? { dir: deps.uiDir } : {});

  app.get(
    '/healthz',
    { config: { access: 'public' }, schema: { operationId: 'getHealth', tags: ['health'], summary: 'The process is alive', security: [], response: { 200: json(Health, 'alive', { status: 'ok' }), ...problems(400) } } },
    async () => ({ status: 'ok' as const }),
  );

  // Names and ok only: an error's text can hold addresses or URLs, so it goes to the log (once per change).
  const failing = new Set<string>();
  app.get(
    '/readyz',
    {
      config: { access: 'public' },
      schema: {
        operationId: 'getReadiness',
        tags: ['health'],
        summary: 'Ready to serve: PostgreSQL reachable and migrated',
        description: 'Each check by name with ok and critical; an authenticated operator also gets `details` (whether the submit limits are enforced).',
        security: [],
        response: {
          200: json(Readiness, 'ready, or degraded (a non-critical check failed)', { status: 'ready', checks: { postgresql: { ok: true, critical: true }, redis: { ok: true, critical: false } } }),
          503: json(Readiness, 'a critical check failed', { status: 'unavailable', checks: { postgresql: { ok: false, critical: true }, redis: { ok: true, critical: false } } }),
          ...problems(400),
        },
      },
    },
    async (request, reply) => {
      const results = await Promise.all(
        deps.readiness.map(async (c) => {
          try {
            await withTimeout(c.check(), 3000);
            if (failing.delete(c.name)) request.log.info({ check: c.name }, 'readiness check ok again');
            return [c.name, { ok: true, critical: c.critical }] as const;
          } catch (error) {
            if (!failing.has(c.name)) request.log.warn({ check: c.name, err: error instanceof Error ? error.message : String(error) }, 'readiness check failed');
            failing.add(c.name);
            return [c.name, { ok: false, critical: c.critical }] as const;
          }
        }),
      );
      const checks = Object.fromEntries<{ ok: boolean; critical: boolean }>(results);
      const down = results.some(([, r]) => !r.ok && r.critical);
      const degraded = results.some(([, r]) => !r.ok);
      // Only to an operator who showed a credential; without credentials (open API) the public view.
      const operator = request.principal?.role === 'operator' && request.principal.via !== 'open';
      const details = operator ? { limits: deps.limits?.status() ?? null } : undefined;
      return reply.code(down ? 503 : 200).send({ status: down ? 'unavailable' : degraded ? 'degraded' : 'ready', checks, ...(details ? { details } : {}) });
    },
  );

  const routeDeps = { ...deps, inputLimits: limits };
  await app.register(taskRoutes, routeDeps);
  await app.register(workflowRoutes, routeDeps);
  await app.register(clusterRoutes, routeDeps);
  await app.register(dlqRoutes, routeDeps);
  await app.register(scheduleRoutes, routeDeps);
  await app.register(eventRoutes, routeDeps);
  await app.register(dashboardRoutes, routeDeps);
  // As for loggerInstance above: the instance keeps its TypeBox provider and pino logger types inside.
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-assertion
  return app as unknown as FastifyInstance;
}

/**
 * @fastify/swagger marks every declared body required (Fastify validates a body when one is
 * sent); the operations whose body may be left out say so here.
 */
function optionalBodies<D extends { paths?: object }>(document: D): D {
  for (const item of Object.values(document.paths ?? {}) as Record<string, { operationId?: string; requestBody?: { required?: boolean } }>[]) {
    for (const operation of Object.values(item)) {
      if (operation.requestBody && operation.operationId && OPTIONAL_BODY_OPERATIONS.includes(operation.operationId)) operation.requestBody.required = false;
    }
  }
  return document;
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

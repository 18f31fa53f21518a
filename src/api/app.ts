import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { Kysely } from 'kysely';
import type { Logger } from '../infra/logger.js';
import type { Database } from '../store/index.js';
import type { TaskService } from '../tasks/index.js';
import type { ScheduleService } from '../schedules/index.js';
import { errorHandler, problem, sendProblem } from './errors.js';
import { accessHook, declareAccess, requireAccessDeclarations } from './auth.js';
import { registerJwt } from './jwt.js';
import type { SubmitLimits } from './limits.js';
import type { ApiKey, JwtSettings } from '../infra/config.js';
import { taskRoutes } from './routes/tasks.js';
import { clusterRoutes, type ClusterReader } from './routes/cluster.js';
import { dlqRoutes } from './routes/dlq.js';
import { scheduleRoutes } from './routes/schedules.js';
import { Problem } from './schemas.js';

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
  /** Tells fog nodes that join later about a cancel (best effort; the broadcast reaches the live ones). */
  readonly recordCancelled?: (taskId: string) => Promise<void>;
  /** API keys for /v1 (each with its tenant and role); none and no `jwt`: no authentication, every caller is an operator of tenant `default`. */
  readonly apiKeys?: readonly ApiKey[];
  /** JWT bearer tokens beside the keys (jwtSettings of the config); absent: off. */
  readonly jwt?: JwtSettings | null;
  /** Per-tenant submit rate and active-task cap (createSubmitLimits); absent: unlimited. */
  readonly limits?: SubmitLimits | null;
}

/** Builds the Fastify app without listening (tests use `inject`). */
export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    // Per-request access logs cost more than a submit at our rates; errors are still logged.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 4 * 1024 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: true } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.setErrorHandler(errorHandler);
  requireAccessDeclarations(app);
  app.decorateRequest('tenant', 'default');
  app.decorateRequest('principal', null);
  const jwt = deps.jwt ? await registerJwt(app, deps.jwt) : undefined;
  app.addHook('onRequest', accessHook({ keys: deps.apiKeys ?? [], jwt }));
  app.setNotFoundHandler((request, reply) => sendProblem(reply, problem(404, 'ROUTE_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`)));
  app.addSchema(Problem);

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'fogsched', version: deps.version, description: 'Event-sourced task scheduler for fog computing. Errors are application/problem+json.' },
      tags: [{ name: 'tasks' }, { name: 'dlq' }, { name: 'schedules' }, { name: 'health' }],
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'an API key (API_KEYS / API_KEYS_FILE); not needed when the server has none' },
          apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
        },
      },
      security: [{ bearer: [] }, { apiKey: [] }],
    },
  });
  // The docs are public: the routes @fastify/swagger-ui (and its static files) add are declared so here.
  await app.register(async (docs) => {
    docs.addHook('onRoute', declareAccess('public'));
    await docs.register(swaggerUi, { routePrefix: '/docs' });
  });

  app.get('/healthz', { config: { access: 'public' }, schema: { tags: ['health'], summary: 'The process is alive', response: { 200: Type.Object({ status: Type.Literal('ok') }) } } }, async () => ({
    status: 'ok' as const,
  }));

  // Names and ok only: an error's text can hold addresses or URLs, so it goes to the log (once per change).
  const failing = new Set<string>();
  app.get(
    '/readyz',
    {
      config: { access: 'public' },
      schema: {
        tags: ['health'],
        summary: 'Ready to serve: PostgreSQL reachable and migrated',
        description: 'Each check by name with ok and critical; an authenticated operator also gets `details` (whether the submit limits are enforced).',
        response: { 200: ReadyBody, 503: ReadyBody },
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
      const checks = Object.fromEntries(results);
      const down = results.some(([, r]) => !r.ok && r.critical);
      const degraded = results.some(([, r]) => !r.ok);
      // Only to an operator who showed a credential; without credentials (open API) the public view.
      const operator = request.principal?.role === 'operator' && request.principal.via !== 'open';
      const details = operator ? { limits: deps.limits?.status() ?? null } : undefined;
      return reply.code(down ? 503 : 200).send({ status: down ? 'unavailable' : degraded ? 'degraded' : 'ready', checks, ...(details ? { details } : {}) });
    },
  );

  await app.register(taskRoutes, deps);
  await app.register(clusterRoutes, deps);
  await app.register(dlqRoutes, deps);
  await app.register(scheduleRoutes, deps);
  return app as unknown as FastifyInstance;
}

const ReadyBody = Type.Object({
  status: Type.String(),
  checks: Type.Record(Type.String(), Type.Object({ ok: Type.Boolean(), critical: Type.Boolean() })),
  details: Type.Optional(
    Type.Object({
      limits: Type.Union([
        Type.Object({
          ratePerSecond: Type.Union([Type.Number(), Type.Null()]),
          burst: Type.Union([Type.Integer(), Type.Null()]),
          maxActiveTasks: Type.Union([Type.Integer(), Type.Null()]),
          state: Type.Union([Type.Literal('enforced'), Type.Literal('fail-open')], { description: 'fail-open: Redis does not answer and every submit is let through' }),
          failingOpenSince: Type.Optional(Type.String({ format: 'date-time' })),
        }),
        Type.Null(),
      ]),
    }),
  ),
});

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

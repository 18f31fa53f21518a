import { sql } from 'kysely';
import type { Config } from '../infra/config.js';
import { jwtSettings, parseApiKeys, parseTiers } from '../infra/config.js';
import type { Logger } from '../infra/logger.js';
import { createPostgres, pendingMigrations } from '../infra/postgres.js';
import { createPgListener, type PgListener } from '../infra/pg-listener.js';
import type { Role } from '../infra/role.js';
import { topologyNames } from '../outbox/index.js';
import { createTaskService } from '../tasks/index.js';
import { createScheduleService } from '../schedules/index.js';
import { servedTiers } from '../domain/index.js';
import { buildApi, type ReadinessCheck } from './app.js';
import type { FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import { parseBrokers } from '../infra/config.js';
import { readClusterView } from '../infra/cluster-view.js';
import { createRedis, redisKeys, recordCancelled, whenReady } from '../infra/redis.js';
import { countActiveTasks } from '../projections/index.js';
import { createSubmitLimits } from './limits.js';
import { nodePlacement, type LiveNode } from './placement-warning.js';
import { addReadinessCheck } from '../infra/ops-server.js';

export interface ApiRoleOptions {
  readonly config: Config;
  readonly logger: Logger;
  readonly version: string;
  readonly extraReadiness?: readonly ReadinessCheck[];
}

/** The HTTP API as a role: its own pool, the task service, Fastify listening on HOST:PORT. */
export function createApiRole(options: ApiRoleOptions): Role & { readonly address: () => string | null } {
  const { config } = options;
  const logger = options.logger.child({ role: 'api' });
  let pg: ReturnType<typeof createPostgres> | undefined;
  let app: FastifyInstance | undefined;
  let redis: Redis | undefined;
  let listener: PgListener | undefined;
  let address: string | null = null;
  let untrack: (() => void)[] = [];
  let stopped: Promise<void> | undefined;
  return {
    name: 'api',
    address: () => address,
    async start() {
      pg = createPostgres({
        url: config.DATABASE_URL,
        poolMax: config.PG_POOL_MAX,
        connectTimeoutMs: config.PG_CONNECT_TIMEOUT_MS,
        statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS,
        applicationName: 'fogsched-api',
      });
      const postgres = pg;
      const tasks = createTaskService({
        db: postgres.db,
        names: topologyNames(config.AMQP_PREFIX),
        tiers: parseTiers(config.TIERS),
        defaultMaxAttempts: config.DEFAULT_MAX_ATTEMPTS,
        maxBatch: config.SUBMIT_MAX_BATCH,
        maxQueued: config.SUBMIT_QUEUE_MAX,
        idempotencyKeyTtlHours: config.IDEMPOTENCY_KEY_TTL_HOURS,
        maxPlacementClasses: config.PLACEMENT_MAX_CLASSES,
      });
      // Lazy, no offline queue: a down Redis fails a cluster read at once and never holds a request.
      redis = createRedis(config.REDIS_URL, { logger, name: 'fogsched-api', lazyConnect: true });
      const client = redis;
      client.connect().catch(() => {}); // retried by its retryStrategy; reads fail fast meanwhile
      const keys = redisKeys(config.REDIS_PREFIX);
      const brokers = parseBrokers(config.COORDINATOR_BROKERS, config.AMQP_URL);
      const schedules = createScheduleService({
        db: postgres.db,
        names: topologyNames(config.AMQP_PREFIX),
        tiers: parseTiers(config.TIERS),
        defaultMaxAttempts: config.DEFAULT_MAX_ATTEMPTS,
        maxPerTenant: config.TENANT_MAX_SCHEDULES,
        minIntervalMs: config.SCHEDULE_MIN_INTERVAL_MS,
      });
      const tiers = parseTiers(config.TIERS);
      let liveCache: { at: number; value: Promise<readonly LiveNode[] | null> } | undefined;
      const liveNodes = () => {
        // Cached for a second: a submit burst must not turn into a burst of Redis reads.
        if (!liveCache || Date.now() - liveCache.at > 1000) {
          const value = readClusterView(client, keys, { brokers, staleAfterMs: 2 * config.COORDINATOR_INTERVAL_MS })
            .then((view) =>
              view.redis === 'ok'
                ? view.fogNodes.filter((n) => n.state === 'up' && n.tier).map((n): LiveNode => ({ tiers: new Set(servedTiers(n.tier as string, tiers)), ...nodePlacement(n) }))
                : null,
            )
            .catch(() => null);
          liveCache = { at: Date.now(), value };
        }
        return liveCache.value;
      };
      const liveTiers = () => liveNodes().then((nodes) => (nodes ? new Set(nodes.flatMap((n) => [...n.tiers])) : null));
      const apiKeys = parseApiKeys(config.API_KEYS);
      const jwt = jwtSettings(config);
      if (apiKeys.length === 0 && !jwt) logger.warn('no API keys and no JWT settings (API_KEYS, API_KEYS_FILE, JWT_SECRET, JWT_JWKS_URL): /v1 is open and every caller is an operator of tenant default');
      const limits = createSubmitLimits({
        redis: client,
        prefix: config.REDIS_PREFIX,
        settings: {
          ratePerSecond: config.TENANT_SUBMIT_RATE,
          burst: config.TENANT_SUBMIT_BURST,
          maxActiveTasks: config.TENANT_MAX_ACTIVE_TASKS,
          activeRefreshMs: config.TENANT_ACTIVE_REFRESH_MS,
        },
        countActive: (tenant) => countActiveTasks(postgres.db, tenant),
        logger,
      });
      // The first submits would otherwise pass unlimited while the lazy client connects; a down Redis delays the start this long at most.
      if (limits && !(await whenReady(client, 2000))) logger.warn('redis not reachable at start: submit limits not enforced until it is');
      // The process's one LISTEN connection: it wakes every event stream when the log grows.
      listener = createPgListener({ url: config.DATABASE_URL, channel: 'fogsched_events', pollMs: config.SSE_POLL_MS, logger, applicationName: 'fogsched-api-listen' });
      const readiness: ReadinessCheck[] = [
        {
          name: 'postgresql',
          critical: true,
          async check() {
            await sql`SELECT 1`.execute(postgres.db);
            const pending = await pendingMigrations(postgres.pool);
            if (pending.length > 0) throw new Error(`migrations not applied: ${pending.join(', ')}`);
          },
        },
        {
          name: 'redis',
          critical: false, // membership only: submit, dispatch, run and ingest work without it
          async check() {
            await client.ping();
          },
        },
        ...(options.extraReadiness ?? []),
      ];
      // The same checks on the process's ops port, named by role there.
      untrack = readiness.map((c) => addReadinessCheck({ ...c, name: `api:${c.name}` }));
      app = await buildApi({
        liveEvents: listener,
        sse: {
          heartbeatMs: config.SSE_HEARTBEAT_MS,
          maxConnectionsPerTenant: config.SSE_MAX_CONNECTIONS_PER_TENANT,
          stallTimeoutMs: config.SSE_STALL_TIMEOUT_MS,
          maxBufferBytes: config.SSE_MAX_BUFFER_BYTES,
          pollMs: config.SSE_POLL_MS,
        },
        apiKeys,
        jwt,
        limits,
        inputLimits: {
          bodyLimitBytes: config.API_BODY_LIMIT_BYTES,
          maxPayloadBytes: config.MAX_PAYLOAD_BYTES,
          requestTimeoutMs: config.API_REQUEST_TIMEOUT_MS,
          connectionTimeoutMs: config.API_CONNECTION_TIMEOUT_MS,
          keepAliveTimeoutMs: config.API_KEEP_ALIVE_TIMEOUT_MS,
          maxRequestsPerSocket: config.API_MAX_REQUESTS_PER_SOCKET,
        },
        liveTiers,
        liveNodes,
        recordCancelled: (taskId) => recordCancelled(client, keys, taskId),
        schedules,
        cluster: { read: () => readClusterView(client, keys, { brokers, staleAfterMs: 2 * config.COORDINATOR_INTERVAL_MS }) },
        db: postgres.db,
        tasks,
        logger,
        version: options.version,
        readiness,
      });
      address = await app.listen({ host: config.HOST, port: config.PORT });
      logger.info({ address, docs: `${address}/docs` }, 'api listening');
    },
    stop() {
      return (stopped ??= (async () => {
        for (const done of untrack) done();
        await app?.close();
        await listener?.close();
        redis?.disconnect();
        await pg?.close();
      })());
    },
  };
}

import { hostname } from 'node:os';
import type { Config } from '../infra/config.js';
import { parseBrokers, parseTiers } from '../infra/config.js';
import { createLogger, type Logger } from '../infra/logger.js';
import type { Role } from '../infra/role.js';
import { startTracing } from '../infra/tracing.js';
import { FogschedError, servedTiers } from '../domain/index.js';
import { topology, topologyNames, type Topology } from '../broker/index.js';

export const ROLE_NAMES = ['api', 'relay', 'ingest', 'fog-node', 'coordinator', 'scheduler'] as const;

export interface StartOptions {
  readonly config: Config;
  readonly version: string;
  readonly roles: readonly string[];
  readonly fogNodes: number;
  readonly tier: string | undefined;
  readonly migrate: boolean;
  /** Rebuild stale read models before serving instead of refusing to start. */
  readonly rebuildStale?: boolean;
}

/** Roles that read or write the task read models. */
const PROJECTION_ROLES = new Set(['api', 'ingest', 'scheduler']);

export function topologyOf(config: Config): Topology {
  return topology({
    prefix: config.AMQP_PREFIX,
    tiers: parseTiers(config.TIERS).map((t) => t.name),
    taskQueueMaxLength: config.TASK_QUEUE_MAX_LENGTH,
    deliveryLimit: config.TASK_DELIVERY_LIMIT,
    metricsQueueMaxLength: config.METRICS_QUEUE_MAX_LENGTH,
  });
}

/**
 * A role whose module is imported when it starts, so a process loads only the roles it runs:
 * `--roles fog-node` never loads Fastify, pg, Kysely or node-pg-migrate.
 */
function lazyRole<R extends Role>(name: string, load: () => Promise<R>): Role & { readonly loaded: () => R | undefined } {
  let role: R | undefined;
  return {
    name,
    loaded: () => role,
    async start() {
      role ??= await load();
      await role.start();
    },
    async stop() {
      await role?.stop();
    },
  };
}

/**
 * Builds the roles asked for; each runs alone in its own process too (`--roles relay`).
 * Configuration errors throw here; each role's modules load when it starts.
 */
export function createRoles(options: StartOptions, logger: Logger): Role[] {
  const { config, roles } = options;
  const names = topologyNames(config.AMQP_PREFIX);
  const topo = topologyOf(config);
  const tiers = parseTiers(config.TIERS);
  const list: Role[] = [];
  if (roles.includes('relay')) {
    list.push(
      lazyRole('relay', async () =>
        (await import('../outbox/relay.js')).createRelay({
          databaseUrl: config.DATABASE_URL,
          amqpUrl: config.AMQP_URL,
          topology: topo,
          logger,
          batchSize: config.RELAY_BATCH_SIZE,
          pollIntervalMs: config.RELAY_POLL_INTERVAL_MS,
          retryMaxMs: config.RELAY_RETRY_MAX_MS,
          leaseMs: config.RELAY_LEASE_MS,
        }),
      ),
    );
  }
  if (roles.includes('ingest')) {
    list.push(lazyRole('ingest', async () => {
      const [{ createPostgres }, { createIngest }] = await Promise.all([import('../infra/postgres.js'), import('../ingest/index.js')]);
      const pg = createPostgres({
        url: config.DATABASE_URL,
        poolMax: 2,
        connectTimeoutMs: config.PG_CONNECT_TIMEOUT_MS,
        statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS,
        applicationName: 'fogsched-ingest',
      });
      const ingest = createIngest({
        db: pg.db,
        amqpUrl: config.AMQP_URL,
        topology: topo,
        names,
        batchSize: config.INGEST_BATCH_SIZE,
        flushMs: config.INGEST_FLUSH_MS,
        backoff: { baseMs: config.RETRY_BASE_MS, factor: config.RETRY_FACTOR, maxMs: config.RETRY_MAX_MS },
        metricsRetentionHours: config.METRICS_RETENTION_HOURS,
        retryMaxMs: config.INGEST_RETRY_MAX_MS,
        unknownErrorLimit: config.INGEST_UNKNOWN_ERROR_LIMIT,
        logger,
      });
      return { name: 'ingest', start: () => ingest.start(), stop: async () => { await ingest.stop(); await pg.close(); } };
    }));
  }
  if (roles.includes('fog-node')) {
    const tier = options.tier ?? config.FOG_NODE_TIER;
    if (!tiers.some((t) => t.name === tier)) {
      throw new FogschedError({ code: 'CONFIG_INVALID', status: 500, message: `unknown tier ${tier}; tiers are ${tiers.map((t) => t.name).join(', ')}` });
    }
    for (let i = 0; i < options.fogNodes; i++) {
      const nodeId = options.fogNodes > 1 || !config.FOG_NODE_ID ? `${config.FOG_NODE_ID || `${hostname()}-${process.pid}`}${options.fogNodes > 1 ? `-${i + 1}` : ''}` : config.FOG_NODE_ID;
      list.push(
        lazyRole(`fog-node:${nodeId}`, async () =>
          (await import('../fog-node/index.js')).createFogNode({
            amqpUrl: config.AMQP_URL,
            topology: topo,
            names,
            nodeId,
            tier,
            servedTiers: servedTiers(tier, tiers),
            slots: config.FOG_NODE_SLOTS,
            prefetch: config.FOG_NODE_PREFETCH || config.FOG_NODE_SLOTS,
            graceMs: config.FOG_NODE_GRACE_MS,
            resultFlushMs: config.FOG_NODE_RESULT_FLUSH_MS,
            metricsIntervalMs: config.FOG_NODE_METRICS_INTERVAL_MS,
            agingMs: config.FOG_NODE_AGING_MS,
            handlersModule: config.FOG_NODE_HANDLERS,
            workerMemoryMb: config.FOG_NODE_WORKER_MEMORY_MB,
            maxOutputBytes: config.FOG_NODE_MAX_OUTPUT_BYTES,
            logger,
            heartbeat: { redisUrl: config.REDIS_URL, prefix: config.REDIS_PREFIX, intervalMs: config.FOG_HEARTBEAT_INTERVAL_MS, ttlMs: config.FOG_HEARTBEAT_TTL_MS, version: options.version },
          }),
        ),
      );
    }
  }
  if (roles.includes('coordinator')) {
    list.push(lazyRole('coordinator', async () => {
      const [{ createPostgres }, { createCoordinator }] = await Promise.all([import('../infra/postgres.js'), import('../coordinator/index.js')]);
      const pg = createPostgres({ url: config.DATABASE_URL, poolMax: 2, connectTimeoutMs: config.PG_CONNECT_TIMEOUT_MS, statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS, applicationName: 'fogsched-coordinator' });
      const coordinator = createCoordinator({
        redisUrl: config.REDIS_URL,
        prefix: config.REDIS_PREFIX,
        db: pg.db,
        brokers: parseBrokers(config.COORDINATOR_BROKERS, config.AMQP_URL),
        intervalMs: config.COORDINATOR_INTERVAL_MS,
        brokerHeartbeatTtlMs: config.BROKER_HEARTBEAT_TTL_MS,
        leaseMs: config.COORDINATOR_LEASE_MS,
        coordinatorId: `${hostname()}-${process.pid}`,
        logger,
      });
      return { name: 'coordinator', start: () => coordinator.start(), stop: async () => { await coordinator.stop(); await pg.close(); } };
    }));
  }
  if (roles.includes('scheduler')) {
    list.push(lazyRole('scheduler', async () => {
      const [{ createPostgres }, { createScheduler }] = await Promise.all([import('../infra/postgres.js'), import('../schedules/index.js')]);
      const pg = createPostgres({ url: config.DATABASE_URL, poolMax: 2, connectTimeoutMs: config.PG_CONNECT_TIMEOUT_MS, statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS, applicationName: 'fogsched-scheduler' });
      const scheduler = createScheduler({
        db: pg.db,
        names,
        tiers,
        defaultMaxAttempts: config.DEFAULT_MAX_ATTEMPTS,
        logger,
        pollIntervalMs: config.SCHEDULER_POLL_INTERVAL_MS,
        misfireGraceMs: config.SCHEDULER_MISFIRE_GRACE_MS,
        lease: { leaseMs: config.RUNNING_LEASE_MS, graceMs: config.RUNNING_LEASE_GRACE_MS },
        backoff: { baseMs: config.RETRY_BASE_MS, factor: config.RETRY_FACTOR, maxMs: config.RETRY_MAX_MS },
        retention: { outboxDays: config.OUTBOX_RETENTION_DAYS, inboxDays: config.INBOX_RETENTION_DAYS, idempotencyKeyHours: config.IDEMPOTENCY_KEY_TTL_HOURS },
      });
      return { name: 'scheduler', start: () => scheduler.start(), stop: async () => { await scheduler.stop(); await pg.close(); } };
    }));
  }
  // The API starts last, so it takes requests only once the pipeline behind it runs.
  if (roles.includes('api')) {
    const api = lazyRole('api', async () => (await import('../api/api-role.js')).createApiRole({ config, logger, version: options.version }));
    list.push(Object.assign(api, { address: () => api.loaded()?.address() ?? null }));
  }
  return list;
}

/** Migrates, starts the roles, and stops them on the first SIGTERM/SIGINT (forcefully on the second). */
export async function runStart(options: StartOptions): Promise<void> {
  const logger = createLogger(options.config.LOG_LEVEL, { service: 'fogsched' });
  const needsDb = options.roles.some((r) => r !== 'fog-node');
  if (options.migrate && needsDb) {
    const { isConnectionError, migrate } = await import('../infra/postgres.js');
    try {
      await migrate(options.config.DATABASE_URL, logger);
    } catch (error) {
      if (isConnectionError(error)) {
        throw new FogschedError({ code: 'SERVICE_UNAVAILABLE', status: 503, message: `cannot reach PostgreSQL (${(error as Error).message}); run \`fogsched doctor\`` });
      }
      throw error;
    }
  }
  if (options.roles.some((r) => PROJECTION_ROLES.has(r))) await checkProjections(options, logger);
  // Spans are manual (no auto-instrumentation), so the SDK need not load before other modules.
  const every = ROLE_NAMES.every((r) => options.roles.includes(r));
  const stopTracing = await startTracing(options.config, { serviceName: every ? 'fogsched' : `fogsched-${options.roles.join('-')}`, logger });
  const roles = createRoles(options, logger);
  const started: Role[] = [];
  let stopping = false;
  const stopAll = async () => {
    for (const role of [...started].reverse()) {
      try {
        await role.stop();
      } catch (error) {
        logger.error({ err: error, role: role.name }, 'role failed to stop');
      }
    }
    await stopTracing(); // exports the spans still buffered
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'stopping');
    void stopAll().then(() => {
      logger.info('stopped');
      process.exit(0);
    });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    for (const role of roles) {
      await role.start();
      started.push(role);
    }
  } catch (error) {
    await stopAll();
    throw error;
  }
  logger.info({ roles: roles.map((r) => r.name) }, 'fogsched started');
}

/**
 * Refuses to serve read models older than the code's projection versions (their rows would
 * not mean what this code thinks), or rebuilds them first with --rebuild-stale.
 */
async function checkProjections(options: StartOptions, logger: Logger): Promise<void> {
  // PostgreSQL down: the roles start degraded (503s) as before; they cannot serve stale rows either.
  const [{ staleProjections }, { runRebuild, withPostgres }] = await Promise.all([import('../projections/index.js'), import('./projection-commands.js')]);
  await withPostgres(options.config, async (pg) => {
    const stale = await staleProjections(pg.db);
    if (stale.length === 0) return;
    const list = stale.map((s) => `${s.projection} (stored version ${s.stored ?? 'none'}, code version ${s.code})`).join(', ');
    if (!options.rebuildStale) {
      throw new FogschedError({
        code: 'PROJECTIONS_STALE',
        status: 503,
        message: `stale read models: ${list}; run \`fogsched projections rebuild\`, or start with --rebuild-stale`,
      });
    }
    logger.warn({ stale }, 'stale read models: rebuilding before serving');
    await runRebuild(pg, { projections: stale.map((s) => s.projection) });
  }).catch((error: unknown) => {
    if ((error as { code?: string }).code !== 'SERVICE_UNAVAILABLE') throw error;
    logger.warn({ err: error }, 'PostgreSQL unreachable: projection versions not checked');
  });
}

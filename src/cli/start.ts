import { hostname } from 'node:os';
import type { Config } from '../infra/config.js';
import { checkAutoscaleThresholds, parseAutoscaleTiers, parseBrokers, parseLabels, parseTiers, parseZoneList } from '../infra/config.js';
import { createLogger, type Logger } from '../infra/logger.js';
import type { Role } from '../infra/role.js';
import type { ReadinessCheck } from '../infra/ops-server.js';
import { startTracing } from '../infra/tracing.js';
import { FogschedError, servedTiers, slotsFor } from '../domain/index.js';
import { topology, topologyNames, type Topology, type TopologyOptions } from '../broker/index.js';

export const ROLE_NAMES = ['api', 'relay', 'ingest', 'fog-node', 'coordinator', 'scheduler', 'autoscaler'] as const;

/** What `fogsched start` runs without --roles: everything but the autoscaler, which starts fog nodes of its own (ask for it by name). */
export const DEFAULT_ROLES = ROLE_NAMES.filter((r) => r !== 'autoscaler');

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
  return topology(topologyOptionsOf(config));
}

/** The topology settings of a configuration (placement queues are declared with them too). */
export function topologyOptionsOf(config: Config): TopologyOptions {
  return {
    prefix: config.AMQP_PREFIX,
    tiers: parseTiers(config.TIERS).map((t) => t.name),
    taskQueueMaxLength: config.TASK_QUEUE_MAX_LENGTH,
    deliveryLimit: config.TASK_DELIVERY_LIMIT,
    metricsQueueMaxLength: config.METRICS_QUEUE_MAX_LENGTH,
    zones: parseZoneList('FOG_ZONES', config.FOG_ZONES),
    ingestLanes: config.INGEST_LANES,
  };
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
 * Adds the role's dependencies to the process's `/readyz` (ops port) while it runs. The checks
 * are built when the role starts, so a process loads only the clients its roles use.
 */
function withReadiness<R extends Role>(role: R, checks: () => Promise<ReadinessCheck[]>): R {
  let remove: (() => void)[] = [];
  return {
    ...role,
    async start() {
      const { addReadinessCheck } = await import('../infra/ops-server.js');
      remove = (await checks()).map((c) => addReadinessCheck(c));
      await role.start();
    },
    async stop() {
      for (const done of remove) done();
      remove = [];
      await role.stop();
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
  const checks = () => import('../infra/ready-checks.js');
  const pgReady = async (role: string) => (await checks()).postgresReadiness(`${role}:postgresql`, config.DATABASE_URL);
  const amqpReady = async (role: string) => (await checks()).brokerReadiness(`${role}:rabbitmq`, config.AMQP_URL);
  const redisReady = async (role: string, critical: boolean) => (await checks()).redisReadiness(`${role}:redis`, config.REDIS_URL, critical);
  if (roles.includes('relay')) {
    list.push(
      withReadiness(lazyRole('relay', async () =>
        (await import('../outbox/relay.js')).createRelay({
          databaseUrl: config.DATABASE_URL,
          amqpUrl: config.AMQP_URL,
          topology: topo,
          logger,
          batchSize: config.RELAY_BATCH_SIZE,
          pollIntervalMs: config.RELAY_POLL_INTERVAL_MS,
          retryMaxMs: config.RELAY_RETRY_MAX_MS,
          leaseMs: config.RELAY_LEASE_MS,
          placement: { topology: topologyOptionsOf(config), redisUrl: config.REDIS_URL, redisPrefix: config.REDIS_PREFIX },
        }),
      ), async () => [await pgReady('relay'), await amqpReady('relay')]),
    );
  }
  if (roles.includes('ingest')) {
    list.push(withReadiness(lazyRole('ingest', async () => {
      const [{ createPostgres }, { createIngest }] = await Promise.all([import('../infra/postgres.js'), import('../ingest/index.js')]);
      const pg = createPostgres({
        url: config.DATABASE_URL,
        // A connection per unit that commits on its own (each result lane, and the main one), at most 9.
        poolMax: Math.min(config.INGEST_LANES, 8) + 1,
        connectTimeoutMs: config.PG_CONNECT_TIMEOUT_MS,
        statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS,
        applicationName: 'fogsched-ingest',
      });
      // Replicas share the lanes through Redis; with Redis down each keeps what the broker gives it.
      const redis = config.INGEST_LANES > 1 ? (await import('../infra/redis.js')).createRedis(config.REDIS_URL, { logger, name: 'fogsched-ingest' }) : undefined;
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
        ...(redis ? { membership: { redis, prefix: config.REDIS_PREFIX } } : {}),
        logger,
      });
      return { name: 'ingest', start: () => ingest.start(), stop: async () => { await ingest.stop(); redis?.disconnect(); await pg.close(); } };
    }), async () => [await pgReady('ingest'), await amqpReady('ingest')]));
  }
  if (roles.includes('fog-node')) {
    const tier = options.tier ?? config.FOG_NODE_TIER;
    const tierSpec = tiers.find((t) => t.name === tier);
    if (!tierSpec) {
      throw new FogschedError({ code: 'CONFIG_INVALID', status: 500, message: `unknown tier ${tier}; tiers are ${tiers.map((t) => t.name).join(', ')}` });
    }
    const slots = config.FOG_NODE_SLOTS || slotsFor(tierSpec);
    for (let i = 0; i < options.fogNodes; i++) {
      const nodeId = options.fogNodes > 1 || !config.FOG_NODE_ID ? `${config.FOG_NODE_ID || `${hostname()}-${process.pid}`}${options.fogNodes > 1 ? `-${i + 1}` : ''}` : config.FOG_NODE_ID;
      const node = lazyRole(`fog-node:${nodeId}`, async () =>
          (await import('../fog-node/index.js')).createFogNode({
            amqpUrl: config.AMQP_URL,
            topology: topo,
            names,
            nodeId,
            tier,
            servedTiers: servedTiers(tier, tiers),
            slots,
            prefetch: config.FOG_NODE_PREFETCH || slots,
            graceMs: config.FOG_NODE_GRACE_MS,
            resultFlushMs: config.FOG_NODE_RESULT_FLUSH_MS,
            metricsIntervalMs: config.FOG_NODE_METRICS_INTERVAL_MS,
            agingMs: config.FOG_NODE_AGING_MS,
            handlersModule: config.FOG_NODE_HANDLERS,
            workerMemoryMb: config.FOG_NODE_WORKER_MEMORY_MB,
            tierMemoryMb: tierSpec.maxMemoryMb,
            progressMinIntervalMs: config.PROGRESS_MIN_INTERVAL_MS,
            handlerLogLevel: config.LOG_LEVEL,
            maxOutputBytes: config.FOG_NODE_MAX_OUTPUT_BYTES,
            zone: config.FOG_NODE_ZONE || null,
            labels: parseLabels(config.FOG_NODE_LABELS),
            placementRescanMs: config.FOG_NODE_PLACEMENT_RESCAN_MS,
            logger,
            heartbeat: { redisUrl: config.REDIS_URL, prefix: config.REDIS_PREFIX, intervalMs: config.FOG_HEARTBEAT_INTERVAL_MS, ttlMs: config.FOG_HEARTBEAT_TTL_MS, version: options.version },
          }),
      );
      // The nodes of one process share their dependencies: the first reports them. Redis is membership only.
      list.push(i === 0 ? withReadiness(node, async () => [await amqpReady('fog-node'), await redisReady('fog-node', false)]) : node);
    }
  }
  if (roles.includes('coordinator')) {
    list.push(withReadiness(lazyRole('coordinator', async () => {
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
        tiers,
        logger,
      });
      return { name: 'coordinator', start: () => coordinator.start(), stop: async () => { await coordinator.stop(); await pg.close(); } };
    }), async () => [await pgReady('coordinator'), await redisReady('coordinator', true)]));
  }
  if (roles.includes('scheduler')) {
    list.push(withReadiness(lazyRole('scheduler', async () => {
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
      const { registerTaskGauges } = await import('../infra/db-gauges.js');
      let untrack: (() => void) | undefined;
      return {
        name: 'scheduler',
        start: async () => {
          untrack = registerTaskGauges(config.DATABASE_URL);
          await scheduler.start();
        },
        stop: async () => {
          await scheduler.stop();
          untrack?.();
          await pg.close();
        },
      };
    }), async () => [await pgReady('scheduler')]));
  }
  if (roles.includes('autoscaler')) {
    // Settings are checked here, before anything starts: a bad AUTOSCALE_TIERS is one clear line.
    const scaled = parseAutoscaleTiers(config.AUTOSCALE_TIERS, tiers);
    checkAutoscaleThresholds(config);
    list.push(lazyRole('autoscaler', async () => {
      const [{ createPostgres }, a] = await Promise.all([import('../infra/postgres.js'), import('../autoscaler/index.js')]);
      const pg = createPostgres({ url: config.DATABASE_URL, poolMax: 2, connectTimeoutMs: config.PG_CONNECT_TIMEOUT_MS, statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS, applicationName: 'fogsched-autoscaler' });
      const holder = `${hostname()}-${process.pid}`;
      const backend =
        config.AUTOSCALER_BACKEND === 'swarm'
          ? a.createSwarmBackend({ socketPath: config.AUTOSCALER_DOCKER_SOCKET, stack: config.AUTOSCALER_SWARM_STACK })
          : a.createLocalBackend({ idPrefix: `auto-${holder}`, env: process.env, logger, killAfterMs: config.FOG_NODE_GRACE_MS + 20_000 });
      const autoscaler = a.createAutoscaler({
        db: pg.db,
        databaseUrl: config.DATABASE_URL,
        amqpUrl: config.AMQP_URL,
        topology: topo,
        names,
        tiers: scaled,
        policy: {
          slotsPerReplica: config.FOG_NODE_SLOTS,
          upDepth: config.AUTOSCALE_UP_DEPTH,
          downDepth: config.AUTOSCALE_DOWN_DEPTH,
          upWaitMs: config.AUTOSCALE_UP_WAIT_MS,
          downWaitMs: config.AUTOSCALE_DOWN_WAIT_MS,
          upCooldownMs: config.AUTOSCALE_UP_COOLDOWN_MS,
          downCooldownMs: config.AUTOSCALE_DOWN_COOLDOWN_MS,
        },
        backend,
        intervalMs: config.AUTOSCALER_INTERVAL_MS,
        leaseMs: config.AUTOSCALER_LEASE_MS,
        holder,
        logger,
      });
      return { name: 'autoscaler', start: () => autoscaler.start(), stop: async () => { await autoscaler.stop(); await pg.close(); } };
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
  // One ops server for the process, whatever roles it runs: /healthz, /readyz, /metrics on OPS_PORT.
  const { configureMetrics, parseNameList } = await import('../infra/metrics.js');
  configureMetrics({ tenants: parseNameList(options.config.METRICS_TENANTS), taskTypes: parseNameList(options.config.METRICS_TASK_TYPES) });
  const ops = await (await import('../infra/ops-server.js')).startOpsServer({ host: options.config.HOST, port: options.config.OPS_PORT, logger });
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
    await ops.close();
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

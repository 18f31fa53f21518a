import { sql } from 'kysely';
import type { Config } from '../infra/config.js';
import { parseTiers } from '../infra/config.js';
import type { Logger } from '../infra/logger.js';
import { createPostgres, pendingMigrations } from '../infra/postgres.js';
import type { Role } from '../infra/role.js';
import { topologyNames } from '../outbox/index.js';
import { createTaskService } from '../tasks/index.js';
import { buildApi, type ReadinessCheck } from './app.js';
import type { FastifyInstance } from 'fastify';

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
  let address: string | null = null;
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
      });
      app = await buildApi({
        db: postgres.db,
        tasks,
        logger,
        version: options.version,
        readiness: [
          {
            name: 'postgresql',
            critical: true,
            async check() {
              await sql`SELECT 1`.execute(postgres.db);
              const pending = await pendingMigrations(postgres.pool);
              if (pending.length > 0) throw new Error(`migrations not applied: ${pending.join(', ')}`);
            },
          },
          ...(options.extraReadiness ?? []),
        ],
      });
      address = await app.listen({ host: config.HOST, port: config.PORT });
      logger.info({ address, docs: `${address}/docs` }, 'api listening');
    },
    stop() {
      return (stopped ??= (async () => {
        await app?.close();
        await pg?.close();
      })());
    },
  };
}

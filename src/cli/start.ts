import type { Config } from '../infra/config.js';
import { createLogger, type Logger } from '../infra/logger.js';
import { isConnectionError, migrate } from '../infra/postgres.js';
import type { Role } from '../infra/role.js';
import { createApiRole } from '../api/api-role.js';
import { FogschedError } from '../domain/index.js';

export const ROLE_NAMES = ['api'] as const;

export interface StartOptions {
  readonly config: Config;
  readonly version: string;
  readonly roles: readonly string[];
  readonly fogNodes: number;
  readonly tier: string | undefined;
  readonly migrate: boolean;
}

export function createRoles(options: StartOptions, logger: Logger): Role[] {
  const { config, roles } = options;
  const list: Role[] = [];
  if (roles.includes('api')) list.push(createApiRole({ config, logger, version: options.version }));
  return list;
}

/** Migrates, starts the roles, and stops them on the first SIGTERM/SIGINT (forcefully on the second). */
export async function runStart(options: StartOptions): Promise<void> {
  const logger = createLogger(options.config.LOG_LEVEL, { service: 'fogsched' });
  if (options.migrate) {
    try {
      await migrate(options.config.DATABASE_URL, logger);
    } catch (error) {
      if (isConnectionError(error)) {
        throw new FogschedError({ code: 'SERVICE_UNAVAILABLE', status: 503, message: `cannot reach PostgreSQL (${(error as Error).message}); run \`fogsched doctor\`` });
      }
      throw error;
    }
  }
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

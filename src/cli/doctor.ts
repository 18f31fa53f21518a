import pg from 'pg';
import { Redis } from 'ioredis';
import { brokerUrls, probeBroker } from '../broker/index.js';
import type { Config } from '../infra/config.js';
import { redactUrl } from '../infra/logger.js';
import { pendingMigrations } from '../infra/postgres.js';

interface Check {
  readonly name: string;
  readonly target: string;
  readonly howToStart: string;
  run(): Promise<string>;
}

/** Checks each service, prints one line per check, returns whether all passed. */
export async function runDoctor(config: Config, write: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<boolean> {
  const checks: Check[] = [
    {
      name: 'postgresql',
      target: redactUrl(config.DATABASE_URL),
      howToStart: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start   (or: docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15)",
      async run() {
        const admin = new URL(config.DATABASE_URL);
        admin.pathname = '/postgres';
        const client = new pg.Client({ connectionString: admin.toString(), connectionTimeoutMillis: 3000 });
        await client.connect();
        try {
          const v = await client.query<{ server_version: string; autovacuum: string }>(
            "SELECT current_setting('server_version') AS server_version, current_setting('autovacuum') AS autovacuum",
          );
          // The outbox and task_current are updated once or twice per task: without autovacuum their
          // dead rows stay until a manual VACUUM, and the tables and their indexes keep growing.
          const vacuum = v.rows[0]?.autovacuum === 'off' ? '; warning: autovacuum is off (dead outbox and task_current rows stay until a manual VACUUM)' : '';
          const pool = new pg.Pool({ connectionString: config.DATABASE_URL, connectionTimeoutMillis: 3000, max: 1 });
          try {
            const pending = await pendingMigrations(pool).catch(() => ['(database missing)']);
            return `PostgreSQL ${v.rows[0]?.server_version}; ${pending.length === 0 ? 'migrations applied' : `pending migrations: ${pending.length} (run: fogsched migrate)`}${vacuum}`;
          } finally {
            await pool.end();
          }
        } finally {
          await client.end();
        }
      },
    },
    ...brokerUrls(config.AMQP_URL).map((url) => ({
      name: 'rabbitmq',
      target: redactUrl(url),
      howToStart: 'rabbitmq-server -detached   (or: docker run -d -p 5672:5672 rabbitmq:3.13-management)',
      async run() {
        const { version } = await probeBroker(url, { timeoutMs: 3000, name: 'fogsched-doctor' });
        return `RabbitMQ ${version ?? '?'}`;
      },
    })),
    {
      name: 'redis',
      target: redactUrl(config.REDIS_URL),
      howToStart: 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no   (or: docker run -d -p 6379:6379 redis:7)',
      async run() {
        const redis = new Redis(config.REDIS_URL, { lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 0, retryStrategy: () => null });
        redis.on('error', () => {});
        try {
          await redis.connect();
          const info = await redis.info('server');
          return `Redis ${/redis_version:(\S+)/.exec(info)?.[1] ?? '?'}`;
        } finally {
          redis.disconnect();
        }
      },
    },
  ];
  let ok = true;
  for (const check of checks) {
    try {
      write(`ok    ${check.name.padEnd(10)} ${check.target}  ${await check.run()}`);
    } catch (error) {
      ok = false;
      const e = error as { code?: string; message?: string };
      write(`FAIL  ${check.name.padEnd(10)} ${check.target}  ${e.code ?? ''} ${e.message ?? String(error)}`.replace(/\s+$/, ''));
      write(`      start it with: ${check.howToStart}`);
    }
  }
  return ok;
}

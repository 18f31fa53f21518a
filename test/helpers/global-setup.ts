import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { migrate, MIGRATIONS_DIR } from '../../src/infra/postgres.js';
import { canConnect, serviceUrls, withDatabase } from './services.js';

declare module 'vitest' {
  export interface ProvidedContext {
    templateDatabase: string;
    postgresUrl: string;
    amqpUrl: string;
    redisUrl: string;
  }
}

const HOW_TO_START = {
  postgres: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
  amqp: 'rabbitmq-server -detached',
  redis: 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
};

function dockerAvailable(): boolean {
  try {
    execFileSync('docker', ['info'], { stdio: 'ignore', timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

/**
 * On CI nothing else uses the broker: queues that earlier, interrupted runs left
 * behind (test prefixes only) are deleted, since every quorum queue holds broker
 * file handles and a 3.10 node with its default limit stops accepting connections
 * after about 300 of them.
 */
function removeLeftoverTestQueues(): void {
  try {
    const names = execFileSync('rabbitmqctl', ['list_queues', 'name', '-q'], { encoding: 'utf8', timeout: 30_000 })
      .split('\n')
      .map((n) => n.trim())
      .filter((n) => /^(e2e[0-9a-f]{6}_|t[0-9a-f]{6}_|bench)/.test(n));
    if (names.length === 0) return;
    const list = names.map((n) => `<<"${n}">>`).join(',');
    execFileSync('rabbitmqctl', ['eval', `[begin {ok,Q}=rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>,queue,N)), rabbit_amqqueue:delete(Q,false,false,<<"ci">>) end || N <- [${list}]], ok.`], { timeout: 120_000 });
    console.log(`removed ${names.length} queues left by earlier test runs`);
  } catch (error) {
    console.log(`could not list leftover test queues (${(error as Error).message.split('\n')[0]}); continuing`);
  }
}

/**
 * Checks the services (starting them with testcontainers where they are missing
 * and a Docker engine is there), then migrates one template database that each
 * test file clones.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const urls = serviceUrls();
  const stops: (() => Promise<unknown>)[] = [];
  const missing = (
    await Promise.all([
      canConnect(urls.postgres, 5432).then((ok) => (ok ? null : 'postgres')),
      canConnect(urls.amqp, 5672).then((ok) => (ok ? null : 'amqp')),
      canConnect(urls.redis, 6379).then((ok) => (ok ? null : 'redis')),
    ])
  ).filter((m): m is 'postgres' | 'amqp' | 'redis' => m !== null);

  if (missing.length > 0) {
    if (!dockerAvailable()) {
      throw new Error(
        `tests need ${missing.join(', ')} and neither the service nor a Docker engine is reachable.\n` +
          missing.map((m) => `  ${m}: ${urls[m]} — start it with: ${HOW_TO_START[m]}`).join('\n'),
      );
    }
    const { GenericContainer, Wait } = await import('testcontainers');
    for (const m of missing) {
      if (m === 'postgres') {
        const c = await new GenericContainer('postgres:15').withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust', POSTGRES_USER: 'root' }).withExposedPorts(5432).withWaitStrategy(Wait.forLogMessage(/ready to accept connections/, 2)).start();
        urls.postgres = `postgres://root@${c.getHost()}:${c.getMappedPort(5432)}/postgres`;
        stops.push(() => c.stop());
      } else if (m === 'amqp') {
        const c = await new GenericContainer('rabbitmq:3.13').withExposedPorts(5672).withWaitStrategy(Wait.forLogMessage(/Server startup complete/)).start();
        urls.amqp = `amqp://guest:guest@${c.getHost()}:${c.getMappedPort(5672)}`;
        stops.push(() => c.stop());
      } else {
        const c = await new GenericContainer('redis:7').withExposedPorts(6379).start();
        urls.redis = `redis://${c.getHost()}:${c.getMappedPort(6379)}`;
        stops.push(() => c.stop());
      }
    }
  }

  if (process.env.CI) removeLeftoverTestQueues();

  const migrationsHash = createHash('sha256');
  for (const f of readdirSync(MIGRATIONS_DIR).sort()) migrationsHash.update(f).update(readFileSync(join(MIGRATIONS_DIR, f)));
  const template = `fogsched_tpl_${migrationsHash.digest('hex').slice(0, 12)}`;
  const admin = new pg.Client({ connectionString: urls.postgres });
  await admin.connect();
  try {
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [template]);
    if (exists.rowCount === 0) {
      const building = `${template}_build_${process.pid}`;
      await admin.query(`DROP DATABASE IF EXISTS ${building} WITH (FORCE)`);
      await migrate(withDatabase(urls.postgres, building));
      try {
        await admin.query(`ALTER DATABASE ${building} RENAME TO ${template}`);
      } catch (error) {
        // Another run built it meanwhile.
        if ((error as { code?: string }).code !== '42P04') throw error;
        await admin.query(`DROP DATABASE IF EXISTS ${building} WITH (FORCE)`);
      }
    }
  } finally {
    await admin.end();
  }

  project.provide('templateDatabase', template);
  project.provide('postgresUrl', urls.postgres);
  project.provide('amqpUrl', urls.amqp);
  project.provide('redisUrl', urls.redis);
  return async () => {
    for (const stop of stops) await stop();
  };
}

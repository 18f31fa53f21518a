import pg from 'pg';
import { brokerUrls, probeBroker } from '../broker/index.js';
import type { Config } from '../infra/config.js';
import { redactUrl } from '../infra/logger.js';

/**
 * `fogsched healthcheck [--role R]`: asks, from outside the role's process, whether what the
 * role needs answers. Prints one line and resolves to whether it does; every check has a short
 * timeout. A diagnosis command: the container health check is `GET /healthz` on the role's ops
 * port (loop progress, see src/infra/health.ts), which a dependency outage does not fail.
 *
 * | role | healthy when |
 * |---|---|
 * | api | `GET http://127.0.0.1:$PORT/readyz` answers 200 (PostgreSQL reachable and migrated) |
 * | relay, ingest, coordinator, scheduler | PostgreSQL answers `SELECT 1` |
 * | fog-node | one broker of `AMQP_URL` accepts an AMQP connection (a fog node never sees PostgreSQL) |
 */
export const HEALTHCHECK_ROLES = ['api', 'relay', 'ingest', 'fog-node', 'coordinator', 'scheduler', 'autoscaler'] as const;
export type HealthcheckRole = (typeof HEALTHCHECK_ROLES)[number];

export interface HealthcheckOptions {
  readonly role: HealthcheckRole;
  /** Per check; the Docker HEALTHCHECK timeout must be larger. Default 3000 ms. */
  readonly timeoutMs?: number;
  readonly write?: (line: string) => void;
}

export async function runHealthcheck(config: Config, options: HealthcheckOptions): Promise<boolean> {
  const timeoutMs = options.timeoutMs ?? 3000;
  const write = options.write ?? ((line: string) => process.stdout.write(`${line}\n`));
  const { role } = options;
  try {
    const detail = role === 'api' ? await checkReadyz(config.PORT, timeoutMs) : role === 'fog-node' ? await checkBroker(config.AMQP_URL, timeoutMs) : await checkPostgres(config.DATABASE_URL, timeoutMs);
    write(`ok    ${role} ${detail}`);
    return true;
  } catch (error) {
    const e = error as { code?: string; message?: string };
    write(`FAIL  ${role} ${[e.code, e.message ?? String(error)].filter(Boolean).join(' ')}`);
    return false;
  }
}

async function checkReadyz(port: number, timeoutMs: number): Promise<string> {
  const url = `http://127.0.0.1:${port}/readyz`;
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) }).catch((error: unknown) => {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    throw new Error(`${url} ${cause?.code ?? cause?.message ?? (error as Error).message}`);
  });
  await res.body?.cancel();
  if (res.status !== 200) throw new Error(`${url} answered ${res.status}`);
  return `${url} 200`;
}

async function checkPostgres(url: string, timeoutMs: number): Promise<string> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: timeoutMs, query_timeout: timeoutMs, application_name: 'fogsched-healthcheck' });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return `postgresql ${redactUrl(url)}`;
  } catch (error) {
    const e = error as { code?: string; message?: string };
    throw Object.assign(new Error(`postgresql ${redactUrl(url)} ${e.message ?? ''}`.trim()), { code: e.code });
  } finally {
    await client.end().catch(() => {});
  }
}

/** Healthy when any broker of the cluster list accepts a connection (the fog node fails over to it). */
async function checkBroker(urls: string, timeoutMs: number): Promise<string> {
  const failures: string[] = [];
  for (const url of brokerUrls(urls)) {
    try {
      await probeBroker(url, { timeoutMs, name: 'fogsched-healthcheck' });
      return `rabbitmq ${redactUrl(url)}`;
    } catch (error) {
      const e = error as { code?: string; message?: string };
      failures.push(`${redactUrl(url)} ${e.code ?? e.message ?? String(error)}`);
    }
  }
  throw new Error(`rabbitmq unreachable: ${failures.join('; ')}`);
}

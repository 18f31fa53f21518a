import { brokerUrls, probeBroker } from '../broker/index.js';
import type { ReadinessCheck } from './ops-server.js';

/**
 * Readiness checks shared by the roles. Each opens a short connection of its own, so it never
 * queues behind a role's work (or interleaves with a pg.Client's queries), and it answers for
 * the dependency, not for the role's loop (that is /healthz).
 */

/** PostgreSQL answers `SELECT 1` on a fresh connection. */
export function postgresReadiness(name: string, url: string, timeoutMs = 2000): ReadinessCheck {
  return {
    name,
    critical: true,
    async check() {
      const { default: pg } = await import('pg'); // loaded only by roles that use PostgreSQL
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: timeoutMs, query_timeout: timeoutMs, application_name: 'fogsched-readyz' });
      client.on('error', () => {});
      try {
        await client.connect();
        await client.query('SELECT 1');
      } finally {
        await client.end().catch(() => {});
      }
    },
  };
}

/** Some broker of the cluster list accepts an AMQP connection (the roles fail over to it). */
export function brokerReadiness(name: string, urls: string, timeoutMs = 2000): ReadinessCheck {
  return {
    name,
    critical: true,
    async check() {
      let last: unknown;
      for (const url of brokerUrls(urls)) {
        try {
          await probeBroker(url, { timeoutMs, name: 'fogsched-readyz' });
          return;
        } catch (error) {
          last = error;
        }
      }
      throw last instanceof Error ? last : new Error('no broker answered');
    },
  };
}

/** Redis answers PING on a fresh connection (no retries, no offline queue). */
export function redisReadiness(name: string, url: string, critical: boolean, timeoutMs = 2000): ReadinessCheck {
  return {
    name,
    critical,
    async check() {
      const { Redis } = await import('ioredis');
      const client = new Redis(url, { lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null, connectionName: 'fogsched-readyz' });
      client.on('error', () => {});
      try {
        await client.connect();
        await client.ping();
      } finally {
        client.disconnect();
      }
    },
  };
}

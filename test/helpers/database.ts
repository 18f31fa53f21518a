import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';
import { createPostgres, type Postgres } from '../../src/infra/postgres.js';
import { adminQuery, withDatabase } from './services.js';

export interface TestDatabase extends Postgres {
  readonly url: string;
  readonly name: string;
  /** Closes the pool and drops the database. */
  drop(): Promise<void>;
}

/** A fresh database cloned from the migrated template; drop it in afterAll. */
export async function createTestDatabase(label = 't'): Promise<TestDatabase> {
  const name = `fogsched_${label.replace(/[^a-z0-9_]/gi, '').toLowerCase().slice(0, 20)}_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name} TEMPLATE ${inject('templateDatabase')}`);
  const url = withDatabase(inject('postgresUrl'), name);
  const pg = createPostgres({ url, poolMax: 10, connectTimeoutMs: 3000, statementTimeoutMs: 30_000 });
  return {
    ...pg,
    url,
    name,
    async drop() {
      await pg.close();
      await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/** Polls `check` until it returns a truthy value (or stops throwing) or the deadline passes. */
export async function eventually<T>(check: () => Promise<T> | T, opts: { timeoutMs?: number; intervalMs?: number; message?: string } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      lastError = new Error(opts.message ?? 'condition not met');
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw lastError;
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}

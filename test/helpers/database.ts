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

/** The chaos harness's poll-until-true, shared with the tests (one definition). */
export { eventually } from '../../src/chaos/util.js';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduler, pruneRetention } from '../../src/schedules/index.js';
import { createTaskService } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

// Issue 15.9: outbox (a copy of every payload), inbox and idempotency_keys were never pruned.
// The scheduler role now deletes what is past retention, in bounded batches.

const names = topologyNames('t_');
const caller = { tenant: 'default', actor: 'test' };
const RETENTION = { outboxDays: 7, inboxDays: 7, idempotencyKeyHours: 24 };
let tdb: TestDatabase;

beforeAll(async () => {
  tdb = await createTestDatabase('retention');
});
afterAll(async () => {
  await tdb.drop();
});

const service = () => createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 500 });

/** Submits `n` tasks (one outbox row each); returns their ids in submit order. */
async function submitTasks(n: number, extra: { notBefore?: string; keyPrefix?: string } = {}): Promise<string[]> {
  const results = await service().submitBatch(
    Array.from({ length: n }, (_, i) => ({ type: 'noop', notBefore: extra.notBefore ?? null, idempotencyKey: extra.keyPrefix ? `${extra.keyPrefix}-${i}` : null })),
    caller,
  );
  return results.map((r) => r.task.taskId);
}

/** Makes rows look as if they were written `days` ago (and, for outbox rows, published then, unless told). */
async function age(table: 'outbox' | 'inbox' | 'idempotency_keys', where: ReturnType<typeof sql>, days: number, opts: { published?: boolean } = {}) {
  if (table === 'outbox') {
    await sql`UPDATE outbox SET created_at = now() - ${days}::float8 * interval '1 day',
      published_at = ${opts.published === false ? null : sql`now() - ${days}::float8 * interval '1 day'`} WHERE ${where}`.execute(tdb.db);
  } else if (table === 'inbox') {
    await sql`UPDATE inbox SET received_at = now() - ${days}::float8 * interval '1 day' WHERE ${where}`.execute(tdb.db);
  } else {
    await sql`UPDATE idempotency_keys SET created_at = now() - ${days}::float8 * interval '1 day' WHERE ${where}`.execute(tdb.db);
  }
}
const count = async (text: ReturnType<typeof sql>) => Number((await sql<{ n: number }>`SELECT count(*)::int AS n FROM ${text}`.execute(tdb.db)).rows[0]?.n);

describe('retention', () => {
  it('deletes published outbox rows older than OUTBOX_RETENTION_DAYS in batches; keeps recent and unpublished ones, however old', async () => {
    await sql`TRUNCATE outbox`.execute(tdb.db);
    // The low end of the outbox: old rows never published (a far delayed task) ...
    const stuck = await submitTasks(10, { notBefore: '2100-01-01T00:00:00Z' });
    await age('outbox', sql`stream_id = ANY(${stuck}::text[])`, 30, { published: false });
    // ... then published rows past retention, then ones inside it, then unpublished new ones.
    const old = await submitTasks(23);
    await age('outbox', sql`stream_id = ANY(${old}::text[])`, 8);
    const recent = await submitTasks(5);
    await age('outbox', sql`stream_id = ANY(${recent}::text[])`, 6);
    const fresh = await submitTasks(4);

    const result = await pruneRetention(tdb.db, { ...RETENTION, batchRows: 7 });
    expect(result).toEqual({ outbox: 23, inbox: 0, idempotencyKeys: 0, taskWaits: 0 });
    expect(await count(sql`outbox WHERE stream_id = ANY(${old}::text[])`)).toBe(0);
    expect(await count(sql`outbox WHERE stream_id = ANY(${stuck}::text[])`)).toBe(10);
    expect(await count(sql`outbox WHERE stream_id = ANY(${recent}::text[])`)).toBe(5);
    expect(await count(sql`outbox WHERE stream_id = ANY(${fresh}::text[])`)).toBe(4);
    expect((await pruneRetention(tdb.db, { ...RETENTION, batchRows: 7 })).outbox).toBe(0);
    // The events stay: retention only drops copies.
    expect(await count(sql`events WHERE stream_id = ANY(${old}::text[])`)).toBe(23);
  });

  it('deletes inbox rows older than INBOX_RETENTION_DAYS and idempotency keys older than IDEMPOTENCY_KEY_TTL_HOURS, in batches', async () => {
    await sql`TRUNCATE inbox, idempotency_keys`.execute(tdb.db);
    await sql`INSERT INTO inbox (message_id, source) SELECT 'm-' || g, 'results' FROM generate_series(1, 40) g`.execute(tdb.db);
    await age('inbox', sql`message_id IN (SELECT 'm-' || g FROM generate_series(1, 25) g)`, 7.5);
    await age('inbox', sql`message_id IN (SELECT 'm-' || g FROM generate_series(26, 30) g)`, 6.5);
    await submitTasks(12, { keyPrefix: 'k' });
    await age('idempotency_keys', sql`key IN (SELECT 'k-' || g FROM generate_series(0, 8) g)`, 1.1);

    const result = await pruneRetention(tdb.db, { ...RETENTION, batchRows: 4 });
    expect(result).toMatchObject({ inbox: 25, idempotencyKeys: 9 });
    expect(await count(sql`inbox`)).toBe(15);
    expect(await count(sql`inbox WHERE message_id IN ('m-1', 'm-25')`)).toBe(0);
    expect((await sql<{ key: string }>`SELECT key FROM idempotency_keys ORDER BY key`.execute(tdb.db)).rows.map((r) => r.key)).toEqual(['k-10', 'k-11', 'k-9']);
  });

  it('the scheduler role runs it', async () => {
    await sql`TRUNCATE inbox`.execute(tdb.db);
    await sql`INSERT INTO inbox (message_id, source, received_at) VALUES ('old', 'results', now() - interval '8 days'), ('new', 'results', now())`.execute(tdb.db);
    const scheduler = createScheduler({
      db: tdb.db,
      names,
      tiers: DEFAULT_TIERS,
      defaultMaxAttempts: 3,
      logger: createLogger('silent'),
      pollIntervalMs: 50,
      misfireGraceMs: 1000,
      lease: { leaseMs: 3_600_000, graceMs: 3_600_000 },
      backoff: { baseMs: 10, factor: 1, maxMs: 10 },
      retention: RETENTION,
    });
    await scheduler.start();
    try {
      await eventually(async () => (await count(sql`inbox WHERE message_id = 'old'`)) === 0, { timeoutMs: 5000 });
    } finally {
      await scheduler.stop();
    }
    expect(await count(sql`inbox WHERE message_id = 'new'`)).toBe(1);
  });
});

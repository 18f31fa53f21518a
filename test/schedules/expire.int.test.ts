import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { getTaskHistory } from '../../src/projections/index.js';
import { createScheduler } from '../../src/schedules/index.js';
import { createTaskService, executeTaskCommands } from '../../src/tasks/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

const names = topologyNames('t_');
let tdb: TestDatabase;
beforeAll(async () => {
  tdb = await createTestDatabase('expire');
});
afterAll(async () => {
  await tdb.drop();
});

describe('deadlines without a fog node', () => {
  it('a waiting task past its deadline ends failed (expired) with no start; running and deadline-free tasks are left alone', async () => {
    const tasks = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, maxBatch: 10 });
    const caller = { tenant: 'default', actor: 'test' };
    const deadline = new Date(Date.now() + 150).toISOString();
    const { task: overdue } = await tasks.submit({ type: 'noop', deadline }, caller);
    const { task: running } = await tasks.submit({ type: 'noop', deadline }, caller);
    const { task: free } = await tasks.submit({ type: 'noop' }, caller);
    await tdb.db.transaction().execute((trx) =>
      executeTaskCommands(trx, [{ taskId: running.taskId, command: { type: 'StartTask', data: { attempt: 1, nodeId: 'n1', now: new Date().toISOString() } }, metadata: {} }], names),
    );
    const scheduler = createScheduler({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3, logger: createLogger('silent'), pollIntervalMs: 50, misfireGraceMs: 1000,
      lease: { leaseMs: 3_600_000, graceMs: 3_600_000 },
      backoff: { baseMs: 10, factor: 1, maxMs: 10 },
      retention: { outboxDays: 7, inboxDays: 7, idempotencyKeyHours: 24 },
    });
    await scheduler.start();
    try {
      const state = async (id: string) => (await tdb.db.selectFrom('task_current').select(['state', 'failure_reason']).where('task_id', '=', id).executeTakeFirstOrThrow());
      await eventually(async () => (await state(overdue.taskId)).state === 'failed', { timeoutMs: 5000 });
      expect(await state(overdue.taskId)).toEqual({ state: 'failed', failure_reason: 'expired' });
      expect((await getTaskHistory(tdb.db, overdue.taskId)).map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskAttemptFailed', 'TaskFailed']);
      expect((await state(running.taskId)).state).toBe('running');
      expect((await state(free.taskId)).state).toBe('queued');
      expect(await scheduler.expireOverdue()).toBe(0); // nothing left to expire
    } finally {
      await scheduler.stop();
    }
  });
});

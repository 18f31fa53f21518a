import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TIERS } from '../../src/domain/index.js';
import { createLogger } from '../../src/infra/logger.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createScheduler, createScheduleService } from '../../src/schedules/index.js';
import { createTestDatabase, eventually, type TestDatabase } from '../helpers/database.js';

// Issue 15.9: a schedule run whose task submit is refused must not leave a ScheduleFired naming a
// task that does not exist; the log says the run was skipped, and why.

const names = topologyNames('t_');
const caller = { tenant: 'default', actor: 'test' };
let tdb: TestDatabase;

beforeAll(async () => {
  tdb = await createTestDatabase('refusedrun');
});
afterAll(async () => {
  await tdb.drop();
});

async function scheduleEvents(scheduleId: string) {
  const rows = await tdb.db.selectFrom('events').select(['type', 'data']).where('stream_id', '=', scheduleId).orderBy('stream_version').execute();
  return rows as { type: string; data: Record<string, unknown> }[];
}

describe('a refused schedule run', () => {
  it('records ScheduleSkipped with the refusal instead of a ScheduleFired without its task; other schedules still fire', async () => {
    const schedules = createScheduleService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 3 });
    // Fits the medium tier when it is created...
    const medium = await schedules.create({ cron: '* * * * * *', template: { type: 'noop', resources: { cpu: 0.75, memoryMb: 700 } } }, caller);
    const light = await schedules.create({ cron: '* * * * * *', template: { type: 'noop' } }, caller);
    // ...but this scheduler runs with the light tier only (TIERS changed since).
    const scheduler = createScheduler({
      db: tdb.db,
      names,
      tiers: [{ name: 'light', maxCpu: 0.5, maxMemoryMb: 512 }],
      defaultMaxAttempts: 3,
      logger: createLogger('silent'),
      pollIntervalMs: 50,
      misfireGraceMs: 60_000,
      lease: { leaseMs: 3_600_000, graceMs: 3_600_000 },
      backoff: { baseMs: 10, factor: 1, maxMs: 10 },
      retention: { outboxDays: 7, inboxDays: 7, idempotencyKeyHours: 24 },
    });
    // Wall-clock time must reach the first run (within a second).
    await eventually(
      async () => {
        await scheduler.tick();
        return (await scheduleEvents(medium.scheduleId)).length > 1;
      },
      { timeoutMs: 5000, intervalMs: 100 },
    );
    const events = await scheduleEvents(medium.scheduleId);
    expect(events.map((e) => e.type)).toEqual(['ScheduleCreated', 'ScheduleSkipped']);
    expect(events[1]?.data).toMatchObject({ from: medium.nextFireAt, reason: { kind: 'refused', error: { code: 'NO_TIER_FITS' } } });
    expect(String((events[1]?.data.reason as { error: { message: string } }).error.message)).toContain('cpu');
    // The run is over (the next one is due later), nothing names a task, no task was made.
    const row = await tdb.db.selectFrom('schedules').selectAll().where('schedule_id', '=', medium.scheduleId).executeTakeFirstOrThrow();
    expect(row).toMatchObject({ fired_count: 0, last_task_id: null, version: 2 });
    expect(row.next_fire_at?.getTime()).toBeGreaterThan(Date.parse(medium.nextFireAt as string));
    const tasks = await tdb.db.selectFrom('task_current').select(['task_id', 'type', 'spec']).execute();
    expect(tasks.every((t) => (t.spec as { resources: { cpu: number } }).resources.cpu < 0.75)).toBe(true);

    // A refused run spoils nothing else: the light schedule fires and makes its task.
    const fired = await eventually(
      async () => {
        await scheduler.tick();
        return (await scheduleEvents(light.scheduleId)).find((e) => e.type === 'ScheduleFired');
      },
      { timeoutMs: 5000, intervalMs: 100 },
    );
    expect(await tdb.db.selectFrom('task_current').select('state').where('task_id', '=', fired.data.taskId as string).executeTakeFirst()).toEqual({ state: 'queued' });
  });
});

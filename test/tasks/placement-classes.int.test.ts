import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TIERS, placementClass } from '../../src/domain/index.js';
import { topologyNames } from '../../src/outbox/index.js';
import { createTaskService, type Caller } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

// Each placement class (zone, labels, fallback delay) has broker queues nothing deletes, so the
// classes in use are capped: a submit naming a new one past PLACEMENT_MAX_CLASSES is refused.
let tdb: TestDatabase;
const caller: Caller = { tenant: 'acme', actor: 'test' };
const names = topologyNames('pc_');

beforeAll(async () => {
  tdb = await createTestDatabase('placement_classes');
});
afterAll(async () => {
  await tdb?.drop();
});

const countTasks = async () => Number((await tdb.db.selectFrom('task_current').select((eb) => eb.fn.countAll().as('n')).executeTakeFirst())?.n ?? 0);

describe('PLACEMENT_MAX_CLASSES', () => {
  it('records each new class; past the cap a new class is 422 PLACEMENT_CLASS_LIMIT and writes nothing, a known one still goes through', async () => {
    const tasks = createTaskService({ db: tdb.db, names, tiers: DEFAULT_TIERS, defaultMaxAttempts: 1, maxBatch: 100, maxPlacementClasses: 3 });
    await tasks.submit({ type: 'x', placement: { zone: 'site-a' } }, caller);
    await tasks.submit({ type: 'x', placement: { zone: 'site-a' } }, caller); // the same class
    await tasks.submit({ type: 'x', placement: { labels: { gpu: 'yes' } } }, caller);
    await tasks.submit({ type: 'x', placement: { zone: 'site-a' }, fallbackAfterMs: 1200 }, caller); // site-a~fb1500
    await tasks.submit({ type: 'x' }, caller); // no placement: no class
    const classes = await tdb.db.selectFrom('placement_classes').select(['class', 'first_tenant', 'fallback_after_ms']).orderBy('class').execute();
    expect(classes.map((c) => c.class).sort()).toEqual([placementClass({ labels: { gpu: 'yes' } }), 'site-a', 'site-a~fb1500'].sort());
    expect(classes.find((c) => c.class === 'site-a~fb1500')).toMatchObject({ first_tenant: 'acme', fallback_after_ms: 1500 });

    const before = await countTasks();
    await expect(tasks.submit({ type: 'x', placement: { zone: 'site-b' } }, caller)).rejects.toMatchObject({ status: 422, code: 'PLACEMENT_CLASS_LIMIT', details: { classes: ['site-b'], maxClasses: 3 } });
    // A batch naming a new class is refused whole.
    await expect(tasks.submitBatch([{ type: 'x', placement: { zone: 'site-a' } }, { type: 'x', placement: { labels: { cam: 'yes' } } }], caller)).rejects.toMatchObject({ code: 'PLACEMENT_CLASS_LIMIT' });
    expect(await countTasks()).toBe(before);
    expect(await tdb.db.selectFrom('placement_classes').select('class').execute()).toHaveLength(3);
    // Known classes are not limited.
    await tasks.submitBatch([{ type: 'x', placement: { zone: 'site-a' } }, { type: 'x', placement: { labels: { gpu: 'yes' } } }], caller);
    expect(await countTasks()).toBe(before + 2);
  });
});

import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { topologyNames } from '../../src/outbox/index.js';
import { PROJECTION_VERSIONS, rebuildProjections, staleProjections, type RebuildReport } from '../../src/projections/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { OUTCOMES, seedTasks, taskSpec } from '../helpers/seed-tasks.js';
import { appendToStream } from '../../src/store/index.js';
import { randomUUID } from 'node:crypto';

const names = topologyNames('rb_');
let tdb: TestDatabase;

beforeAll(async () => {
  tdb = await createTestDatabase('rebuild');
});
afterAll(async () => {
  await tdb?.drop();
});

function equal(report: RebuildReport) {
  return report.comparisons?.map((c) => ({ projection: c.projection, liveOnly: c.liveOnly, rebuiltOnly: c.rebuiltOnly, samples: c.samples }));
}

const NO_DIFFERENCES = [
  { projection: 'task_current', liveOnly: 0, rebuiltOnly: 0, samples: [] },
  { projection: 'task_history', liveOnly: 0, rebuiltOnly: 0, samples: [] },
];

describe('projection rebuild', () => {
  it('rebuilds 10,000 tasks with mixed outcomes into tables equal to the live ones, row for row', async () => {
    const seeded = await seedTasks(tdb.db, names, 10_000);
    for (const o of OUTCOMES) expect(seeded.get(o)?.length).toBeGreaterThan(1000);
    const counts = await sql<{ state: string; n: number }>`SELECT state, count(*)::int AS n FROM task_current GROUP BY state ORDER BY state`.execute(tdb.db);
    expect(Object.fromEntries(counts.rows.map((r) => [r.state, r.n]))).toEqual({ cancelled: 1250, failed: 2500, queued: 3750, succeeded: 2500 });

    const dry = await rebuildProjections(tdb, { dryRun: true });
    expect(dry.swapped).toBe(false);
    expect(equal(dry)).toEqual(NO_DIFFERENCES);
    expect(dry.comparisons?.[0]?.rebuiltRows).toBe(10_000);

    // A rebuild (with --verify) replays and compares the stored table; the dry run above checked the view too.
    const report = await rebuildProjections(tdb, { verify: true, batchSize: 2000 });
    expect(report.swapped).toBe(true);
    expect(equal(report)).toEqual([NO_DIFFERENCES[0]]);
    const after = await sql<{ n: number; h: number }>`SELECT (SELECT count(*)::int FROM task_current) AS n, (SELECT count(*)::int FROM task_history) AS h`.execute(tdb.db);
    expect(after.rows[0]?.n).toBe(10_000);
    expect(after.rows[0]?.h).toBe(report.events);
    // The swapped-in tables carry the live tables' index names.
    const indexes = await sql<{ indexname: string }>`SELECT indexname FROM pg_indexes WHERE tablename = 'task_current' ORDER BY 1`.execute(tdb.db);
    expect(indexes.rows.map((r) => r.indexname)).toEqual(['task_current_deadline_idx', 'task_current_list_idx', 'task_current_pkey', 'task_current_running_idx', 'task_current_seq_key', 'task_current_state_idx']);
  });

  it('finds a corrupted projection row and names the column', async () => {
    const { rows } = await sql<{ task_id: string }>`SELECT task_id FROM task_current WHERE state = 'succeeded' LIMIT 1`.execute(tdb.db);
    const id = rows[0]?.task_id as string;
    await sql`UPDATE task_current SET state = 'running' WHERE task_id = ${id}::uuid`.execute(tdb.db);
    const report = await rebuildProjections(tdb, { verify: true });
    expect(report.swapped).toBe(false);
    const current = report.comparisons?.find((c) => c.projection === 'task_current');
    expect(current?.liveOnly).toBe(1);
    expect(current?.samples).toEqual([{ key: id, columns: { state: ['running', 'succeeded'] } }]);
    // Without --verify the rebuild repairs it: the log is the truth.
    await rebuildProjections(tdb, {});
    const fixed = await sql<{ state: string }>`SELECT state FROM task_current WHERE task_id = ${id}::uuid`.execute(tdb.db);
    expect(fixed.rows[0]?.state).toBe('succeeded');
  });

  it('refuses a second rebuild while one runs, and rebuilds only what is asked', async () => {
    await expect(rebuildProjections(tdb, { projections: ['node_metrics' as never] })).rejects.toThrow(/unknown projection node_metrics/);
    const first = rebuildProjections(tdb, { projections: ['task_current'], batchSize: 500 });
    await new Promise((r) => setTimeout(r, 50));
    await expect(rebuildProjections(tdb, {})).rejects.toMatchObject({ code: 'REBUILD_RUNNING' });
    expect((await first).projections).toEqual(['task_current']);
  });

  it('task_history is a view of the log: a rebuild has nothing to write for it, a verify compares it with the fold', async () => {
    const rebuilt = await rebuildProjections(tdb, { projections: ['task_history'] });
    expect(rebuilt).toMatchObject({ projections: [], events: 0 });
    const verified = await rebuildProjections(tdb, { projections: ['task_history'], dryRun: true });
    expect(verified.projections).toEqual(['task_history']);
    expect(equal(verified)).toEqual([NO_DIFFERENCES[1]]);
    const { rows } = await sql<{ relkind: string }>`SELECT relkind::text FROM pg_class WHERE relname = 'task_history'`.execute(tdb.db);
    expect(rows).toEqual([{ relkind: 'v' }]);
  });

  it('replays hand-written v1 events through their upcasters', async () => {
    const id = '0b5c9a1e-0000-4000-8000-000000000001';
    const at = (s: number) => new Date(Date.UTC(2025, 0, 1, 0, 0, s)).toISOString();
    // v1 shapes: resources.memory (no memoryMb, no deadline/retry/idempotencyKey); error as a string.
    const v1Task = { taskId: id, tenant: 'default', type: 'legacy', payload: null, priority: 'low', resources: { cpu: 0.2, memory: 128 }, tier: 'light', maxAttempts: 1, timeoutMs: null, notBefore: null };
    const rows: [number, string, number, unknown][] = [
      [1, 'TaskSubmitted', 1, { task: v1Task, at: at(0) }],
      [2, 'TaskQueued', 1, { attempt: 1, tier: 'light', priority: 'low', availableAt: at(0), at: at(0) }],
      [3, 'TaskStarted', 1, { attempt: 1, nodeId: 'old-node', at: at(1) }],
      [4, 'TaskAttemptFailed', 1, { attempt: 1, nodeId: 'old-node', error: 'disk full', retryable: false, at: at(2) }],
      [5, 'TaskFailed', 1, { attempt: 1, reason: 'non-retryable', error: null, at: at(2) }],
    ];
    for (const [version, type, schemaVersion, data] of rows) {
      await sql`INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, schema_version, data)
        VALUES (${id}, 'task', ${version}, gen_random_uuid(), ${type}, ${schemaVersion}, ${JSON.stringify(data)}::jsonb)`.execute(tdb.db);
    }
    const report = await rebuildProjections(tdb, {});
    expect(report.swapped).toBe(true);
    const { rows: current } = await sql<{ state: string; spec: { resources: unknown; deadline: unknown }; last_error: unknown; failure_reason: string }>`
      SELECT state, spec, last_error, failure_reason FROM task_current WHERE task_id = ${id}::uuid`.execute(tdb.db);
    expect(current[0]?.state).toBe('failed');
    expect(current[0]?.spec.resources).toEqual({ cpu: 0.2, memoryMb: 128 });
    expect(current[0]?.spec.deadline).toBeNull();
    expect(current[0]?.last_error).toEqual({ message: 'disk full', code: 'non_retryable', retryable: false });
    const { rows: history } = await sql<{ type: string; error: unknown }>`SELECT type, error FROM task_history WHERE task_id = ${id}::uuid ORDER BY version`.execute(tdb.db);
    expect(history.map((h) => h.type)).toEqual(['TaskSubmitted', 'TaskQueued', 'TaskStarted', 'TaskAttemptFailed', 'TaskFailed']);
    expect(history[3]?.error).toEqual({ message: 'disk full', code: 'non_retryable', retryable: false });
  });

  it('applies a stream by version when an older transaction commits its next version after a younger one wrote the first', async () => {
    // Its own database: batches of one over the 10,000 tasks above would take minutes.
    const own = await createTestDatabase('rbhold');
    const task = taskSpec();
    const at = new Date().toISOString();
    const older = await own.pool.connect();
    try {
      await older.query('BEGIN');
      await older.query(`INSERT INTO inbox (message_id, source) VALUES ($1, 'test')`, [task.taskId]); // takes its xid now
      // A younger transaction writes version 1 and commits ...
      await appendToStream(own.db, { id: task.taskId, type: 'task', expectedVersion: 0 }, [
        { eventId: randomUUID(), type: 'TaskSubmitted', data: { task, at }, metadata: {} },
      ]);
      // ... then the older one writes version 2: in (xid, position) order version 2 comes first.
      await older.query(
        `INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, schema_version, data) VALUES ($1, 'task', 2, $2, 'TaskQueued', 1, $3)`,
        [task.taskId, randomUUID(), JSON.stringify({ attempt: 1, tier: 'light', priority: 'normal', availableAt: at, at })],
      );
      await older.query('COMMIT');
    } finally {
      older.release();
    }
    // Batches of one: version 2 is read (and held) a batch before version 1.
    try {
      const report = await rebuildProjections(own, { batchSize: 1 });
      expect(report.swapped).toBe(true);
      const { rows } = await sql<{ state: string; version: number }>`SELECT state, version FROM task_current WHERE task_id = ${task.taskId}::uuid`.execute(own.db);
      expect(rows[0]).toEqual({ state: 'queued', version: 2 });
      const history = await sql<{ type: string }>`SELECT type FROM task_history WHERE task_id = ${task.taskId}::uuid ORDER BY version`.execute(own.db);
      expect(history.rows.map((r) => r.type)).toEqual(['TaskSubmitted', 'TaskQueued']);
    } finally {
      await own.drop();
    }
  });

  it('marks projections stale when the code has a newer version', async () => {
    expect(await staleProjections(tdb.db)).toEqual([]);
    await sql`UPDATE projection_versions SET version = 0 WHERE projection = 'task_current'`.execute(tdb.db);
    expect(await staleProjections(tdb.db)).toEqual([{ projection: 'task_current', stored: 0, code: PROJECTION_VERSIONS.task_current }]);
    await rebuildProjections(tdb, { projections: ['task_current'] });
    expect(await staleProjections(tdb.db)).toEqual([]);
  });
});

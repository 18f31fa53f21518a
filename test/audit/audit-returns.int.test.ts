import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskCommand } from '../../src/domain/index.js';
import { topologyNames } from '../../src/outbox/index.js';
import { executeTaskCommands } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { taskSpec } from '../helpers/seed-tasks.js';

// The audit views (migration 1700000000009) on TaskReturned: an attempt given back by a
// stopping node, or dead-lettered before it started, is queued again, not running or ended.

const names = topologyNames('unused_');
let tdb: TestDatabase;
const back = taskSpec({ type: 'returned-then-done' });
const waiting = taskSpec({ type: 'returned-waiting' });
const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();

async function run(taskId: string, ...commands: TaskCommand[]) {
  for (const command of commands) {
    await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId, command, metadata: { actor: 'test' } }], names));
  }
}

beforeAll(async () => {
  tdb = await createTestDatabase('auditreturns');
  await run(
    back.taskId,
    { type: 'SubmitTask', data: { task: back, now: t(0) } },
    { type: 'StartTask', data: { attempt: 1, nodeId: 'edge-1', now: t(2), startedAt: t(1) } },
    { type: 'ReturnTask', data: { attempt: 1, nodeId: 'edge-1', reason: 'node-shutdown', returns: 0, now: t(5) } },
    { type: 'DeadLetterTask', data: { attempt: 1, reason: 'delivery-limit', queue: 'tasks.light.normal', now: t(8), returns: 0 } },
    { type: 'StartTask', data: { attempt: 1, nodeId: 'edge-2', now: t(10), startedAt: t(10) } },
    { type: 'SucceedTask', data: { attempt: 1, nodeId: 'edge-2', output: null, durationMs: 3, startedAt: t(10), now: t(14), reportedAt: t(13) } },
  );
  await run(
    waiting.taskId,
    { type: 'SubmitTask', data: { task: waiting, now: t(20) } },
    { type: 'StartTask', data: { attempt: 1, nodeId: 'edge-1', now: t(21) } },
    { type: 'ReturnTask', data: { attempt: 1, nodeId: 'edge-1', reason: 'node-shutdown', returns: 0, now: t(25) } },
  );
});
afterAll(async () => {
  await tdb?.drop();
});

const rows = async <T>(query: ReturnType<typeof sql<T>>) => (await query.execute(tdb.db)).rows;

describe('audit views on TaskReturned', () => {
  it('the timeline shows the task queued again after each return, with its reason and node', async () => {
    const timeline = await rows(sql<{ event_type: string; state: string; attempt: number; node_id: string | null; reason: string | null }>`
      SELECT event_type, state, attempt, node_id, reason FROM audit.task_timeline WHERE task_id = ${back.taskId} ORDER BY version`);
    expect(timeline).toEqual([
      { event_type: 'TaskSubmitted', state: 'queued', attempt: 1, node_id: null, reason: null },
      { event_type: 'TaskStarted', state: 'running', attempt: 1, node_id: 'edge-1', reason: null },
      { event_type: 'TaskReturned', state: 'queued', attempt: 1, node_id: 'edge-1', reason: 'node-shutdown' },
      { event_type: 'TaskReturned', state: 'queued', attempt: 1, node_id: null, reason: 'delivery-limit' },
      { event_type: 'TaskStarted', state: 'running', attempt: 1, node_id: 'edge-2', reason: null },
      { event_type: 'TaskSucceeded', state: 'succeeded', attempt: 1, node_id: 'edge-2', reason: null },
    ]);
  });

  it('an attempt returned since its last start is waiting, and counts its returns', async () => {
    const attempts = await rows(sql<{ task_id: string; attempt: number; outcome: string; starts: number; returns: number }>`
      SELECT task_id, attempt, outcome, starts, returns FROM audit.task_attempts WHERE task_id IN (${back.taskId}, ${waiting.taskId}) ORDER BY task_id = ${waiting.taskId}`);
    expect(attempts).toEqual([
      { task_id: back.taskId, attempt: 1, outcome: 'succeeded', starts: 2, returns: 2 },
      { task_id: waiting.taskId, attempt: 1, outcome: 'waiting', starts: 1, returns: 1 },
    ]);
    const tasks = await rows(sql<{ task_id: string; state: string; returns: number }>`
      SELECT task_id, state, returns FROM audit.tasks ORDER BY task_id = ${waiting.taskId}`);
    expect(tasks).toEqual([
      { task_id: back.taskId, state: 'succeeded', returns: 2 },
      { task_id: waiting.taskId, state: 'queued', returns: 1 },
    ]);
    const open = await rows(sql<{ task_id: string; state: string }>`SELECT task_id, state FROM audit.open_tasks`);
    expect(open).toEqual([{ task_id: waiting.taskId, state: 'queued' }]);
  });

  it('a run its node gave back has outcome returned in node_activity', async () => {
    const activity = await rows(sql<{ node_id: string; task_id: string; outcome: string; finished_at: Date | null }>`
      SELECT node_id, task_id, outcome, finished_at FROM audit.node_activity ORDER BY start_position`);
    expect(activity).toEqual([
      { node_id: 'edge-1', task_id: back.taskId, outcome: 'returned', finished_at: new Date(t(5)) },
      { node_id: 'edge-2', task_id: back.taskId, outcome: 'succeeded', finished_at: new Date(t(14)) },
      { node_id: 'edge-1', task_id: waiting.taskId, outcome: 'returned', finished_at: new Date(t(25)) },
    ]);
  });

  it('the read models agree with the views: task_history has the returns with reason and node', async () => {
    const history = await rows(sql<{ type: string; state: string; node_id: string | null; reason: string | null }>`
      SELECT type, state, node_id, reason FROM task_history WHERE task_id = ${back.taskId}::uuid AND type = 'TaskReturned' ORDER BY version`);
    expect(history).toEqual([
      { type: 'TaskReturned', state: 'queued', node_id: 'edge-1', reason: 'node-shutdown' },
      { type: 'TaskReturned', state: 'queued', node_id: null, reason: 'delivery-limit' },
    ]);
  });
});

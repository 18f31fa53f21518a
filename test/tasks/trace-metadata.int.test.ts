import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { topologyNames } from '../../src/outbox/index.js';
import { executeTaskCommands, type CommandItem } from '../../src/tasks/index.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { taskSpec } from '../helpers/seed-tasks.js';

const names = topologyNames('t_');
const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const TRACEPARENT = `00-${TRACE}-00f067aa0ba902b7-01`;
let tdb: TestDatabase;

beforeAll(async () => {
  tdb = await createTestDatabase('tracemeta');
});
afterAll(async () => {
  await tdb?.drop();
});

async function eventsOf(taskId: string) {
  return tdb.db
    .selectFrom('events')
    .select(['type', 'metadata'])
    .where('stream_id', '=', taskId)
    .orderBy('stream_version')
    .execute() as Promise<{ type: string; metadata: { traceId?: string; traceparent?: string } }[]>;
}

async function outboxHeaders(taskId: string) {
  const rows = await tdb.db.selectFrom('outbox').select(['headers']).where('stream_id', '=', taskId).orderBy('id').execute();
  return rows.map((r) => r.headers as Record<string, unknown>);
}

function submit(metadata: CommandItem['metadata']) {
  const task = taskSpec();
  const item: CommandItem = { taskId: task.taskId, command: { type: 'SubmitTask', data: { task, now: new Date().toISOString() } }, metadata };
  return { task, run: () => tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [item], names, new Set([task.taskId]))) };
}

describe('the trace of a task write', () => {
  it("a submit's events and its dispatch carry the request's trace; the outbox row has it as a traceparent header", async () => {
    const { task, run } = submit({ tenant: 'acme', actor: 'test', traceId: TRACE, traceparent: TRACEPARENT });
    await run();
    const events = await eventsOf(task.taskId);
    expect(events.map((e) => e.type)).toEqual(['TaskSubmitted']);
    for (const e of events) expect(e.metadata).toMatchObject({ traceId: TRACE, traceparent: TRACEPARENT });
    expect(await outboxHeaders(task.taskId)).toEqual([{ 'x-task-id': task.taskId, 'x-attempt': 1, traceparent: TRACEPARENT }]);
  });

  it('a command without a trace (the scheduler, an old node) continues the trace of the task’s submit', async () => {
    const { task, run } = submit({ tenant: 'acme', actor: 'test', traceId: TRACE, traceparent: TRACEPARENT });
    await run();
    const now = new Date().toISOString();
    await tdb.db.transaction().execute((trx) => executeTaskCommands(trx, [{ taskId: task.taskId, command: { type: 'StartTask', data: { attempt: 1, nodeId: 'n1', startedAt: now, now } }, metadata: { actor: 'node:n1' } }], names));
    await tdb.db
      .transaction()
      .execute((trx) => executeTaskCommands(trx, [{ taskId: task.taskId, command: { type: 'CancelTask', data: { actor: 'scheduler', reason: 'test', now } }, metadata: { actor: 'scheduler' } }], names));
    const events = await eventsOf(task.taskId);
    expect(events.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskCancelled']);
    for (const e of events) expect(e.metadata.traceId).toBe(TRACE);
    // A new span id under the same trace, not the submit's own context.
    expect(events[1]?.metadata.traceparent).toMatch(new RegExp(`^00-${TRACE}-[0-9a-f]{16}-01$`));
    expect(events[1]?.metadata.traceparent).not.toBe(TRACEPARENT);
    // The cancel broadcast carries it too (the cancel withdrew the unpublished dispatch).
    expect(await outboxHeaders(task.taskId)).toEqual([{ traceparent: events[2]?.metadata.traceparent }]);
  });

  it('a new task without a trace (a schedule firing) starts its own, random one', async () => {
    const first = submit({ tenant: 'acme', actor: 'schedule:s1' });
    const second = submit({ tenant: 'acme', actor: 'schedule:s1' });
    await first.run();
    await second.run();
    const a = await eventsOf(first.task.taskId);
    const b = await eventsOf(second.task.taskId);
    expect(a[0]?.metadata.traceId).toMatch(/^[0-9a-f]{32}$/);
    // Its dispatch (written with the TaskSubmitted) carries the same trace.
    expect((await outboxHeaders(first.task.taskId))[0]?.traceparent).toContain(a[0]!.metadata.traceId as string);
    expect(b[0]?.metadata.traceId).not.toBe(a[0]?.metadata.traceId);
  });
});

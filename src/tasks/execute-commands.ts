import { randomUUID } from 'node:crypto';
import { decide, evolve, initialTaskState, FogschedError, type TaskCommand, type TaskEvent, type TaskState } from '../domain/index.js';
import { appendEvents, type EventMetadata, type Executor, type NewEvent } from '../store/index.js';
import { insertTaskHistory, loadTaskStates, upsertTaskCurrent, type HistoryRow } from '../projections/index.js';
import { outboxRowFor, insertOutboxRows, type OutboxRow, type TopologyNames } from '../outbox/index.js';

export interface CommandItem {
  readonly taskId: string;
  readonly command: TaskCommand;
  readonly metadata: EventMetadata;
}

export interface CommandOutcome {
  /** Final state per task touched (also the tasks whose command was a no-op). */
  readonly states: Map<string, TaskState>;
  /** Items whose command was refused by the domain, by input index. */
  readonly refused: Map<number, FogschedError>;
  readonly eventCount: number;
}

/**
 * Runs task commands in the caller's transaction: locks and loads each task's
 * state (from its task_current snapshot), decides in input order, then appends
 * every event, updates task_current and task_history, and writes dispatch rows
 * to the outbox — four statements for the whole batch. A refused command
 * (typed domain error) is reported and changes nothing; anything else throws.
 *
 * `newTasks`: ids known to have no stream yet (a submit), so no load is needed.
 */
export async function executeTaskCommands(
  trx: Executor,
  items: readonly CommandItem[],
  names: TopologyNames,
  newTasks?: ReadonlySet<string>,
): Promise<CommandOutcome> {
  const toLoad = [...new Set(items.map((i) => i.taskId))].filter((id) => !newTasks?.has(id));
  toLoad.sort(); // a fixed lock order: two batches touching the same tasks cannot deadlock
  const states = await loadTaskStates(trx, toLoad, { forUpdate: true });
  const refused = new Map<number, FogschedError>();
  const newEvents: NewEvent[] = [];
  const pending: { state: TaskState; event: TaskEvent; metadata: EventMetadata; eventId: string }[] = [];

  items.forEach((item, index) => {
    const before = states.get(item.taskId) ?? initialTaskState(item.taskId);
    let events: TaskEvent[];
    try {
      events = decide(before, item.command);
    } catch (error) {
      if (error instanceof FogschedError) {
        refused.set(index, error);
        return;
      }
      throw error;
    }
    let state = before;
    for (const event of events) {
      state = evolve(state, event);
      const eventId = randomUUID();
      newEvents.push({
        streamId: item.taskId,
        streamType: 'task',
        streamVersion: state.version,
        eventId,
        type: event.type,
        data: event.data,
        metadata: item.metadata,
      });
      pending.push({ state, event, metadata: item.metadata, eventId });
    }
    states.set(item.taskId, state);
  });

  if (newEvents.length > 0) {
    const positions = await appendEvents(trx, newEvents);
    const history: HistoryRow[] = pending.map((p, i) => ({ position: positions[i] ?? 0, state: p.state, event: p.event, metadata: p.metadata }));
    const outbox: OutboxRow[] = pending.flatMap((p) => outboxRowFor(p.state, p.event, p.eventId, names) ?? []);
    const touched = new Set(pending.map((p) => p.state.taskId));
    const seqs = new Map(pending.flatMap((p, i) => (p.event.type === 'TaskSubmitted' ? [[p.state.taskId, positions[i] ?? 0] as const] : [])));
    await upsertTaskCurrent(trx, [...touched].map((id) => states.get(id) as TaskState), seqs);
    await insertTaskHistory(trx, history);
    await insertOutboxRows(trx, outbox);
  }
  return { states, refused, eventCount: newEvents.length };
}

import { sql } from 'kysely';
import { dispatchOf, FALLBACK_AFTER_HEADER, PLACEMENT_CLASS_HEADER, PLACEMENT_HEADER, placementClass, placementRoutingKey, RETURNS_HEADER, taskRoutingKey, type SystemMessage, type TaskEvent, type TaskMessage, type TaskState } from '../domain/index.js';
import { jsonRecordset, type Column } from '../store/index.js';
import type { TopologyNames } from '../broker/index.js';

export interface OutboxRow {
  readonly messageId: string;
  readonly streamId: string;
  readonly exchange: string;
  readonly routingKey: string;
  readonly headers: Record<string, unknown>;
  readonly body: unknown;
  readonly availableAt: string;
}

/**
 * The message an event causes, if any: a TaskQueued, TaskRetryScheduled,
 * TaskRequeued or TaskReturned puts the attempt on its task queue at `availableAt` (its placement
 * class's queue when it has a placement; a TaskPlacementFallback on the tier's general queue)
 * (delays and backoff are just future rows, so no timer lives in memory); a
 * TaskCancelled is broadcast to the fog nodes. A TaskReturned's message carries
 * RETURNS_HEADER, so a dead letter of it says how often the attempt came back.
 */
export function outboxRowFor(state: TaskState, event: TaskEvent, eventId: string, names: TopologyNames): OutboxRow | null {
  const spec = state.spec;
  if (!spec) return null;
  if (event.type === 'TaskCancelled') {
    // Every fog node hears it on the `system` fanout: a queued copy is skipped, a running one aborted.
    const body: SystemMessage = { kind: 'cancel', taskId: spec.taskId, at: event.data.at };
    return { messageId: eventId, streamId: spec.taskId, exchange: names.system, routingKey: '', headers: {}, body, availableAt: event.data.at };
  }
  const dispatch = dispatchOf(event);
  if (!dispatch) return null;
  const body: TaskMessage = {
    taskId: spec.taskId,
    attempt: dispatch.attempt,
    type: spec.type,
    payload: spec.payload,
    tenant: spec.tenant,
    tier: spec.tier,
    priority: spec.priority,
    timeoutMs: spec.timeoutMs,
    deadline: spec.deadline,
    availableAt: dispatch.availableAt,
    memoryMb: spec.resources.memoryMb,
    maxAttempts: spec.maxAttempts,
  };
  // A placement dispatch goes to its class's queue (with a fallback delay, the class's queues of that
  // delay, whose queue TTL it is); the fallback (TaskPlacementFallback) goes to the tier's general queue.
  const fallback = event.type === 'TaskPlacementFallback';
  const fallbackAfterMs = typeof spec.fallbackAfterMs === 'number' && spec.fallbackAfterMs > 0 ? spec.fallbackAfterMs : null;
  const cls = fallback ? null : placementClass(spec.placement, fallbackAfterMs);
  return {
    messageId: eventId,
    streamId: spec.taskId,
    exchange: names.tasks,
    routingKey: cls === null ? taskRoutingKey(spec.tier, spec.priority) : placementRoutingKey(cls, spec.tier, spec.priority),
    headers: {
      'x-task-id': spec.taskId,
      'x-attempt': dispatch.attempt,
      ...(event.type === 'TaskReturned' ? { [RETURNS_HEADER]: event.data.returns } : {}),
      ...(cls === null ? {} : { [PLACEMENT_CLASS_HEADER]: cls, [PLACEMENT_HEADER]: JSON.stringify(spec.placement) }),
      ...(cls === null || fallbackAfterMs === null ? {} : { [FALLBACK_AFTER_HEADER]: fallbackAfterMs }),
    },
    body,
    availableAt: dispatch.availableAt,
  };
}

const OUTBOX_COLUMNS: readonly Column<OutboxRow>[] = [
  { name: 'message_id', type: 'uuid', value: (r) => r.messageId },
  { name: 'stream_id', type: 'text', value: (r) => r.streamId },
  { name: 'exchange', type: 'text', value: (r) => r.exchange },
  { name: 'routing_key', type: 'text', value: (r) => r.routingKey },
  { name: 'headers', type: 'jsonb', value: (r) => JSON.stringify(r.headers) },
  { name: 'body', type: 'jsonb', value: (r) => JSON.stringify(r.body) },
  { name: 'available_at', type: 'timestamptz', value: (r) => r.availableAt },
];

/** The INSERT of outbox rows, as a CTE of the task write. Leave it out rather than insert zero rows: it NOTIFYs the relay. */
export function insertOutbox(rows: readonly OutboxRow[]) {
  return sql`
    INSERT INTO outbox (message_id, stream_id, exchange, routing_key, headers, body, available_at)
    SELECT * FROM ${jsonRecordset(OUTBOX_COLUMNS, rows)}`;
}

/**
 * The DELETE of the tasks' dispatches not yet published (a cancel withdraws them), as a CTE of
 * the task write: a delayed or retrying task that was cancelled is then never sent, even to a
 * fog node that missed the cancel broadcast (the node's own check stays as a second guard). A
 * row the relay has already sent keeps its published_at and is left alone; one it is sending
 * right now goes out, and the cancel broadcast, a later row, follows it.
 */
export function withdrawDispatches(taskIds: readonly string[], names: TopologyNames) {
  return sql`
    DELETE FROM outbox WHERE stream_id = ANY(${taskIds}::text[]) AND exchange = ${names.tasks} AND published_at IS NULL RETURNING id`;
}

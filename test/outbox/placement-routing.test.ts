import { describe, expect, it } from 'vitest';
import { FALLBACK_AFTER_HEADER, PLACEMENT_CLASS_HEADER, PLACEMENT_HEADER, placementClass, type TaskEvent, type TaskSpec, type TaskState } from '../../src/domain/index.js';
import { outboxRowFor, topologyNames } from '../../src/outbox/index.js';

const names = topologyNames('p_');
const at = '2026-11-27T10:00:00.000Z';
const queued: TaskEvent = { type: 'TaskQueued', data: { attempt: 1, tier: 'light', priority: 'high', availableAt: at, at } };

function stateOf(over: Partial<TaskSpec>): TaskState {
  const spec: TaskSpec = {
    taskId: '00000000-0000-4000-8000-0000000000a1',
    tenant: 'default',
    type: 'echo',
    payload: null,
    priority: 'high',
    resources: { cpu: 0.1, memoryMb: 64 },
    tier: 'light',
    maxAttempts: 3,
    timeoutMs: null,
    notBefore: null,
    deadline: null,
    idempotencyKey: null,
    ...over,
  };
  return { spec } as unknown as TaskState;
}

describe('outboxRowFor: placement routing', () => {
  it('a task without a placement goes to its tier queue, with no placement headers', () => {
    const row = outboxRowFor(stateOf({}), queued, 'e1', names);
    expect(row?.routingKey).toBe('light.high');
    expect(row?.headers).toEqual({ 'x-task-id': '00000000-0000-4000-8000-0000000000a1', 'x-attempt': 1 });
    expect(outboxRowFor(stateOf({ placement: null, fallbackAfterMs: null }), queued, 'e1', names)?.routingKey).toBe('light.high');
  });

  it('a zone placement goes to <zone>.<tier>.<priority> on the tasks exchange, carrying its class and placement', () => {
    const row = outboxRowFor(stateOf({ placement: { zone: 'site-a' } }), queued, 'e1', names);
    expect(row).toMatchObject({ exchange: names.tasks, routingKey: 'site-a.light.high' });
    expect(row?.headers).toMatchObject({ [PLACEMENT_CLASS_HEADER]: 'site-a', [PLACEMENT_HEADER]: '{"zone":"site-a"}' });
    expect(row?.headers[FALLBACK_AFTER_HEADER]).toBeUndefined();
  });

  it('a label placement goes to its class; with fallbackAfterMs, to its class of that delay (queues whose TTL it is)', () => {
    const placement = { labels: { camera: 'yes' } };
    expect(outboxRowFor(stateOf({ placement }), queued, 'e1', names)?.routingKey).toBe(`${placementClass(placement)}.light.high`);
    const row = outboxRowFor(stateOf({ placement, fallbackAfterMs: 30_000 }), queued, 'e1', names);
    expect(row?.routingKey).toBe(`${placementClass(placement)}~fb30000.light.high`);
    expect(row?.headers).toMatchObject({ [FALLBACK_AFTER_HEADER]: 30_000 });
  });

  it('every dispatch of a placed task (a retry too) goes to its class', () => {
    const retry: TaskEvent = { type: 'TaskRetryScheduled', data: { attempt: 2, delayMs: 1000, availableAt: at, at } };
    expect(outboxRowFor(stateOf({ placement: { zone: 'site-b' } }), retry, 'e2', names)?.routingKey).toBe('site-b.light.high');
  });
});

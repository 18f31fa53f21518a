import { describe, expect, it } from 'vitest';
import {
  decide,
  dispatchOf,
  evolve,
  foldTask,
  type SubmitDependencies,
  type TaskCommand,
  type TaskEvent,
  type TaskSpec,
  type TaskState,
} from '../../src/domain/index.js';

// given(events).when(command).then(events), as in task.test.ts, for dependencies and placement.

const TASK_ID = '00000000-0000-4000-8000-000000000001';
const DEP_A = '00000000-0000-4000-8000-00000000000a';
const DEP_B = '00000000-0000-4000-8000-00000000000b';
const T0 = '2025-01-01T00:00:00.000Z';
const T1 = '2025-01-01T00:00:01.000Z';
const T2 = '2025-01-01T00:00:02.000Z';
const LATER = '2025-01-01T01:00:00.000Z';

function spec(overrides: Partial<TaskSpec> = {}): TaskSpec {
  return {
    taskId: TASK_ID,
    tenant: 'acme',
    type: 'echo',
    payload: null,
    priority: 'normal',
    resources: { cpu: 0.1, memoryMb: 64 },
    tier: 'light',
    maxAttempts: 3,
    timeoutMs: null,
    notBefore: null,
    deadline: null,
    idempotencyKey: null,
    dependsOn: [DEP_A, DEP_B],
    onDependencyFailure: 'cancel',
    ...overrides,
  };
}

const none: SubmitDependencies = { pending: 0, succeeded: 0, failed: 0, cancelled: 0, firstFailed: null, firstFailedState: null };
const submit = (task: TaskSpec, dependencies?: Partial<SubmitDependencies>, now = T0): TaskCommand => ({
  type: 'SubmitTask',
  data: { task, now, ...(dependencies ? { dependencies: { ...none, ...dependencies } } : {}) },
});
const resolve = (resolved: { id: string; state: 'succeeded' | 'failed' | 'cancelled' }[], remaining: number, outcomes = { succeeded: 2, failed: 0, cancelled: 0 }, now = T1): TaskCommand => ({
  type: 'ResolveDependencies',
  data: { resolved, remaining, outcomes, now },
});

function run(events: readonly TaskEvent[], command: TaskCommand): { events: TaskEvent[]; after: TaskState } {
  const before = foldTask(TASK_ID, events);
  const produced = decide(before, command);
  return { events: produced, after: produced.reduce(evolve, before) };
}

function waitingOn(task: TaskSpec, pending = 2): TaskEvent[] {
  return decide(foldTask(TASK_ID, []), submit(task, { pending }));
}

describe('SubmitTask with dependencies', () => {
  it('unfinished dependencies: TaskSubmitted then TaskWaiting; the task is waiting, attempt 0, no dispatch', () => {
    const { events, after } = run([], submit(spec(), { pending: 2 }));
    expect(events.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskWaiting']);
    expect(events[1]).toEqual({ type: 'TaskWaiting', data: { pending: 2, at: T0 } });
    expect(after).toMatchObject({ status: 'waiting', attempt: 0, version: 2 });
    expect(events.map(dispatchOf)).toEqual([null, null]);
  });

  it('all ended and succeeded at submit: released (dependency null) and queued at once, respecting notBefore', () => {
    const { events, after } = run([], submit(spec({ notBefore: LATER }), { succeeded: 2 }));
    expect(events).toEqual([
      { type: 'TaskSubmitted', data: { task: spec({ notBefore: LATER }), at: T0 } },
      { type: 'TaskReleased', data: { dependency: null, outcomes: { succeeded: 2, failed: 0, cancelled: 0 }, at: T0 } },
      { type: 'TaskQueued', data: { attempt: 1, tier: 'light', priority: 'normal', availableAt: LATER, at: T0 } },
    ]);
    expect(after.status).toBe('scheduled');
  });

  it('a dependency failed before the submit: policy cancel cancels at once, naming it', () => {
    const { events, after } = run([], submit(spec(), { pending: 1, failed: 1, firstFailed: DEP_B, firstFailedState: 'failed' }));
    expect(events[1]).toEqual({
      type: 'TaskCancelled',
      data: { actor: 'scheduler', reason: 'dependency-failed', at: T0, dependency: DEP_B, dependencyState: 'failed' },
    });
    expect(after.status).toBe('cancelled');
  });

  it('a dependency failed before the submit: policy run waits for the others, or is released with the outcomes', () => {
    const task = spec({ onDependencyFailure: 'run' });
    expect(run([], submit(task, { pending: 1, cancelled: 1, firstFailed: DEP_A, firstFailedState: 'cancelled' })).after.status).toBe('waiting');
    const { events } = run([], submit(task, { succeeded: 1, cancelled: 1, firstFailed: DEP_A, firstFailedState: 'cancelled' }));
    expect(events.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskReleased', 'TaskQueued']);
    expect(events[1]?.data).toMatchObject({ outcomes: { succeeded: 1, failed: 0, cancelled: 1 } });
  });

  it('no dependencies data, or an empty dependsOn: queued by the TaskSubmitted itself', () => {
    expect(run([], submit(spec({ dependsOn: [] }), { pending: 3 })).events.map((e) => [e.type, (e.data as { attempt?: number }).attempt])).toEqual([['TaskSubmitted', 1]]);
    expect(run([], submit(spec())).events.map((e) => [e.type, (e.data as { attempt?: number }).attempt])).toEqual([['TaskSubmitted', 1]]);
  });
});

describe('ResolveDependencies', () => {
  it('the last dependency succeeding releases the task (naming it) and queues attempt 1', () => {
    const { events, after } = run(waitingOn(spec()), resolve([{ id: DEP_B, state: 'succeeded' }], 0));
    expect(events).toEqual([
      { type: 'TaskReleased', data: { dependency: DEP_B, outcomes: { succeeded: 2, failed: 0, cancelled: 0 }, at: T1 } },
      { type: 'TaskQueued', data: { attempt: 1, tier: 'light', priority: 'normal', availableAt: T1, at: T1 } },
    ]);
    expect(after).toMatchObject({ status: 'queued', attempt: 1 });
    expect(dispatchOf(events[1] as TaskEvent)).toEqual({ attempt: 1, availableAt: T1 });
  });

  it('a success with dependencies remaining changes nothing', () => {
    expect(run(waitingOn(spec()), resolve([{ id: DEP_A, state: 'succeeded' }], 1)).events).toEqual([]);
  });

  it('a failed or cancelled dependency under policy cancel cancels the task, even with others remaining', () => {
    for (const state of ['failed', 'cancelled'] as const) {
      const { events, after } = run(waitingOn(spec()), resolve([{ id: DEP_A, state }], 1));
      expect(events).toEqual([{ type: 'TaskCancelled', data: { actor: 'scheduler', reason: 'dependency-failed', at: T1, dependency: DEP_A, dependencyState: state } }]);
      expect(after.status).toBe('cancelled');
    }
  });

  it('policy run: a failure waits for the rest, then the task is released with every outcome', () => {
    const task = spec({ onDependencyFailure: 'run' });
    expect(run(waitingOn(task), resolve([{ id: DEP_A, state: 'failed' }], 1)).events).toEqual([]);
    const { events } = run(waitingOn(task), resolve([{ id: DEP_A, state: 'failed' }, { id: DEP_B, state: 'succeeded' }], 0, { succeeded: 1, failed: 1, cancelled: 0 }));
    expect(events.map((e) => e.type)).toEqual(['TaskReleased', 'TaskQueued']);
    expect(events[0]?.data).toMatchObject({ dependency: DEP_B, outcomes: { succeeded: 1, failed: 1, cancelled: 0 } });
  });

  it('a task no longer waiting (released, cancelled, expired) ignores it: releases are exactly once', () => {
    const waiting = waitingOn(spec());
    const released = [...waiting, ...decide(foldTask(TASK_ID, waiting), resolve([{ id: DEP_B, state: 'succeeded' }], 0))];
    expect(run(released, resolve([{ id: DEP_B, state: 'succeeded' }], 0)).events).toEqual([]);
    const cancelled = [...waiting, ...decide(foldTask(TASK_ID, waiting), { type: 'CancelTask', data: { actor: 'u', reason: null, now: T1 } })];
    expect(run(cancelled, resolve([{ id: DEP_B, state: 'succeeded' }], 0)).events).toEqual([]);
    expect(run([], resolve([], 0)).events).toEqual([]);
  });

  it('a waiting task can be cancelled, and expires (failed, expired) at attempt 0 without a start', () => {
    const waiting = waitingOn(spec());
    expect(run(waiting, { type: 'CancelTask', data: { actor: 'u', reason: null, now: T1 } }).after.status).toBe('cancelled');
    const expired = run(waiting, {
      type: 'FailTask',
      data: { attempt: 0, nodeId: null, error: { message: 'late', code: 'expired', retryable: false }, startedAt: null, backoff: { baseMs: 1, factor: 1, maxMs: 1 }, random: 0, now: T1 },
    });
    expect(expired.events.map((e) => e.type)).toEqual(['TaskAttemptFailed', 'TaskFailed']);
    expect(expired.after).toMatchObject({ status: 'failed', failureReason: 'expired' });
  });

  it('a stray result or dead letter for attempt 1 of a waiting task changes nothing', () => {
    const waiting = waitingOn(spec());
    expect(run(waiting, { type: 'StartTask', data: { attempt: 1, nodeId: 'n', now: T1 } }).events).toEqual([]);
    expect(run(waiting, { type: 'DeadLetterTask', data: { attempt: 1, reason: 'expired', queue: null, now: T1 } }).events).toEqual([]);
  });
});

describe('FallBackPlacement', () => {
  const placed = spec({ dependsOn: [], placement: { zone: 'site-a' }, fallbackAfterMs: 30_000 });
  const queuedPlaced: TaskEvent[] = decide(foldTask(TASK_ID, []), submit(placed));
  const fallBack = (attempt = 1, now = T2): TaskCommand => ({ type: 'FallBackPlacement', data: { attempt, now } });

  it('the current attempt still queued: TaskPlacementFallback, a new dispatch of the same attempt', () => {
    const { events, after } = run(queuedPlaced, fallBack());
    expect(events).toEqual([{ type: 'TaskPlacementFallback', data: { attempt: 1, afterMs: 30_000, at: T2 } }]);
    expect(after).toMatchObject({ status: 'queued', attempt: 1, availableAt: T2 });
    expect(dispatchOf(events[0] as TaskEvent)).toEqual({ attempt: 1, availableAt: T2 });
  });

  it('an old attempt, a running or ended task, or a task without placement or fallbackAfterMs: nothing', () => {
    expect(run(queuedPlaced, fallBack(2)).events).toEqual([]);
    const running = [...queuedPlaced, { type: 'TaskStarted', data: { attempt: 1, nodeId: 'n', at: T1 } } as TaskEvent];
    expect(run(running, fallBack()).events).toEqual([]);
    const ended = [...running, { type: 'TaskSucceeded', data: { attempt: 1, nodeId: 'n', output: null, durationMs: 1, at: T1 } } as TaskEvent];
    expect(run(ended, fallBack()).events).toEqual([]);
    const noFallback = decide(foldTask(TASK_ID, []), submit(spec({ dependsOn: [], placement: { zone: 'site-a' } })));
    expect(run(noFallback, fallBack()).events).toEqual([]);
    const noPlacement = decide(foldTask(TASK_ID, []), submit(spec({ dependsOn: [] })));
    expect(run(noPlacement, fallBack()).events).toEqual([]);
  });
});

describe('old specs', () => {
  it('a TaskSubmitted without the new fields folds as before', () => {
    const { dependsOn: _d, onDependencyFailure: _p, ...old } = spec();
    const state = foldTask(TASK_ID, decide(foldTask(TASK_ID, []), submit(old)));
    expect(state).toMatchObject({ status: 'queued', attempt: 1 });
    expect(state.spec?.dependsOn).toBeUndefined();
  });
});

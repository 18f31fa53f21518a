import { describe, expect, it } from 'vitest';
import {
  FogschedError,
  TaskAlreadyExistsError,
  TaskNotCancellableError,
  TaskNotFoundError,
  TaskNotRequeueableError,
  MAX_RETURNS,
  decide,
  dispatchOf,
  evolve,
  foldTask,
  initialTaskState,
  upcast,
  type TaskCommand,
  type TaskError,
  type TaskEvent,
  type TaskSpec,
  type TaskState,
} from '../../src/domain/index.js';

// ---------------------------------------------------------------------------
// Emmett-style decider specification: given(events).when(command).then(events)
// ---------------------------------------------------------------------------

const TASK_ID = '00000000-0000-4000-8000-000000000001';

const T0 = '2025-01-01T00:00:00.000Z';
const T1 = '2025-01-01T00:00:01.000Z';
const T2 = '2025-01-01T00:00:02.000Z';
const T3 = '2025-01-01T00:00:03.000Z';
const T4 = '2025-01-01T00:00:04.000Z';
const LATER = '2025-01-01T01:00:00.000Z';

function spec(overrides: Partial<TaskSpec> = {}): TaskSpec {
  return {
    taskId: TASK_ID,
    tenant: 'acme',
    type: 'echo',
    payload: { n: 1 },
    priority: 'normal',
    resources: { cpu: 0.1, memoryMb: 64 },
    tier: 'light',
    maxAttempts: 3,
    timeoutMs: null,
    notBefore: null,
    deadline: null,
    idempotencyKey: null,
    ...overrides,
  };
}

interface Outcome {
  readonly events: TaskEvent[];
  readonly before: TaskState;
  readonly after: TaskState;
}

function given(events: readonly TaskEvent[] = []) {
  const before = foldTask(TASK_ID, events);
  return {
    state: before,
    when(command: TaskCommand): Outcome {
      const produced = decide(before, command);
      return { events: produced, before, after: produced.reduce(evolve, before) };
    },
    whenThrows(command: TaskCommand): unknown {
      try {
        decide(before, command);
      } catch (error) {
        return error;
      }
      throw new Error(`expected ${command.type} to throw in state ${before.status}`);
    },
  };
}

// --- event builders -------------------------------------------------------

const submitted = (task: TaskSpec = spec(), at = T0): TaskEvent => ({ type: 'TaskSubmitted', data: { task, at } });
const queued = (attempt = 1, availableAt = T0, at = T0): TaskEvent => ({
  type: 'TaskQueued',
  data: { attempt, tier: 'light', priority: 'normal', availableAt, at },
});
const started = (attempt = 1, nodeId = 'node-a', at = T1): TaskEvent => ({ type: 'TaskStarted', data: { attempt, nodeId, at } });
const succeededEvt = (attempt = 1, nodeId = 'node-a', at = T2): TaskEvent => ({
  type: 'TaskSucceeded',
  data: { attempt, nodeId, output: { ok: true }, durationMs: 1000, at },
});
const retryable: TaskError = { message: 'boom', code: 'E_TRANSIENT', retryable: true };
const fatal: TaskError = { message: 'bad input', code: 'E_BAD', retryable: false };
const attemptFailed = (attempt = 1, error: TaskError = retryable, at = T2): TaskEvent => ({
  type: 'TaskAttemptFailed',
  data: { attempt, nodeId: 'node-a', error, at },
});
const retryScheduled = (attempt = 2, at = T2, delayMs = 1000): TaskEvent => ({
  type: 'TaskRetryScheduled',
  data: { attempt, delayMs, availableAt: new Date(Date.parse(at) + delayMs).toISOString(), at },
});
const failedEvt = (attempt = 1, error: TaskError = fatal, at = T2): TaskEvent => ({
  type: 'TaskFailed',
  data: { attempt, reason: error.retryable ? 'max-attempts' : 'non-retryable', error, at },
});
const cancelledEvt = (at = T2): TaskEvent => ({ type: 'TaskCancelled', data: { actor: 'alice', reason: null, at } });
const deadLettered = (attempt = 1, at = T2): TaskEvent => ({
  type: 'TaskDeadLettered',
  data: { attempt, reason: 'delivery-limit', queue: 'tasks.light.normal', at },
});

// --- command builders -----------------------------------------------------

const submit = (task: TaskSpec = spec(), now = T0): TaskCommand => ({ type: 'SubmitTask', data: { task, now } });
const start = (attempt = 1, nodeId = 'node-a', now = T1): TaskCommand => ({ type: 'StartTask', data: { attempt, nodeId, now } });
const succeed = (attempt = 1, nodeId = 'node-a', startedAt = T1, now = T2): TaskCommand => ({
  type: 'SucceedTask',
  data: { attempt, nodeId, output: { ok: true }, durationMs: 1000, startedAt, now },
});
const fail = (
  attempt = 1,
  error: TaskError = retryable,
  opts: { nodeId?: string | null; startedAt?: string | null; retryDelayMs?: number; now?: string } = {},
): TaskCommand => ({
  type: 'FailTask',
  data: {
    attempt,
    nodeId: opts.nodeId === undefined ? 'node-a' : opts.nodeId,
    error,
    startedAt: opts.startedAt === undefined ? T1 : opts.startedAt,
    // factor 1 and random 1 make the delay exactly retryDelayMs.
    backoff: { baseMs: opts.retryDelayMs ?? 5000, factor: 1, maxMs: opts.retryDelayMs ?? 5000 },
    random: 1,
    now: opts.now ?? T2,
  },
});
const deadLetter = (attempt = 1, now = T3, returns?: number): TaskCommand => ({
  type: 'DeadLetterTask',
  data: { attempt, reason: 'delivery-limit', queue: 'tasks.light.normal', now, ...(returns === undefined ? {} : { returns }) },
});
const giveBack = (attempt = 1, nodeId: string | null = 'node-a', now = T3): TaskCommand => ({
  type: 'ReturnTask',
  data: { attempt, nodeId, reason: 'node-shutdown', returns: 0, now },
});
const cancel = (now = T3): TaskCommand => ({ type: 'CancelTask', data: { actor: 'alice', reason: 'not needed', now } });
const requeue = (now = T4): TaskCommand => ({ type: 'RequeueTask', data: { actor: 'bob', now } });

// --- common histories -----------------------------------------------------

const H = {
  queued: [submitted(), queued()],
  scheduled: [submitted(spec({ notBefore: LATER })), queued(1, LATER)],
  running: [submitted(), queued(), started()],
  retrying: [submitted(), queued(), started(), attemptFailed(), retryScheduled()],
  succeeded: [submitted(), queued(), started(), succeededEvt()],
  failed: [submitted(), queued(), started(), attemptFailed(1, fatal), failedEvt(1, fatal)],
  cancelled: [submitted(), queued(), cancelledEvt()],
} satisfies Record<string, TaskEvent[]>;

// ---------------------------------------------------------------------------

describe('task decider: SubmitTask', () => {
  it('emits one TaskSubmitted that is also the dispatch of attempt 1, leaving the task queued', () => {
    const task = spec();
    const { events, after } = given().when(submit(task, T0));

    expect(events).toEqual([{ type: 'TaskSubmitted', data: { task, at: T0, attempt: 1, availableAt: T0 } }]);
    expect(dispatchOf(events[0]!)).toEqual({ attempt: 1, availableAt: T0 });
    expect(after).toMatchObject({
      taskId: TASK_ID,
      status: 'queued',
      version: 1,
      spec: task,
      attempt: 1,
      firstAttempt: 1,
      availableAt: T0,
      submittedAt: T0,
      updatedAt: T0,
      nodeId: null,
      finishedAt: null,
    });
  });

  it('reads a log of schema v2 (TaskSubmitted, then TaskQueued of attempt 1) into the same state', () => {
    const task = spec();
    const [merged] = given().when(submit(task, T0)).events;
    const v2: TaskEvent[] = [
      { type: 'TaskSubmitted', data: { task, at: T0 } },
      { type: 'TaskQueued', data: { attempt: 1, tier: 'light', priority: 'normal', availableAt: T0, at: T0 } },
    ];
    expect(dispatchOf(v2[0]!)).toBeNull();
    const old = foldTask(TASK_ID, v2);
    const now = foldTask(TASK_ID, [merged!]);
    expect({ ...old, version: 0 }).toEqual({ ...now, version: 0 });
    expect(upcast('TaskSubmitted', 2, v2[0]!.data)).toEqual(v2[0]!.data);
  });

  it('schedules the task when notBefore is in the future', () => {
    const { events, after } = given().when(submit(spec({ notBefore: LATER }), T0));

    expect(events[0]).toMatchObject({ type: 'TaskSubmitted', data: { attempt: 1, availableAt: LATER, at: T0 } });
    expect(after.status).toBe('scheduled');
    expect(after.availableAt).toBe(LATER);
  });

  it('queues at once when notBefore is in the past', () => {
    const past = '2024-12-31T23:00:00.000Z';
    const { events, after } = given().when(submit(spec({ notBefore: past }), T0));

    expect(events[0]).toMatchObject({ type: 'TaskSubmitted', data: { availableAt: T0 } });
    expect(after.status).toBe('queued');
  });

  it('queues at once when notBefore equals now', () => {
    const { after } = given().when(submit(spec({ notBefore: T0 }), T0));

    expect(after.status).toBe('queued');
    expect(after.availableAt).toBe(T0);
  });

  it('throws TaskAlreadyExistsError when the task was already submitted', () => {
    const error = given(H.queued).whenThrows(submit());

    expect(error).toBeInstanceOf(TaskAlreadyExistsError);
    expect(error).toBeInstanceOf(FogschedError);
    expect(error).toMatchObject({ code: 'TASK_ALREADY_EXISTS', status: 409, taskId: TASK_ID });
  });

  it('throws TaskAlreadyExistsError even for a terminal task', () => {
    expect(given(H.succeeded).whenThrows(submit())).toBeInstanceOf(TaskAlreadyExistsError);
  });
});

describe('task decider: StartTask', () => {
  it('starts a queued task', () => {
    const { events, after } = given(H.queued).when(start(1, 'node-a', T1));

    expect(events).toEqual([{ type: 'TaskStarted', data: { attempt: 1, nodeId: 'node-a', at: T1 } }]);
    expect(after).toMatchObject({ status: 'running', attempt: 1, nodeId: 'node-a', startedAt: T1, version: 3 });
  });

  it('starts a scheduled task', () => {
    const { events, after } = given(H.scheduled).when(start(1, 'node-a', T1));

    expect(events).toEqual([started(1, 'node-a', T1)]);
    expect(after.status).toBe('running');
  });

  it('starts the next attempt of a retrying task', () => {
    const { events, after } = given(H.retrying).when(start(2, 'node-b', T3));

    expect(events).toEqual([started(2, 'node-b', T3)]);
    expect(after).toMatchObject({ status: 'running', attempt: 2, nodeId: 'node-b' });
  });

  it('is a no-op when the same node reports the start twice', () => {
    const { events, after, before } = given(H.running).when(start(1, 'node-a', T2));

    expect(events).toEqual([]);
    expect(after).toEqual(before);
  });

  it('emits a new TaskStarted when the attempt is redelivered to another node', () => {
    const { events, after } = given(H.running).when(start(1, 'node-b', T3));

    expect(events).toEqual([{ type: 'TaskStarted', data: { attempt: 1, nodeId: 'node-b', at: T3 } }]);
    expect(after).toMatchObject({ status: 'running', attempt: 1, nodeId: 'node-b', startedAt: T3 });
  });

  it('ignores a start for an older attempt', () => {
    expect(given(H.retrying).when(start(1, 'node-a', T3)).events).toEqual([]);
  });

  it('ignores a start for a future attempt', () => {
    expect(given(H.queued).when(start(2, 'node-a')).events).toEqual([]);
  });

  it.each([['succeeded'], ['failed'], ['cancelled']] as const)('ignores a late start on a %s task', (status) => {
    const { events, before } = given(H[status]).when(start(1, 'node-z', T4));

    expect(before.status).toBe(status);
    expect(events).toEqual([]);
  });

  it('ignores a start on a task that does not exist', () => {
    expect(given().when(start(0)).events).toEqual([]);
    expect(given().when(start(1)).events).toEqual([]);
  });
});

describe('task decider: SucceedTask', () => {
  it('succeeds a running task', () => {
    const { events, after } = given(H.running).when(succeed(1, 'node-a', T1, T2));

    expect(events).toEqual([
      { type: 'TaskSucceeded', data: { attempt: 1, nodeId: 'node-a', output: { ok: true }, durationMs: 1000, at: T2 } },
    ]);
    expect(after).toMatchObject({ status: 'succeeded', output: { ok: true }, finishedAt: T2, nodeId: 'node-a', version: 4 });
  });

  it('emits TaskStarted then TaskSucceeded when the start was never seen', () => {
    const { events, after } = given(H.queued).when(succeed(1, 'node-a', T1, T2));

    expect(events).toEqual([
      { type: 'TaskStarted', data: { attempt: 1, nodeId: 'node-a', at: T1 } },
      { type: 'TaskSucceeded', data: { attempt: 1, nodeId: 'node-a', output: { ok: true }, durationMs: 1000, at: T2 } },
    ]);
    expect(after).toMatchObject({ status: 'succeeded', startedAt: T1, finishedAt: T2, version: 4 });
  });

  it('emits TaskStarted then TaskSucceeded for a retry whose start was never seen', () => {
    const { events } = given(H.retrying).when(succeed(2, 'node-b', T3, T4));

    expect(events.map((e) => e.type)).toEqual(['TaskStarted', 'TaskSucceeded']);
    expect(events[0]).toEqual(started(2, 'node-b', T3));
  });

  it('credits the node that reported the result when it differs from the starting node', () => {
    const { events, after } = given(H.running).when(succeed(1, 'node-b', T1, T2));

    expect(events).toHaveLength(1);
    expect(after.nodeId).toBe('node-b');
  });

  it('is a no-op for a second SucceedTask of the same attempt', () => {
    const { events, after, before } = given(H.succeeded).when(succeed(1, 'node-a', T1, T3));

    expect(events).toEqual([]);
    expect(after).toEqual(before);
  });

  it('is a no-op for the result of an older attempt', () => {
    const history = [...H.retrying, started(2, 'node-b', T3)];
    const { events } = given(history).when(succeed(1, 'node-a', T1, T4));

    expect(events).toEqual([]);
  });

  it('is a no-op for a result of a future attempt', () => {
    expect(given(H.running).when(succeed(2)).events).toEqual([]);
  });

  it.each([['failed'], ['cancelled']] as const)('is a no-op on a %s task', (status) => {
    expect(given(H[status]).when(succeed(1, 'node-a', T1, T4)).events).toEqual([]);
  });
});

describe('task decider: FailTask', () => {
  it('schedules a retry for a retryable failure with attempts left', () => {
    const { events, after } = given(H.running).when(fail(1, retryable, { retryDelayMs: 5000, now: T2 }));

    expect(events).toEqual([
      { type: 'TaskAttemptFailed', data: { attempt: 1, nodeId: 'node-a', error: retryable, at: T2 } },
      { type: 'TaskRetryScheduled', data: { attempt: 2, delayMs: 5000, availableAt: '2025-01-01T00:00:07.000Z', at: T2 } },
    ]);
    expect(after).toMatchObject({
      status: 'retrying',
      attempt: 2,
      availableAt: '2025-01-01T00:00:07.000Z',
      nodeId: null,
      lastError: retryable,
      finishedAt: null,
      failureReason: null,
    });
  });

  it('computes availableAt as now + retryDelayMs', () => {
    const { events } = given(H.running).when(fail(1, retryable, { retryDelayMs: 123_456, now: T2 }));

    const retry = events.find((e) => e.type === 'TaskRetryScheduled');
    expect(retry?.data).toMatchObject({ delayMs: 123_456, availableAt: new Date(Date.parse(T2) + 123_456).toISOString() });
  });

  it('fails the task with reason max-attempts on the last attempt', () => {
    const history = [...H.retrying, started(2, 'node-b', T3), attemptFailed(2, retryable, T3), retryScheduled(3, T3)];
    const state = given(history).state;
    expect(state).toMatchObject({ status: 'retrying', attempt: 3 });

    const { events, after } = given(history).when(fail(3, retryable, { nodeId: 'node-c', startedAt: T4, now: LATER }));

    expect(events).toEqual([
      { type: 'TaskStarted', data: { attempt: 3, nodeId: 'node-c', at: T4 } },
      { type: 'TaskAttemptFailed', data: { attempt: 3, nodeId: 'node-c', error: retryable, at: LATER } },
      { type: 'TaskFailed', data: { attempt: 3, reason: 'max-attempts', error: retryable, at: LATER } },
    ]);
    expect(after).toMatchObject({ status: 'failed', failureReason: 'max-attempts', attempt: 3, finishedAt: LATER });
  });

  it('fails at once with max-attempts when maxAttempts is 1', () => {
    const history = [submitted(spec({ maxAttempts: 1 })), queued(), started()];
    const { events, after } = given(history).when(fail(1, retryable));

    expect(events.map((e) => e.type)).toEqual(['TaskAttemptFailed', 'TaskFailed']);
    expect(events[1]).toMatchObject({ data: { attempt: 1, reason: 'max-attempts' } });
    expect(after.status).toBe('failed');
  });

  it('fails the task with reason non-retryable for a non-retryable error, attempts left or not', () => {
    const { events, after } = given(H.running).when(fail(1, fatal));

    expect(events).toEqual([
      { type: 'TaskAttemptFailed', data: { attempt: 1, nodeId: 'node-a', error: fatal, at: T2 } },
      { type: 'TaskFailed', data: { attempt: 1, reason: 'non-retryable', error: fatal, at: T2 } },
    ]);
    expect(after).toMatchObject({ status: 'failed', failureReason: 'non-retryable', lastError: fatal, finishedAt: T2 });
  });

  it('emits TaskStarted first when the start was never seen and the node reported it', () => {
    const { events } = given(H.queued).when(fail(1, retryable, { nodeId: 'node-a', startedAt: T1 }));

    expect(events.map((e) => e.type)).toEqual(['TaskStarted', 'TaskAttemptFailed', 'TaskRetryScheduled']);
    expect(events[0]).toEqual(started(1, 'node-a', T1));
  });

  it('does not invent a start when no node ran the attempt', () => {
    const { events } = given(H.queued).when(fail(1, retryable, { nodeId: null, startedAt: null }));

    expect(events.map((e) => e.type)).toEqual(['TaskAttemptFailed', 'TaskRetryScheduled']);
    expect(events[0]).toMatchObject({ data: { nodeId: null } });
  });

  it('is a no-op for a failure of an older attempt', () => {
    expect(given(H.retrying).when(fail(1, retryable, { now: T3 })).events).toEqual([]);
  });

  it('is a no-op for a second failure of the same, already failed attempt', () => {
    const { events, before, after } = given(H.failed).when(fail(1, fatal, { now: T3 }));

    expect(events).toEqual([]);
    expect(after).toEqual(before);
  });

  it('is a no-op for a failure arriving after success', () => {
    expect(given(H.succeeded).when(fail(1, retryable, { now: T3 })).events).toEqual([]);
  });

  it('counts the attempt budget from firstAttempt after a requeue', () => {
    // maxAttempts 2: attempt 1 fails for good, requeue starts a fresh budget at attempt 2.
    const history = [
      submitted(spec({ maxAttempts: 2 })),
      queued(),
      started(),
      attemptFailed(1, fatal),
      failedEvt(1, fatal),
      { type: 'TaskRequeued', data: { actor: 'bob', attempt: 2, at: T3 } } satisfies TaskEvent,
    ];
    const first = given(history).when(fail(2, retryable, { nodeId: null, startedAt: null, now: T4 }));

    expect(first.events.map((e) => e.type)).toEqual(['TaskAttemptFailed', 'TaskRetryScheduled']);
    expect(first.after).toMatchObject({ status: 'retrying', attempt: 3, firstAttempt: 2 });

    const second = given([...history, ...first.events]).when(fail(3, retryable, { nodeId: null, startedAt: null, now: LATER }));
    expect(second.events.map((e) => e.type)).toEqual(['TaskAttemptFailed', 'TaskFailed']);
    expect(second.events[1]).toMatchObject({ data: { attempt: 3, reason: 'max-attempts' } });
  });
});

describe('task decider: DeadLetterTask', () => {
  it('fails a running task with reason delivery-limit', () => {
    const { events, after } = given(H.running).when(deadLetter(1, T3));

    expect(events).toEqual([
      { type: 'TaskDeadLettered', data: { attempt: 1, reason: 'delivery-limit', queue: 'tasks.light.normal', at: T3 } },
    ]);
    expect(after).toMatchObject({ status: 'failed', failureReason: 'delivery-limit', finishedAt: T3 });
  });

  it.each([['queued'], ['scheduled'], ['retrying']] as const)('returns a %s (never started) attempt that hit the delivery limit: same attempt, queued again', (status) => {
    const history = H[status];
    const attempt = foldTask(TASK_ID, history).attempt;
    const { events, after } = given(history).when(deadLetter(attempt, T3));

    expect(events).toEqual([{ type: 'TaskReturned', data: { attempt, nodeId: null, reason: 'delivery-limit', returns: 1, at: T3 } }]);
    expect(after).toMatchObject({ status: 'queued', attempt, availableAt: T3, nodeId: null, failureReason: null, finishedAt: null });
    expect(dispatchOf(events[0] as TaskEvent)).toEqual({ attempt, availableAt: T3 });
  });

  it(`counts the returns from the message header and fails the task once ${MAX_RETURNS} returns are used up`, () => {
    const almost = given(H.queued).when(deadLetter(1, T3, MAX_RETURNS - 1));
    expect(almost.events).toMatchObject([{ type: 'TaskReturned', data: { returns: MAX_RETURNS } }]);

    const { events, after } = given(H.queued).when(deadLetter(1, T3, MAX_RETURNS));
    expect(events).toEqual([{ type: 'TaskDeadLettered', data: { attempt: 1, reason: 'delivery-limit', queue: 'tasks.light.normal', at: T3 } }]);
    expect(after).toMatchObject({ status: 'failed', failureReason: 'delivery-limit' });
  });

  it('fails a never-started task dead-lettered for any other reason than the delivery limit', () => {
    const { after } = given(H.queued).when({ type: 'DeadLetterTask', data: { attempt: 1, reason: 'rejected', queue: 'q', now: T3 } });

    expect(after).toMatchObject({ status: 'failed', failureReason: 'rejected' });
  });

  it('is a no-op for an older attempt', () => {
    expect(given(H.retrying).when(deadLetter(1)).events).toEqual([]);
  });

  it('is a no-op when the attempt already ended', () => {
    expect(given(H.succeeded).when(deadLetter(1)).events).toEqual([]);
    expect(given([...H.running, deadLettered(1)]).when(deadLetter(1, T4)).events).toEqual([]);
  });
});

describe('task decider: ReturnTask', () => {
  it('gives a running attempt back to its queue: same attempt, a new dispatch, node cleared', () => {
    const { events, after } = given(H.running).when(giveBack(1, 'node-a', T3));

    expect(events).toEqual([{ type: 'TaskReturned', data: { attempt: 1, nodeId: 'node-a', reason: 'node-shutdown', returns: 0, at: T3 } }]);
    expect(after).toMatchObject({ status: 'queued', attempt: 1, nodeId: null, availableAt: T3, finishedAt: null });
    expect(dispatchOf(events[0] as TaskEvent)).toEqual({ attempt: 1, availableAt: T3 });
  });

  it('is a no-op the second time, from a node that is not running it, for an older attempt and once the task ended', () => {
    const returned = given(H.running).when(giveBack()).events;
    expect(given([...H.running, ...returned]).when(giveBack()).events).toEqual([]);
    expect(given(H.running).when(giveBack(1, 'node-b')).events).toEqual([]);
    expect(given(H.retrying).when(giveBack(1)).events).toEqual([]);
    expect(given(H.succeeded).when(giveBack(1)).events).toEqual([]);
    expect(given(H.cancelled).when(giveBack(1)).events).toEqual([]);
  });

  it('does not use up maxAttempts: a task with one attempt, returned twice, still runs that attempt and can succeed', () => {
    const history = [submitted(spec({ maxAttempts: 1 })), queued(), started()];
    const first = given(history).when(giveBack(1, 'node-a', T2)).events;
    const again = [...history, ...first, started(1, 'node-b', T3)];
    const second = given(again).when(giveBack(1, 'node-b', T3)).events;
    const { events, after } = given([...again, ...second, started(1, 'node-c', T4)]).when(succeed(1, 'node-c', T4, LATER));

    expect(events.map((e) => e.type)).toEqual(['TaskSucceeded']);
    expect(after).toMatchObject({ status: 'succeeded', attempt: 1, nodeId: 'node-c' });
  });

  it('a retryable failure after returns counts attempts, not returns', () => {
    const history = [submitted(spec({ maxAttempts: 2 })), queued(), started(), ...given(H.running).when(giveBack()).events, started(1, 'node-b', T3)];
    const { events } = given(history).when(fail(1, retryable, { nodeId: 'node-b', now: T4 }));

    expect(events.map((e) => e.type)).toEqual(['TaskAttemptFailed', 'TaskRetryScheduled']);
  });
});

describe('task decider: whose clock decides', () => {
  it("TaskStarted keeps the node's start time; the decider's now does not replace it", () => {
    const { events } = given(H.queued).when({ type: 'StartTask', data: { attempt: 1, nodeId: 'node-a', startedAt: LATER, now: T1 } });

    expect(events).toEqual([{ type: 'TaskStarted', data: { attempt: 1, nodeId: 'node-a', at: LATER } }]);
  });

  it("a result is stamped with the decider's now and keeps the node's time as reportedAt", () => {
    const { events } = given(H.running).when({
      type: 'SucceedTask',
      data: { attempt: 1, nodeId: 'node-a', output: null, durationMs: 5, startedAt: T1, now: T2, reportedAt: LATER },
    });

    expect(events).toEqual([{ type: 'TaskSucceeded', data: { attempt: 1, nodeId: 'node-a', output: null, durationMs: 5, at: T2, reportedAt: LATER } }]);
  });

  it("a retry is due after the decider's now, whatever time the node reported", () => {
    const command = fail(1, retryable, { retryDelayMs: 1000, now: T2 });
    const { events } = given(H.running).when({ ...command, data: { ...(command.data as object), reportedAt: LATER } } as TaskCommand);

    expect(events).toEqual([
      { type: 'TaskAttemptFailed', data: { attempt: 1, nodeId: 'node-a', error: retryable, at: T2, reportedAt: LATER } },
      { type: 'TaskRetryScheduled', data: { attempt: 2, delayMs: 1000, availableAt: T3, at: T2 } },
    ]);
  });
});

describe('task decider: CancelTask', () => {
  it.each([['queued'], ['scheduled'], ['running'], ['retrying']] as const)('cancels a %s task', (status) => {
    const { events, before, after } = given(H[status]).when(cancel(T3));

    expect(before.status).toBe(status);
    expect(events).toEqual([{ type: 'TaskCancelled', data: { actor: 'alice', reason: 'not needed', at: T3 } }]);
    expect(after).toMatchObject({ status: 'cancelled', finishedAt: T3, version: before.version + 1 });
  });

  it('is a no-op on an already cancelled task', () => {
    const { events, before, after } = given(H.cancelled).when(cancel(T4));

    expect(events).toEqual([]);
    expect(after).toEqual(before);
  });

  it.each([['succeeded'], ['failed']] as const)('throws TaskNotCancellableError on a %s task', (status) => {
    const error = given(H[status]).whenThrows(cancel());

    expect(error).toBeInstanceOf(TaskNotCancellableError);
    expect(error).toBeInstanceOf(FogschedError);
    expect(error).toMatchObject({ code: 'TASK_NOT_CANCELLABLE', status: 409, taskId: TASK_ID, state: status, details: { state: status } });
    expect((error as Error).message).toContain(status);
  });

  it('throws TaskNotCancellableError on a dead-lettered task', () => {
    expect(given([...H.running, deadLettered(1)]).whenThrows(cancel())).toBeInstanceOf(TaskNotCancellableError);
  });

  it('throws TaskNotFoundError on a task that does not exist', () => {
    const error = given().whenThrows(cancel());

    expect(error).toBeInstanceOf(TaskNotFoundError);
    expect(error).toMatchObject({ code: 'TASK_NOT_FOUND', status: 404, taskId: TASK_ID });
  });
});

describe('task decider: RequeueTask', () => {
  it('requeues a failed task as a new attempt with a fresh budget', () => {
    const { events, after } = given(H.failed).when(requeue(T4));

    expect(events).toEqual([{ type: 'TaskRequeued', data: { actor: 'bob', attempt: 2, at: T4 } }]);
    expect(after).toMatchObject({
      status: 'queued',
      attempt: 2,
      firstAttempt: 2,
      availableAt: T4,
      nodeId: null,
      failureReason: null,
      finishedAt: null,
    });
  });

  it('requeues a dead-lettered task', () => {
    const { events, after } = given([...H.running, deadLettered(1, T2)]).when(requeue(T4));

    expect(events).toEqual([{ type: 'TaskRequeued', data: { actor: 'bob', attempt: 2, at: T4 } }]);
    expect(after).toMatchObject({ status: 'queued', attempt: 2, firstAttempt: 2, failureReason: null });
  });

  it('requeues after max-attempts with the attempt after the last one', () => {
    const history = [submitted(spec({ maxAttempts: 1 })), queued(), started(), attemptFailed(1, retryable), failedEvt(1, retryable)];
    const { events, after } = given(history).when(requeue(T4));

    expect(events).toEqual([{ type: 'TaskRequeued', data: { actor: 'bob', attempt: 2, at: T4 } }]);
    expect(after).toMatchObject({ status: 'queued', attempt: 2, firstAttempt: 2 });
  });

  it('lets the requeued attempt run and succeed', () => {
    const history = [...H.failed, { type: 'TaskRequeued', data: { actor: 'bob', attempt: 2, at: T3 } } satisfies TaskEvent];

    expect(given(history).when(succeed(1, 'node-a', T3, T4)).events).toEqual([]);
    const { events, after } = given(history).when(succeed(2, 'node-b', T3, T4));
    expect(events.map((e) => e.type)).toEqual(['TaskStarted', 'TaskSucceeded']);
    expect(after).toMatchObject({ status: 'succeeded', attempt: 2 });
  });

  it.each([['queued'], ['scheduled'], ['running'], ['retrying'], ['succeeded'], ['cancelled']] as const)(
    'throws TaskNotRequeueableError on a %s task',
    (status) => {
      const error = given(H[status]).whenThrows(requeue());

      expect(error).toBeInstanceOf(TaskNotRequeueableError);
      expect(error).toMatchObject({ code: 'TASK_NOT_REQUEUEABLE', status: 409, taskId: TASK_ID, state: status });
    },
  );

  it('throws TaskNotFoundError on a task that does not exist', () => {
    expect(given().whenThrows(requeue())).toBeInstanceOf(TaskNotFoundError);
  });
});

describe('task evolve', () => {
  it('moves the version and updatedAt on with every event', () => {
    const events = H.retrying;
    let state = initialTaskState(TASK_ID);
    events.forEach((event, i) => {
      state = evolve(state, event);
      expect(state.version).toBe(i + 1);
      expect(state.updatedAt).toBe(event.data.at);
    });
  });

  it('does not mutate the state it is given', () => {
    const before = foldTask(TASK_ID, H.queued);
    const copy = structuredClone(before);
    evolve(before, started());

    expect(before).toEqual(copy);
  });

  it('foldTask equals reducing with evolve from the initial state', () => {
    const events = [...H.failed, { type: 'TaskRequeued', data: { actor: 'bob', attempt: 2, at: T3 } } satisfies TaskEvent];

    expect(foldTask(TASK_ID, events)).toEqual(events.reduce(evolve, initialTaskState(TASK_ID)));
  });

  it('folds from a given snapshot', () => {
    const snapshot = foldTask(TASK_ID, H.queued);

    expect(foldTask(TASK_ID, [started(), succeededEvt()], snapshot)).toEqual(foldTask(TASK_ID, H.succeeded));
  });

  it('starts new tasks at version 0, attempt 0, status new', () => {
    expect(initialTaskState(TASK_ID)).toMatchObject({ taskId: TASK_ID, status: 'new', version: 0, attempt: 0, firstAttempt: 1 });
  });
});

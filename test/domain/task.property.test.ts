import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  FogschedError,
  MAX_RETURNS,
  TASK_STATUSES,
  TaskAlreadyExistsError,
  TaskNotCancellableError,
  TaskNotRequeueableError,
  decide,
  dispatchOf,
  evolve,
  foldTask,
  initialTaskState,
  isTerminal,
  type FailureReason,
  type TaskCommand,
  type TaskEvent,
  type TaskSpec,
  type TaskState,
} from '../../src/domain/index.js';

const TASK_ID = '00000000-0000-4000-8000-0000000000aa';
const BASE = Date.parse('2025-01-01T00:00:00.000Z');
const NUM_RUNS = 300;

const iso = (ms: number) => new Date(ms).toISOString();

/** Which attempt a generated command names, relative to the task's current one. */
type AttemptRef = { kind: 'current' } | { kind: 'old' } | { kind: 'future' } | { kind: 'abs'; n: number };

/** A command with its time and attempt still unresolved: they depend on the state when it runs. */
type CommandTemplate =
  | { type: 'SubmitTask' }
  | { type: 'StartTask'; attempt: AttemptRef; nodeId: string }
  | { type: 'SucceedTask'; attempt: AttemptRef; nodeId: string; durationMs: number }
  | { type: 'FailTask'; attempt: AttemptRef; nodeId: string | null; reportsStart: boolean; retryable: boolean; retryDelayMs: number }
  | { type: 'DeadLetterTask'; attempt: AttemptRef; reason: FailureReason; returns: number | undefined }
  | { type: 'ReturnTask'; attempt: AttemptRef; nodeId: string; current: boolean }
  | { type: 'CancelTask'; actor: string }
  | { type: 'RequeueTask'; actor: string };

const attemptRef: fc.Arbitrary<AttemptRef> = fc.oneof(
  { weight: 6, arbitrary: fc.constant<AttemptRef>({ kind: 'current' }) },
  { weight: 1, arbitrary: fc.constant<AttemptRef>({ kind: 'old' }) },
  { weight: 1, arbitrary: fc.constant<AttemptRef>({ kind: 'future' }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 8 }).map((n): AttemptRef => ({ kind: 'abs', n })) },
);
const nodeId = fc.constantFrom('node-1', 'node-2', 'node-3');
const actor = fc.constantFrom('alice', 'bob');
const failureReason = fc.constantFrom<FailureReason>('delivery-limit', 'rejected', 'expired', 'timeout');

const commandTemplate: fc.Arbitrary<CommandTemplate> = fc.oneof(
  { weight: 1, arbitrary: fc.constant<CommandTemplate>({ type: 'SubmitTask' }) },
  { weight: 5, arbitrary: fc.record({ type: fc.constant('StartTask' as const), attempt: attemptRef, nodeId }) },
  {
    weight: 3,
    arbitrary: fc.record({
      type: fc.constant('SucceedTask' as const),
      attempt: attemptRef,
      nodeId,
      durationMs: fc.integer({ min: 0, max: 10_000 }),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      type: fc.constant('FailTask' as const),
      attempt: attemptRef,
      nodeId: fc.option(nodeId, { nil: null }),
      reportsStart: fc.boolean(),
      retryable: fc.constantFrom(true, true, true, false),
      retryDelayMs: fc.integer({ min: 0, max: 600_000 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      type: fc.constant('DeadLetterTask' as const),
      attempt: attemptRef,
      reason: failureReason,
      returns: fc.option(fc.integer({ min: 0, max: MAX_RETURNS + 1 }), { nil: undefined }),
    }),
  },
  // `current`: the node named is the one running the task (a real node-shutdown return).
  { weight: 2, arbitrary: fc.record({ type: fc.constant('ReturnTask' as const), attempt: attemptRef, nodeId, current: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('CancelTask' as const), actor }) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('RequeueTask' as const), actor }) },
);

const taskSpec: fc.Arbitrary<TaskSpec> = fc
  .record({
    maxAttempts: fc.integer({ min: 1, max: 5 }),
    notBeforeOffsetMs: fc.option(fc.integer({ min: -3_600_000, max: 3_600_000 }), { nil: null }),
    priority: fc.constantFrom('high' as const, 'normal' as const, 'low' as const),
    tier: fc.constantFrom('light', 'medium', 'heavy'),
  })
  .map(({ maxAttempts, notBeforeOffsetMs, priority, tier }) => ({
    taskId: TASK_ID,
    tenant: 'acme',
    type: 'echo',
    payload: null,
    priority,
    resources: { cpu: 0.1, memoryMb: 64 },
    tier,
    maxAttempts,
    timeoutMs: null,
    notBefore: notBeforeOffsetMs === null ? null : iso(BASE + notBeforeOffsetMs),
    deadline: null,
    idempotencyKey: null,
  }));

function resolveAttempt(ref: AttemptRef, state: TaskState): number {
  switch (ref.kind) {
    case 'current':
      return state.attempt;
    case 'old':
      return state.attempt - 1;
    case 'future':
      return state.attempt + 1;
    case 'abs':
      return ref.n;
  }
}

/** Turns a template into a concrete command at step `step` (the clock moves on one second a step). */
function toCommand(t: CommandTemplate, state: TaskState, step: number, spec: TaskSpec): TaskCommand {
  const nowMs = BASE + (step + 1) * 1000;
  const now = iso(nowMs);
  const startedAt = iso(nowMs - 500);
  switch (t.type) {
    case 'SubmitTask':
      return { type: 'SubmitTask', data: { task: spec, now } };
    case 'StartTask':
      return { type: 'StartTask', data: { attempt: resolveAttempt(t.attempt, state), nodeId: t.nodeId, now } };
    case 'SucceedTask':
      return {
        type: 'SucceedTask',
        data: { attempt: resolveAttempt(t.attempt, state), nodeId: t.nodeId, output: { step }, durationMs: t.durationMs, startedAt, now },
      };
    case 'FailTask':
      return {
        type: 'FailTask',
        data: {
          attempt: resolveAttempt(t.attempt, state),
          nodeId: t.nodeId,
          error: { message: `failure at step ${step}`, code: t.retryable ? 'E_TRANSIENT' : 'E_FATAL', retryable: t.retryable },
          startedAt: t.reportsStart ? startedAt : null,
          backoff: { baseMs: t.retryDelayMs, factor: 1, maxMs: t.retryDelayMs },
          random: 1,
          now,
        },
      };
    case 'DeadLetterTask':
      return {
        type: 'DeadLetterTask',
        data: { attempt: resolveAttempt(t.attempt, state), reason: t.reason, queue: 'q', now, ...(t.returns === undefined ? {} : { returns: t.returns }) },
      };
    case 'ReturnTask':
      return {
        type: 'ReturnTask',
        data: { attempt: resolveAttempt(t.attempt, state), nodeId: t.current && state.nodeId ? state.nodeId : t.nodeId, reason: 'node-shutdown', returns: 0, now },
      };
    case 'CancelTask':
      return { type: 'CancelTask', data: { actor: t.actor, reason: null, now } };
    case 'RequeueTask':
      return { type: 'RequeueTask', data: { actor: t.actor, now } };
  }
}

const TERMINAL_EVENTS: ReadonlySet<TaskEvent['type']> = new Set(['TaskSucceeded', 'TaskFailed', 'TaskDeadLettered']);

/** The attempt an event belongs to, for the events that carry one. */
function attemptOf(event: TaskEvent): number | null {
  return 'attempt' in event.data ? (event.data.attempt ?? null) : null;
}

interface RunResult {
  readonly events: readonly TaskEvent[];
  readonly state: TaskState;
}

/** Submits the task, then applies every command, checking the invariants after each step. */
function run(spec: TaskSpec, templates: readonly CommandTemplate[]): RunResult {
  const events: TaskEvent[] = [];
  let state = initialTaskState(TASK_ID);
  const terminalEventsPerAttempt = new Map<number, TaskEvent['type'][]>();

  const apply = (command: TaskCommand) => {
    const before = state;
    let produced: TaskEvent[];
    try {
      produced = decide(before, command);
    } catch (error) {
      if (!(error instanceof FogschedError)) throw error; // anything else is a bug
      checkRefusal(before, command, error);
      return;
    }
    for (const event of produced) {
      const attempt = attemptOf(event);
      if (attempt !== null && event.type !== 'TaskRetryScheduled' && event.type !== 'TaskRequeued') {
        // Every attempt-carrying event of a command is about the attempt the task is on.
        expect(attempt, `${event.type} names the current attempt`).toBe(before.attempt === 0 ? 1 : before.attempt);
      }
      if (TERMINAL_EVENTS.has(event.type)) {
        const seen = terminalEventsPerAttempt.get(attempt as number) ?? [];
        expect(seen, `a second terminal event ${event.type} for attempt ${attempt}`).toEqual([]);
        terminalEventsPerAttempt.set(attempt as number, [...seen, event.type]);
      }
      events.push(event);
      state = evolve(state, event);
    }

    // Status is always one of the valid states (never back to `new`).
    expect(TASK_STATUSES).toContain(state.status);
    // Version counts the events produced so far.
    expect(state.version).toBe(events.length);
    expect(state.attempt).toBeGreaterThanOrEqual(1);
    expect(state.firstAttempt).toBeGreaterThanOrEqual(1);
    expect(state.firstAttempt).toBeLessThanOrEqual(state.attempt);
    // Attempts only ever move forward.
    expect(state.attempt).toBeGreaterThanOrEqual(before.attempt);
    // A terminal state is left only by TaskRequeued, and nothing else happens to a terminal task.
    if (isTerminal(before.status)) {
      if (produced.length > 0) {
        expect(produced.map((e) => e.type)).toEqual(['TaskRequeued']);
        expect(before.status).toBe('failed');
      }
      if (state.status !== before.status) expect(produced.map((e) => e.type)).toEqual(['TaskRequeued']);
    }
    // A terminal state has a finish time; a non-terminal one has none.
    if (isTerminal(state.status)) expect(state.finishedAt).not.toBeNull();
    else expect(state.finishedAt).toBeNull();
    if (state.status === 'failed') expect(state.failureReason).not.toBeNull();
    else expect(state.failureReason).toBeNull();
    // A return puts the same attempt back on its queue, with a new dispatch, and never past MAX_RETURNS.
    for (const event of produced.filter((e) => e.type === 'TaskReturned')) {
      expect(event.data.attempt).toBe(before.attempt);
      expect(event.data.returns).toBeLessThanOrEqual(MAX_RETURNS);
      expect(dispatchOf(event)).toEqual({ attempt: before.attempt, availableAt: event.data.at });
      expect(isTerminal(before.status)).toBe(false);
      expect(state).toMatchObject({ status: 'queued', attempt: before.attempt, nodeId: null });
    }
    // A never-started attempt is not failed by the delivery limit while it has returns left.
    if (command.type === 'DeadLetterTask' && command.data.reason === 'delivery-limit' && (command.data.returns ?? 0) < MAX_RETURNS && ['queued', 'scheduled', 'retrying'].includes(before.status)) {
      expect(state.status === 'failed' && before.attempt === command.data.attempt).toBe(false);
    }
    // Retrying with attempts beyond the budget never happens.
    expect(state.attempt - state.firstAttempt + 1).toBeLessThanOrEqual(spec.maxAttempts);
    // The events so far fold into exactly the state we hold.
    expect(foldTask(TASK_ID, events)).toEqual(state);
  };

  apply({ type: 'SubmitTask', data: { task: spec, now: iso(BASE) } });
  expect(['queued', 'scheduled']).toContain(state.status);
  templates.forEach((t, i) => apply(toCommand(t, state, i, spec)));
  return { events, state };
}

/** A refused command is refused for the right reason. */
function checkRefusal(state: TaskState, command: TaskCommand, error: FogschedError): void {
  switch (command.type) {
    case 'SubmitTask':
      expect(error).toBeInstanceOf(TaskAlreadyExistsError);
      break;
    case 'CancelTask':
      expect(error).toBeInstanceOf(TaskNotCancellableError);
      expect(['succeeded', 'failed']).toContain(state.status);
      break;
    case 'RequeueTask':
      expect(error).toBeInstanceOf(TaskNotRequeueableError);
      expect(state.status).not.toBe('failed');
      break;
    default:
      // Results from fog nodes are never refused: late or duplicate ones are no-ops.
      expect.fail(`${command.type} threw ${error.code} in state ${state.status}`);
  }
}

describe('task decider properties', () => {
  it('keeps its invariants under random command sequences', () => {
    fc.assert(
      fc.property(taskSpec, fc.array(commandTemplate, { maxLength: 40 }), (spec, templates) => {
        const { events, state } = run(spec, templates);
        expect(events.reduce(evolve, initialTaskState(TASK_ID))).toEqual(state);
        expect(foldTask(TASK_ID, events)).toEqual(state);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('is deterministic: the same commands give the same events', () => {
    fc.assert(
      fc.property(taskSpec, fc.array(commandTemplate, { maxLength: 25 }), (spec, templates) => {
        expect(run(spec, templates).events).toEqual(run(spec, templates).events);
      }),
      { numRuns: 100 },
    );
  });

  it('ignores a repeated result: the same SucceedTask, FailTask, ReturnTask or DeadLetterTask twice adds nothing the second time', () => {
    const resultTemplate = commandTemplate.filter(
      (t) => t.type === 'SucceedTask' || t.type === 'FailTask' || t.type === 'DeadLetterTask' || t.type === 'StartTask' || t.type === 'ReturnTask',
    );
    fc.assert(
      fc.property(taskSpec, fc.array(commandTemplate, { maxLength: 20 }), resultTemplate, (spec, templates, last) => {
        const { events, state } = run(spec, templates);
        const command = toCommand(last, state, templates.length, spec);
        const first = decide(state, command);
        const after = first.reduce(evolve, state);
        const second = decide(after, command);
        if (first.some((e) => e.type === 'TaskReturned' && e.data.reason === 'delivery-limit')) {
          // A dead letter is a broker message: ingest's inbox applies each one once (by message
          // id). The decider alone cannot tell a copy from the next dead letter of the same
          // attempt, so it returns the attempt again, with the same count: never past MAX_RETURNS.
          expect(second).toEqual(first);
          return;
        }
        // A StartTask repeated from the same node, or any result repeated, is a no-op.
        expect(second).toEqual([]);
        expect(foldTask(TASK_ID, [...events, ...first])).toEqual(after);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('ends a never-started attempt whose every dispatch is dead-lettered: at most MAX_RETURNS returns, then failed delivery-limit', () => {
    fc.assert(
      fc.property(taskSpec, fc.array(commandTemplate, { maxLength: 20 }), (spec, templates) => {
        let { state } = run(spec, templates);
        if (!['queued', 'scheduled', 'retrying'].includes(state.status)) return;
        const attempt = state.attempt;
        const events: TaskEvent[] = [];
        let returns = 0; // the header of the dispatch that is dead-lettered: that of the last return, 0 for the first
        for (let i = 0; i <= MAX_RETURNS; i++) {
          const produced = decide(state, { type: 'DeadLetterTask', data: { attempt, reason: 'delivery-limit', queue: 'q', now: iso(BASE + 10_000_000 + i), returns } });
          events.push(...produced);
          state = produced.reduce(evolve, state);
          const returned = produced.find((e) => e.type === 'TaskReturned');
          if (!returned) break;
          returns = returned.data.returns;
        }
        expect(state).toMatchObject({ status: 'failed', failureReason: 'delivery-limit', attempt });
        expect(events.filter((e) => e.type === 'TaskReturned').length).toBeLessThanOrEqual(MAX_RETURNS);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('lets a cancel through in every non-terminal state', () => {
    fc.assert(
      fc.property(taskSpec, fc.array(commandTemplate, { maxLength: 30 }), (spec, templates) => {
        const { state } = run(spec, templates);
        const command: TaskCommand = { type: 'CancelTask', data: { actor: 'alice', reason: null, now: iso(BASE + 10_000_000) } };
        if (isTerminal(state.status)) return;
        const produced = decide(state, command);
        expect(produced.map((e) => e.type)).toEqual(['TaskCancelled']);
        expect(produced.reduce(evolve, state).status).toBe('cancelled');
      }),
      { numRuns: NUM_RUNS },
    );
  });
});

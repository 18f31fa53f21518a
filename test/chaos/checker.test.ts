import { describe, expect, it } from 'vitest';
import { decide, evolve, initialTaskState, type TaskCommand, type TaskSpec, type TaskState } from '../../src/domain/index.js';
import {
  checkAttemptBudget,
  checkCancels,
  checkDeadLetters,
  checkDependencies,
  checkHistory,
  checkOutbox,
  checkReadModel,
  checkScheduleRuns,
  checkSubmits,
  checkTerminal,
  checkTransitions,
  toolViolations,
  type ClientLog,
  type History,
  type LoggedEvent,
  type ObservedRecord,
} from '../../src/chaos/checker.js';

// Histories are made the way the system makes them: commands through the domain's decide.
const BACKOFF = { baseMs: 200, factor: 2, maxMs: 2000 };
const T0 = Date.parse('2026-11-27T12:00:00.000Z');
const at = (ms: number) => new Date(T0 + ms).toISOString();
let ids = 0;
const newId = () => `00000000-0000-4000-8000-${String(++ids).padStart(12, '0')}`;

function aSpec(taskId: string, over: Partial<TaskSpec> = {}): TaskSpec {
  return {
    taskId,
    tenant: 'default',
    type: 'noop',
    payload: { ref: `c-${taskId.slice(-4)}` },
    priority: 'normal',
    resources: { cpu: 0.1, memoryMb: 64 },
    tier: 'light',
    maxAttempts: 3,
    timeoutMs: null,
    notBefore: null,
    deadline: null,
    idempotencyKey: null,
    ...over,
  };
}

/** Runs commands through decide and returns the events as the log would hold them. */
function logOf(taskId: string, commands: TaskCommand[]): LoggedEvent[] {
  let state: TaskState = initialTaskState(taskId);
  const out: LoggedEvent[] = [];
  for (const command of commands) {
    for (const event of decide(state, command)) {
      state = evolve(state, event);
      out.push({ position: out.length + 1, version: state.version, type: event.type, data: JSON.parse(JSON.stringify(event.data)) as Record<string, unknown>, recordedAt: Date.parse(event.data.at) });
    }
  }
  return out;
}

const submit = (spec: TaskSpec, ms = 0): TaskCommand => ({ type: 'SubmitTask', data: { task: spec, now: at(ms) } });
const start = (attempt: number, ms: number, nodeId = 'node-a'): TaskCommand => ({ type: 'StartTask', data: { attempt, nodeId, now: at(ms) } });
const succeed = (attempt: number, ms: number, nodeId = 'node-a'): TaskCommand => ({ type: 'SucceedTask', data: { attempt, nodeId, output: null, durationMs: 5, startedAt: at(ms - 5), now: at(ms) } });
const fail = (attempt: number, ms: number, retryable: boolean, random = 0.5): TaskCommand => ({
  type: 'FailTask',
  data: { attempt, nodeId: 'node-a', error: { message: 'x', code: 'fail', retryable }, startedAt: at(ms - 5), backoff: BACKOFF, random, now: at(ms) },
});
const cancel = (ms: number): TaskCommand => ({ type: 'CancelTask', data: { actor: 'chaos', reason: null, now: at(ms) } });
const deadLetter = (attempt: number, ms: number): TaskCommand => ({ type: 'DeadLetterTask', data: { attempt, reason: 'delivery-limit', queue: 'tasks.light.normal', now: at(ms) } });

function tamper(events: LoggedEvent[], extra: Omit<LoggedEvent, 'position' | 'version'>): LoggedEvent[] {
  const last = events[events.length - 1] as LoggedEvent;
  return [...events, { ...extra, position: last.position + 1, version: last.version + 1 }];
}

const historyOf = (tasks: [string, LoggedEvent[]][], extra: Partial<History> = {}): History => ({ tasks: new Map(tasks), scheduleFired: [], unpublishedDue: [], ...extra });
const refOf = (events: LoggedEvent[]) => ((events[0]?.data.task as TaskSpec).payload as { ref: string }).ref;

describe('the chaos checker, rule by rule', () => {
  const id = newId();
  const done = logOf(id, [submit(aSpec(id)), start(1, 10), succeed(1, 20)]);

  it('lost-submit: an accepted submit must have its task', () => {
    const client: ClientLog = { submits: [{ ref: refOf(done), outcome: 'accepted', taskId: id }], cancels: [] };
    expect(checkSubmits(historyOf([[id, done]]), client)).toEqual([]);
    const lost = newId();
    const violations = checkSubmits(historyOf([[id, done]]), { submits: [...client.submits, { ref: 'c-lost', outcome: 'accepted', taskId: lost }], cancels: [] });
    expect(violations.map((v) => v.rule)).toEqual(['lost-submit']);
    expect(violations[0]?.taskId).toBe(lost);
  });

  it('duplicate-submit: one submit, one task', () => {
    const twin = newId();
    const twinLog = logOf(twin, [submit(aSpec(twin, { payload: { ref: refOf(done) } })), start(1, 10), succeed(1, 20)]);
    const client: ClientLog = { submits: [{ ref: refOf(done), outcome: 'accepted', taskId: id }], cancels: [] };
    expect(checkSubmits(historyOf([[id, done]]), client)).toEqual([]);
    expect(checkSubmits(historyOf([[id, done], [twin, twinLog]]), client).map((v) => v.rule)).toEqual(['duplicate-submit']);
  });

  it('unaccepted-exists: a submit answered 4xx made no task; an unknown answer may have', () => {
    const client = (outcome: 'rejected' | 'unknown'): ClientLog => ({ submits: [{ ref: refOf(done), outcome, taskId: null }], cancels: [] });
    expect(checkSubmits(historyOf([[id, done]]), client('unknown'))).toEqual([]);
    expect(checkSubmits(historyOf([]), client('rejected'))).toEqual([]);
    expect(checkSubmits(historyOf([[id, done]]), client('rejected')).map((v) => v.rule)).toEqual(['unaccepted-exists']);
  });

  it('phantom-task: every task comes from a submit or a schedule run', () => {
    const fired = newId();
    const firedLog = logOf(fired, [submit(aSpec(fired, { payload: null })), start(1, 10), succeed(1, 20)]);
    expect(checkSubmits(historyOf([[fired, firedLog]], { scheduleFired: [fired] }), { submits: [], cancels: [] })).toEqual([]);
    expect(checkSubmits(historyOf([[fired, firedLog]]), { submits: [], cancels: [] }).map((v) => v.rule)).toEqual(['phantom-task']);
  });

  it('schedule-fired-missing: a ScheduleFired names a task that exists', () => {
    expect(checkScheduleRuns(historyOf([[id, done]], { scheduleFired: [id] }))).toEqual([]);
    expect(checkScheduleRuns(historyOf([[id, done]], { scheduleFired: [newId()] })).map((v) => v.rule)).toEqual(['schedule-fired-missing']);
  });

  it('not-terminal: every task ends', () => {
    expect(checkTerminal(id, done)).toEqual([]);
    const running = logOf(id, [submit(aSpec(id)), start(1, 10)]);
    const violations = checkTerminal(id, running, [{ kind: 'succeeded', taskId: id, attempt: 1, nodeId: 'node-a', at: T0 + 20 }]);
    expect(violations.map((v) => v.rule)).toEqual(['not-terminal']);
    // What the node said is quoted: here a result that never made it into the log.
    expect(violations[0]?.detail).toMatch(/state running .*the nodes reported succeeded \(attempt 1, node-a/);
  });

  it('multiple-terminal: one terminal event per task (per requeue window)', () => {
    const twice = tamper(done, { type: 'TaskSucceeded', data: { attempt: 1, nodeId: 'node-b', output: null, durationMs: 5, at: at(30) }, recordedAt: T0 + 30 });
    expect(checkTerminal(id, twice).map((v) => v.rule)).toEqual(['multiple-terminal']);
    const requeued = logOf(id, [submit(aSpec(id, { maxAttempts: 1 })), start(1, 10), fail(1, 20, false), { type: 'RequeueTask', data: { actor: 'ops', now: at(30) } }, start(2, 40), succeed(2, 50)]);
    expect(checkTerminal(id, requeued)).toEqual([]);
  });

  it('invalid-transition: dependency decisions (waiting, released, cancelled by a dependency, placement fallback) are what decide makes', () => {
    const dep = newId();
    const withDeps = aSpec(id, { dependsOn: [dep], onDependencyFailure: 'cancel' });
    const none = { pending: 0, succeeded: 0, failed: 0, cancelled: 0, firstFailed: null, firstFailedState: null };
    const resolve = (state: 'succeeded' | 'failed', ms: number, outcomes = { succeeded: 1, failed: 0, cancelled: 0 }): TaskCommand => ({
      type: 'ResolveDependencies',
      data: { resolved: [{ id: dep, state }], remaining: 0, outcomes, now: at(ms) },
    });
    const released = logOf(id, [{ type: 'SubmitTask', data: { task: withDeps, now: at(0), dependencies: { ...none, pending: 1 } } }, resolve('succeeded', 10), start(1, 20), succeed(1, 30)]);
    const atOnce = logOf(id, [{ type: 'SubmitTask', data: { task: withDeps, now: at(0), dependencies: { ...none, succeeded: 1 } } }]);
    const cancelledBy = logOf(id, [{ type: 'SubmitTask', data: { task: withDeps, now: at(0), dependencies: { ...none, pending: 1 } } }, resolve('failed', 10)]);
    const cancelledAtSubmit = logOf(id, [{ type: 'SubmitTask', data: { task: withDeps, now: at(0), dependencies: { ...none, failed: 1, firstFailed: dep, firstFailedState: 'failed' } } }]);
    const runAnyway = logOf(id, [
      { type: 'SubmitTask', data: { task: { ...withDeps, onDependencyFailure: 'run' }, now: at(0), dependencies: { ...none, pending: 1 } } },
      resolve('failed', 10, { succeeded: 0, failed: 1, cancelled: 0 }),
    ]);
    const fallback = logOf(id, [submit(aSpec(id, { placement: { zone: 'site-a' }, fallbackAfterMs: 1000 })), { type: 'FallBackPlacement', data: { attempt: 1, now: at(1000) } }]);
    expect(released.map((e) => e.type)).toContain('TaskReleased');
    expect(cancelledBy.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskCancelled']);
    expect(runAnyway.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskWaiting', 'TaskReleased', 'TaskQueued']);
    expect(fallback.map((e) => e.type)).toEqual(['TaskSubmitted', 'TaskPlacementFallback']);
    for (const events of [released, atOnce, cancelledBy, cancelledAtSubmit, runAnyway, fallback]) expect(checkTransitions(id, events, { backoff: BACKOFF })).toEqual([]);
    // A release the waiting task never had a dependency for: decide does not make it without its TaskWaiting.
    const skipped = released.filter((e) => e.type !== 'TaskWaiting').map((e, k) => ({ ...e, version: k + 1 }));
    expect(checkTransitions(id, skipped, { backoff: BACKOFF }).map((v) => v.rule)).toContain('invalid-transition');
  });

  it('invalid-transition: each event is what decide makes of its command', () => {
    const retried = logOf(id, [submit(aSpec(id)), start(1, 10), fail(1, 20, true, 0.3), start(2, 400), start(2, 500, 'node-b'), succeed(2, 600, 'node-b')]);
    const deadLettered = logOf(id, [submit(aSpec(id)), start(1, 10), deadLetter(1, 20)]);
    const cancelled = logOf(id, [submit(aSpec(id, { notBefore: at(10_000) })), cancel(100)]);
    for (const events of [done, retried, deadLettered, cancelled]) expect(checkTransitions(id, events, { backoff: BACKOFF })).toEqual([]);

    const startedAfterCancel = tamper(cancelled, { type: 'TaskStarted', data: { attempt: 1, nodeId: 'node-a', at: at(200) }, recordedAt: T0 + 200 });
    const v1 = checkTransitions(id, startedAfterCancel, { backoff: BACKOFF });
    expect(v1.map((v) => v.rule)).toEqual(['invalid-transition']);
    expect(v1[0]?.detail).toContain('TaskStarted in state cancelled');

    // A retry scheduled sooner than the backoff allows (attempt 1 fails: delay in [100, 200] ms).
    const early = retried.map((e) => (e.type === 'TaskRetryScheduled' ? { ...e, data: { ...e.data, delayMs: 10, availableAt: at(30) } } : e));
    expect(checkTransitions(id, early, { backoff: BACKOFF }).map((v) => v.detail)).toEqual([expect.stringContaining('retry delay 10 ms is outside')]);

    // An attempt that succeeds without a start on record is fine only when decide makes the start itself.
    const skipped = done.filter((e) => e.type !== 'TaskStarted').map((e, i) => ({ ...e, version: i + 1 }));
    expect(checkTransitions(id, skipped, { backoff: BACKOFF }).map((v) => v.rule)).toEqual(['invalid-transition']);
  });

  it('invalid-transition: TaskProgressed is valid while its node runs the attempt, not after the outcome', () => {
    const pid = newId();
    const progress = (fraction: number, ms: number, nodeId = 'node-a'): TaskCommand => ({
      type: 'ReportProgress',
      data: { attempt: 1, nodeId, fraction, message: `at ${fraction}`, reportedAt: at(ms - 1), now: at(ms) },
    });
    const withProgress = logOf(pid, [submit(aSpec(pid)), start(1, 10), progress(0.5, 12), progress(1, 14), succeed(1, 20)]);
    expect(withProgress.filter((e) => e.type === 'TaskProgressed')).toHaveLength(2);
    expect(checkTransitions(pid, withProgress, { backoff: BACKOFF })).toEqual([]);
    const late = tamper(withProgress, { type: 'TaskProgressed', data: { attempt: 1, nodeId: 'node-a', fraction: 1, message: null, reportedAt: at(30), at: at(31) }, recordedAt: T0 + 31 });
    const v = checkTransitions(pid, late, { backoff: BACKOFF });
    expect(v).toHaveLength(1);
    expect(v[0]?.detail).toContain('TaskProgressed in state succeeded');
  });

  it('attempt-budget: no more attempts than maxAttempts', () => {
    const two = logOf(id, [submit(aSpec(id, { maxAttempts: 2 })), start(1, 10), fail(1, 20, true), start(2, 400), fail(2, 500, true)]);
    expect(checkAttemptBudget(id, two)).toEqual([]);
    const third = tamper(two, { type: 'TaskRetryScheduled', data: { attempt: 3, delayMs: 400, availableAt: at(900), at: at(500) }, recordedAt: T0 + 500 });
    expect(checkAttemptBudget(id, third).map((v) => v.rule)).toEqual(['attempt-budget']);
  });

  it('dead-lettered-unstarted: only an attempt that started (poison) is dead-lettered for the delivery limit', () => {
    const poison = logOf(id, [submit(aSpec(id)), start(1, 10), start(1, 20, 'node-b'), deadLetter(1, 30)]);
    expect(checkDeadLetters(id, poison)).toEqual([]);
    // The domain now returns a never-started attempt (TaskReturned) instead of failing it, so the
    // violating log is written by hand, as the code before issue 15 would have written it.
    const returned = logOf(id, [submit(aSpec(id)), deadLetter(1, 30)]);
    expect(returned.map((e) => e.type)).toContain('TaskReturned');
    expect(checkDeadLetters(id, returned)).toEqual([]);
    const neverStarted = tamper(logOf(id, [submit(aSpec(id))]), { type: 'TaskDeadLettered', data: { attempt: 1, reason: 'delivery-limit', queue: 'tasks.light.normal', at: at(30) }, recordedAt: T0 + 30 });
    expect(checkDeadLetters(id, neverStarted).map((v) => v.rule)).toEqual(['dead-lettered-unstarted']);
    // A start the node reported counts even when its record never reached the log.
    expect(checkDeadLetters(id, neverStarted, [{ kind: 'started', taskId: id, attempt: 1, nodeId: 'node-a', at: T0 + 5 }])).toEqual([]);
  });

  describe('ran-after-cancel and cancel-not-outcome', () => {
    const delayed = newId();
    // Due at +10 s, cancel acknowledged at +1 s.
    const cancelledEarly = logOf(delayed, [submit(aSpec(delayed, { notBefore: at(10_000) })), cancel(900)]);
    const history = historyOf([[delayed, cancelledEarly]]);
    const client: ClientLog = { submits: [], cancels: [{ taskId: delayed, answeredAt: T0 + 1000 }] };
    const startAt = (ms: number): ObservedRecord => ({ kind: 'started', taskId: delayed, attempt: 1, nodeId: 'node-a', at: T0 + ms });

    it('no node starts an attempt that was not due when its cancel was acknowledged', () => {
      expect(checkCancels(history, client, [])).toEqual([]);
      const violations = checkCancels(history, client, [startAt(10_050)]);
      expect(violations.map((v) => v.rule)).toEqual(['ran-after-cancel']);
    });

    it('a start of an attempt already due at the cancel is a race the cancel may lose, not a violation', () => {
      const queued = newId();
      const log = logOf(queued, [submit(aSpec(queued)), cancel(50)]);
      const c: ClientLog = { submits: [], cancels: [{ taskId: queued, answeredAt: T0 + 60 }] };
      expect(checkCancels(historyOf([[queued, log]]), c, [{ kind: 'started', taskId: queued, attempt: 1, nodeId: 'node-a', at: T0 + 70 }])).toEqual([]);
    });

    it('an acknowledged cancel is how the task ends', () => {
      const other = newId();
      const succeeded = logOf(other, [submit(aSpec(other)), start(1, 10), succeed(1, 20)]);
      const violations = checkCancels(historyOf([[other, succeeded]]), { submits: [], cancels: [{ taskId: other, answeredAt: T0 + 15 }] }, []);
      expect(violations.map((v) => v.rule)).toEqual(['cancel-not-outcome']);
    });
  });

  it('outbox-unpublished: nothing due stays in the outbox', () => {
    expect(checkOutbox(historyOf([]))).toEqual([]);
    expect(checkOutbox(historyOf([], { unpublishedDue: [{ id: 7, streamId: id, exchange: 'tasks', availableAt: T0 }] })).map((v) => v.rule)).toEqual(['outbox-unpublished']);
  });

  it('read-models and hash-chain: `projections verify` and `audit verify` exit 0', () => {
    const ok = { code: 0, output: 'ok\n' };
    expect(toolViolations(ok, ok)).toEqual([]);
    const violations = toolViolations({ code: 1, output: 'task_current: 1 row differs\n' }, { code: 1, output: 'BROKEN: stream x version 2\n' });
    expect(violations.map((v) => v.rule)).toEqual(['read-models', 'hash-chain']);
    expect(violations[1]?.detail).toContain('BROKEN: stream x version 2');
  });

  it('read-model-drift: task_current is the fold of the log', () => {
    const row = { status: 'succeeded', version: 3, attempt: 1 };
    expect(checkReadModel(historyOf([[id, done]], { readModel: new Map([[id, row]]) }))).toEqual([]);
    expect(checkReadModel(historyOf([[id, done]], { readModel: new Map([[id, { ...row, status: 'running' }]]) })).map((v) => v.rule)).toEqual(['read-model-drift']);
  });
});

describe('the chaos checker on a whole history', () => {
  it('finds nothing wrong in a correct history and every planted fault in a broken one', () => {
    const ok = newId();
    const stranded = newId();
    const phantom = newId();
    const cancelled = newId();
    const okLog = logOf(ok, [submit(aSpec(ok)), start(1, 10), fail(1, 20, true), start(2, 500), succeed(2, 600)]);
    const strandedLog = logOf(stranded, [submit(aSpec(stranded)), start(1, 10)]);
    const phantomLog = logOf(phantom, [submit(aSpec(phantom, { payload: { ref: 'rejected-one' } })), start(1, 10), succeed(1, 20)]);
    const cancelledLog = logOf(cancelled, [submit(aSpec(cancelled, { notBefore: at(10_000) })), cancel(100)]);
    const client: ClientLog = {
      submits: [
        { ref: refOf(okLog), outcome: 'accepted', taskId: ok },
        { ref: refOf(strandedLog), outcome: 'accepted', taskId: stranded },
        { ref: refOf(cancelledLog), outcome: 'accepted', taskId: cancelled },
        { ref: 'rejected-one', outcome: 'rejected', taskId: null },
      ],
      cancels: [{ taskId: cancelled, answeredAt: T0 + 200 }],
    };
    const settings = { backoff: BACKOFF };

    const good = historyOf([
      [ok, okLog],
      [cancelled, cancelledLog],
    ]);
    expect(checkHistory(good, { submits: client.submits.filter((s) => s.taskId !== stranded && s.ref !== 'rejected-one'), cancels: client.cancels }, [], settings)).toEqual([]);

    const broken = historyOf(
      [
        [ok, okLog],
        [stranded, strandedLog],
        [phantom, phantomLog],
        [cancelled, cancelledLog],
      ],
      { unpublishedDue: [{ id: 3, streamId: stranded, exchange: 'tasks', availableAt: T0 }] },
    );
    const ranAfterCancel: ObservedRecord = { kind: 'started', taskId: cancelled, attempt: 1, nodeId: 'node-b', at: T0 + 10_100 };
    const violations = checkHistory(broken, client, [ranAfterCancel], settings);
    expect(violations.map((v) => [v.rule, v.taskId])).toEqual([
      ['unaccepted-exists', phantom],
      ['not-terminal', stranded],
      ['ran-after-cancel', cancelled],
      ['outbox-unpublished', stranded],
    ]);
  });
});

describe('the chaos checker: dependencies (issue 20), judged across streams by log position', () => {
  // Hand-made streams: each event's position is its place in the log.
  const ev = (position: number, version: number, type: string, data: Record<string, unknown> = {}): LoggedEvent => ({ position, version, type, data: { at: at(position), ...data }, recordedAt: T0 + position });
  const submitted = (taskId: string, position: number, over: Record<string, unknown> = {}) => ev(position, 1, 'TaskSubmitted', { task: { ...aSpec(taskId), ...over } });
  const released = (position: number, version: number, dependency: string) => ev(position, version, 'TaskReleased', { dependency, outcomes: { succeeded: 1, failed: 0, cancelled: 0 } });
  const historyOf = (streams: [string, LoggedEvent[]][]): History => ({ tasks: new Map(streams), scheduleFired: [], unpublishedDue: [] });
  const parent = newId();
  const child = newId();
  const parentSucceeded = [submitted(parent, 1), ev(2, 2, 'TaskQueued'), ev(5, 3, 'TaskStarted'), ev(6, 4, 'TaskSucceeded')];
  const parentFailed = [submitted(parent, 1), ev(2, 2, 'TaskQueued'), ev(5, 3, 'TaskStarted'), ev(6, 4, 'TaskFailed', { reason: 'non-retryable' })];

  it('a task released after its dependency succeeded, and run once, passes', () => {
    const childLog = [submitted(child, 3, { dependsOn: [parent] }), ev(4, 2, 'TaskWaiting', { pending: 1 }), released(7, 3, parent), ev(8, 4, 'TaskQueued'), ev(9, 5, 'TaskStarted'), ev(10, 6, 'TaskSucceeded')];
    expect(checkDependencies(historyOf([[parent, parentSucceeded], [child, childLog]]))).toEqual([]);
  });

  it('dependency-order: released before its dependency ended, or started without a release', () => {
    const early = [submitted(child, 3, { dependsOn: [parent] }), released(4, 2, parent), ev(5, 3, 'TaskQueued')];
    expect(checkDependencies(historyOf([[parent, parentSucceeded], [child, early]])).map((v) => v.rule)).toEqual(['dependency-order']);
    const unreleased = [submitted(child, 3, { dependsOn: [parent] }), ev(4, 2, 'TaskWaiting', { pending: 1 }), ev(9, 3, 'TaskStarted')];
    expect(checkDependencies(historyOf([[parent, parentSucceeded], [child, unreleased]])).map((v) => v.rule)).toContain('dependency-order');
  });

  it('multiple-release: one TaskReleased per task', () => {
    const twice = [submitted(child, 3, { dependsOn: [parent] }), ev(4, 2, 'TaskWaiting', { pending: 1 }), released(7, 3, parent), ev(8, 4, 'TaskQueued'), released(9, 5, parent)];
    expect(checkDependencies(historyOf([[parent, parentSucceeded], [child, twice]])).map((v) => v.rule)).toContain('multiple-release');
  });

  it('dependency-propagation: with policy "cancel" a failed dependency cancels its dependant; with "run" the dependant is released', () => {
    const cancelled = [submitted(child, 3, { dependsOn: [parent] }), ev(4, 2, 'TaskWaiting', { pending: 1 }), ev(7, 3, 'TaskCancelled', { reason: 'dependency-failed', dependency: parent })];
    expect(checkDependencies(historyOf([[parent, parentFailed], [child, cancelled]]))).toEqual([]);
    const ranAnyway = [submitted(child, 3, { dependsOn: [parent] }), ev(4, 2, 'TaskWaiting', { pending: 1 }), released(7, 3, parent), ev(8, 4, 'TaskQueued'), ev(9, 5, 'TaskStarted'), ev(10, 6, 'TaskSucceeded')];
    expect(checkDependencies(historyOf([[parent, parentFailed], [child, ranAnyway]])).map((v) => v.rule)).toEqual(['dependency-order', 'dependency-propagation']);
    const runPolicy = [submitted(child, 3, { dependsOn: [parent], onDependencyFailure: 'run' }), ...ranAnyway.slice(1)];
    expect(checkDependencies(historyOf([[parent, parentFailed], [child, runPolicy]]))).toEqual([]);
  });
});

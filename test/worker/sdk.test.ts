import { describe, expect, it } from 'vitest';
import { decide, evolve, foldTask, initialTaskState, invalidResultBatch, type TaskEvent, type TaskSpec } from '../../src/domain/index.js';
import { createProgressCoalescer, type CoalescerClock, type ProgressReport } from '../../src/fog-node/progress-coalescer.js';
import { defineHandlers, isDefinedHandlers, permanent, retryable } from '../../src/worker/index.js';
import { deserializeError, serializeError } from '../../src/worker/errors.js';
import { checkProgress } from '../../src/worker/runtime.js';

/** A clock the test moves by hand; timers fire when it passes them. */
function fakeClock() {
  let now = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  let next = 1;
  const clock: CoalescerClock = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = next++;
      timers.set(id, { at: now + ms, fn });
      return id;
    },
    clearTimeout: (id) => void timers.delete(id as number),
  };
  const advance = (ms: number) => {
    now += ms;
    for (const [id, t] of [...timers].sort((a, b) => a[1].at - b[1].at)) {
      if (t.at <= now) {
        timers.delete(id);
        t.fn();
      }
    }
  };
  return { clock, advance, pending: () => timers.size };
}

const p = (fraction: number, message: string | null = null): ProgressReport => ({ fraction, message, at: new Date(fraction * 1000).toISOString() });

describe('progress coalescing', () => {
  it('sends the first report at once, then at most one per interval, always the latest', () => {
    const { clock, advance } = fakeClock();
    const sent: ProgressReport[] = [];
    const c = createProgressCoalescer(1000, (r) => sent.push(r), clock);
    c.report(p(0.1));
    expect(sent.map((r) => r.fraction)).toEqual([0.1]);
    advance(100);
    c.report(p(0.2));
    c.report(p(0.3));
    expect(sent.map((r) => r.fraction)).toEqual([0.1]);
    advance(900);
    expect(sent.map((r) => r.fraction)).toEqual([0.1, 0.3]);
    advance(5000);
    c.report(p(0.4)); // the interval passed long ago: at once
    expect(sent.map((r) => r.fraction)).toEqual([0.1, 0.3, 0.4]);
  });

  it('flush sends the waiting report (before the outcome) and nothing after it', () => {
    const { clock, advance, pending } = fakeClock();
    const sent: ProgressReport[] = [];
    const c = createProgressCoalescer(1000, (r) => sent.push(r), clock);
    c.report(p(0.5));
    advance(10);
    c.report(p(0.9, 'almost'));
    c.flush();
    expect(sent.map((r) => [r.fraction, r.message])).toEqual([
      [0.5, null],
      [0.9, 'almost'],
    ]);
    expect(pending()).toBe(0);
    c.report(p(1));
    advance(5000);
    c.flush();
    expect(sent).toHaveLength(2);
  });

  it('flush with nothing waiting sends nothing; an interval of 0 sends every report', () => {
    const { clock } = fakeClock();
    const sent: ProgressReport[] = [];
    const c = createProgressCoalescer(1000, (r) => sent.push(r), clock);
    c.report(p(0.5));
    c.flush();
    expect(sent).toHaveLength(1);
    const all: ProgressReport[] = [];
    const every = createProgressCoalescer(0, (r) => all.push(r), clock);
    for (const f of [0.1, 0.2, 0.3]) every.report(p(f));
    expect(all.map((r) => r.fraction)).toEqual([0.1, 0.2, 0.3]);
  });
});

describe('defineHandlers', () => {
  it('takes any non-empty string as a type name and brands the result', () => {
    const defined = defineHandlers({ 'email.send': () => 1, 'image/resize:v2': () => 2 });
    expect(isDefinedHandlers(defined)).toBe(true);
    expect(Object.keys(defined.handlers)).toEqual(['email.send', 'image/resize:v2']);
    expect(isDefinedHandlers({ handlers: {} })).toBe(false);
  });

  it('refuses an empty or padded name and a handler that is not a function, naming it', () => {
    expect(() => defineHandlers({ '': () => 1 })).toThrow(/"" is not a task type name/);
    expect(() => defineHandlers({ ' x': () => 1 })).toThrow(/" x" is not a task type name/);
    expect(() => defineHandlers({ ok: 42 as never })).toThrow('the handler of ok is not a function');
  });
});

describe('ctx.progress validation', () => {
  it('accepts a fraction in [0, 1] with an optional message of at most 1,000 characters', () => {
    expect(() => checkProgress(0, undefined)).not.toThrow();
    expect(() => checkProgress(1, 'x'.repeat(1000))).not.toThrow();
  });
  it.each([[-0.1], [1.01], [Number.NaN], [Infinity], ['0.5']])('refuses fraction %s with a RangeError that says why', (fraction) => {
    expect(() => checkProgress(fraction, undefined)).toThrow(/fraction must be a number in \[0, 1\]/);
  });
  it('refuses a message that is too long or not a string', () => {
    expect(() => checkProgress(0.5, 'x'.repeat(1001))).toThrow('message is 1001 characters, at most 1000 allowed');
    expect(() => checkProgress(0.5, 42)).toThrow('message must be a string');
  });
});

describe('errors across the thread boundary', () => {
  class QuotaError extends Error {
    code = 'quota';
  }
  it('keeps class name, message, code and retryable', () => {
    const s = serializeError(permanent(new QuotaError('used up')));
    expect(s).toEqual({ name: 'QuotaError', message: 'used up', code: 'quota', retryable: false });
    const back = deserializeError(s);
    expect(back).toBeInstanceOf(Error);
    expect([back.name, back.message, back.code, back.retryable]).toEqual(['QuotaError', 'used up', 'quota', false]);
  });
  it('defaults code handler_error and retryable true; wraps a thrown non-Error', () => {
    expect(serializeError(new TypeError('bad'))).toEqual({ name: 'TypeError', message: 'bad', code: 'handler_error', retryable: true });
    expect(serializeError('plain text')).toEqual({ name: 'Error', message: 'plain text', code: 'handler_error', retryable: true });
    expect(serializeError(retryable({ reason: 'x' }))).toMatchObject({ message: '{"reason":"x"}', retryable: true });
  });
});

describe('TaskProgressed in the domain', () => {
  const at = '2026-01-01T00:00:00.000Z';
  const spec: TaskSpec = {
    taskId: '00000000-0000-4000-8000-000000000001',
    tenant: 't',
    type: 'email.send',
    payload: null,
    priority: 'normal',
    resources: { cpu: 0.1, memoryMb: 64 },
    tier: 'light',
    maxAttempts: 3,
    timeoutMs: null,
    notBefore: null,
    deadline: null,
    idempotencyKey: null,
  };
  const running = foldTask(spec.taskId, [
    { type: 'TaskSubmitted', data: { task: spec, at } },
    { type: 'TaskQueued', data: { attempt: 1, tier: 'light', priority: 'normal', availableAt: at, at } },
    { type: 'TaskStarted', data: { attempt: 1, nodeId: 'n1', at } },
  ]);
  const report = (over: Partial<{ attempt: number; nodeId: string }> = {}) =>
    decide(running, { type: 'ReportProgress', data: { attempt: 1, nodeId: 'n1', fraction: 0.4, message: 'resized 4 of 10', reportedAt: at, now: at, ...over } });

  it('records the running attempt’s report and shows it on the task; a new start clears it', () => {
    const events = report();
    expect(events).toEqual([{ type: 'TaskProgressed', data: { attempt: 1, nodeId: 'n1', fraction: 0.4, message: 'resized 4 of 10', reportedAt: at, at } }]);
    const after = evolve(running, events[0] as TaskEvent);
    expect(after.progress).toEqual({ fraction: 0.4, message: 'resized 4 of 10', at });
    expect(after.status).toBe('running');
    expect(after.version).toBe(running.version + 1);
    expect(evolve(after, { type: 'TaskStarted', data: { attempt: 1, nodeId: 'n2', at } }).progress).toBeNull();
  });

  it('ignores a report of another attempt, another node, or a task no longer running', () => {
    expect(report({ attempt: 2 })).toEqual([]);
    expect(report({ nodeId: 'n2' })).toEqual([]);
    const done = evolve(running, { type: 'TaskSucceeded', data: { attempt: 1, nodeId: 'n1', output: null, durationMs: 1, at } });
    expect(decide(done, { type: 'ReportProgress', data: { attempt: 1, nodeId: 'n1', fraction: 1, message: null, reportedAt: at, now: at } })).toEqual([]);
    expect(initialTaskState(spec.taskId).progress).toBeNull();
  });

  it('a progress record outside [0, 1] is a malformed result batch', () => {
    const base = { kind: 'progress', taskId: spec.taskId, attempt: 1, at, message: null };
    expect(invalidResultBatch({ nodeId: 'n', tier: 'light', records: [{ ...base, fraction: 0.5 }] })).toBeNull();
    expect(invalidResultBatch({ nodeId: 'n', tier: 'light', records: [{ ...base, fraction: 1.5 }] })).toMatch(/progress record/);
  });

  it('a refusal for memory (too-large-for-tier) fails the task without a made-up start', () => {
    const queued = foldTask(spec.taskId, [
      { type: 'TaskSubmitted', data: { task: spec, at } },
      { type: 'TaskQueued', data: { attempt: 1, tier: 'light', priority: 'normal', availableAt: at, at } },
    ]);
    const events = decide(queued, {
      type: 'FailTask',
      data: { attempt: 1, nodeId: 'n1', error: { code: 'too-large-for-tier', message: 'm', retryable: false }, startedAt: at, backoff: { baseMs: 1, factor: 2, maxMs: 10 }, random: 0, now: at },
    });
    expect(events.map((e) => e.type)).toEqual(['TaskAttemptFailed', 'TaskFailed']);
  });
});

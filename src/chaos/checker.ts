import * as domain from '../domain/index.js';
import {
  canonicalJson,
  decide,
  dispatchOf,
  evolve,
  initialTaskState,
  isTerminal,
  retryDelayMs,
  type BackoffOptions,
  type TaskCommand,
  type TaskEvent,
  type TaskState,
} from '../domain/index.js';

/**
 * The history checker of the chaos run: pure functions over what the run recorded (the
 * client's requests and answers, the starts the fog nodes reported) and what PostgreSQL holds
 * afterwards (the event log, the outbox, task_current). Each rule is one function; the domain's
 * own `decide` and `evolve` judge the order of events, nothing here restates them.
 */

/** One event of a task stream, `data` already upcast to the current schema. */
export interface LoggedEvent {
  readonly position: number;
  readonly version: number;
  readonly type: string;
  readonly data: Record<string, unknown>;
  /** When its transaction wrote it (ms since epoch). */
  readonly recordedAt: number;
}

/** One logical submit of the client (a single submit, or one item of a batch), after its retries. */
export interface SubmitOutcome {
  /** The client's own reference, carried in the payload (`payload.ref`) and as Idempotency-Key. */
  readonly ref: string;
  /**
   * accepted: some answer was 2xx; rejected: every answer was 4xx (or a refused connection,
   * so the request never arrived); unknown: an answer was lost (timeout, reset, 5xx) and none was 2xx.
   */
  readonly outcome: 'accepted' | 'rejected' | 'unknown';
  /** The id a 2xx answer named. */
  readonly taskId: string | null;
}

/** A cancel the API answered with 2xx: it was committed before `answeredAt`. */
export interface AcknowledgedCancel {
  readonly taskId: string;
  /** When the client got the answer (ms since epoch, the machine's clock, like the log's times). */
  readonly answeredAt: number;
}

/** A record a fog node reported (seen on the results exchange): `started` is a run. */
export interface ObservedRecord {
  readonly kind: string;
  readonly taskId: string;
  readonly attempt: number;
  readonly nodeId: string;
  /** The node's clock (ms since epoch). */
  readonly at: number;
}

export interface OutboxLeftover {
  readonly id: number;
  readonly streamId: string;
  readonly exchange: string;
  readonly availableAt: number;
}

export interface ReadModelRow {
  readonly status: string;
  readonly version: number;
  readonly attempt: number;
}

export interface History {
  /** Every task stream, events in version order. */
  readonly tasks: ReadonlyMap<string, readonly LoggedEvent[]>;
  /** Task ids named by ScheduleFired events. */
  readonly scheduleFired: readonly string[];
  /** Outbox rows still unpublished and due at the end. */
  readonly unpublishedDue: readonly OutboxLeftover[];
  /** task_current rows by task id (left out: no read-model rule). */
  readonly readModel?: ReadonlyMap<string, ReadModelRow>;
  /** MessageDeadLettered events (messages ingest set aside); reported, not judged. */
  readonly deadLetteredMessages?: number;
}

export interface ClientLog {
  readonly submits: readonly SubmitOutcome[];
  readonly cancels: readonly AcknowledgedCancel[];
}

export interface CheckSettings {
  /** The servers' default retry backoff (RETRY_BASE_MS, RETRY_FACTOR, RETRY_MAX_MS). */
  readonly backoff: BackoffOptions;
}

export const RULES = {
  'lost-submit': 'an accepted submit has no task',
  'duplicate-submit': 'one submit made more than one task, or a task other than the one its answer named',
  'unaccepted-exists': 'a task exists for a submit that was answered 4xx',
  'phantom-task': 'a task exists that no client submit or schedule run asked for',
  'schedule-fired-missing': 'a ScheduleFired event names a task that does not exist',
  'not-terminal': 'a task has no terminal event after the recovery period',
  'multiple-terminal': 'a task has more than one terminal event (per requeue window)',
  'invalid-transition': 'an event is not one decide could have produced from the state before it',
  'dead-lettered-unstarted': 'a task was dead-lettered for its delivery limit although that attempt never started (graceful returns counted as poison)',
  'attempt-budget': 'more attempts were dispatched than maxAttempts allows (returns re-dispatch the same attempt and do not count)',
  'ran-after-cancel': 'an attempt started on a node although the cancel was committed before that attempt was even due',
  'cancel-not-outcome': 'a cancel was answered 2xx but the task ended otherwise',
  'outbox-unpublished': 'a due outbox row is still unpublished after the recovery period',
  'read-model-drift': 'task_current differs from the fold of the task\'s events',
  'dependency-order': 'a task was released before its dependencies ended as its policy requires (all succeeded for "cancel", all ended for "run")',
  'dependency-propagation': 'a dependency failed or was cancelled, yet its dependant (policy "cancel") did not end cancelled',
  'multiple-release': 'a task was released (TaskReleased) more than once',
  'read-models': '`fogsched projections verify` found the read models differ from a replay',
  'hash-chain': '`fogsched audit verify` found a broken hash chain',
} as const;

export type RuleName = keyof typeof RULES;

export interface Violation {
  readonly rule: RuleName;
  readonly taskId?: string;
  readonly detail: string;
}

const TERMINAL_EVENTS = new Set(['TaskSucceeded', 'TaskFailed', 'TaskCancelled', 'TaskDeadLettered']);

export function isTerminalEvent(type: string): boolean {
  return TERMINAL_EVENTS.has(type);
}

/** Runs every rule that needs no external tool; returns the violations in rule order. */
export function checkHistory(history: History, client: ClientLog, observed: readonly ObservedRecord[], settings: CheckSettings): Violation[] {
  const reported = new Map<string, ObservedRecord[]>();
  for (const r of observed) reported.set(r.taskId, [...(reported.get(r.taskId) ?? []), r]);
  return [
    ...checkSubmits(history, client),
    ...checkScheduleRuns(history),
    ...[...history.tasks].flatMap(([taskId, events]) => [
      ...checkTerminal(taskId, events, reported.get(taskId)),
      ...checkTransitions(taskId, events, settings),
      ...checkAttemptBudget(taskId, events),
      ...checkDeadLetters(taskId, events, reported.get(taskId)),
    ]),
    ...checkCancels(history, client, observed),
    ...checkDependencies(history),
    ...checkOutbox(history),
    ...checkReadModel(history),
  ];
}

/** The client reference a task was submitted with (`payload.ref`), if any. */
export function refOf(events: readonly LoggedEvent[]): string | null {
  const submitted = events.find((e) => e.type === 'TaskSubmitted');
  const payload = (submitted?.data.task as { payload?: unknown } | undefined)?.payload;
  const ref = (payload as { ref?: unknown } | null | undefined)?.ref;
  return typeof ref === 'string' ? ref : null;
}

/** Accepted submits exist exactly once; rejected ones not at all; nothing exists that nobody asked for. */
export function checkSubmits(history: History, client: ClientLog): Violation[] {
  const violations: Violation[] = [];
  const byRef = new Map<string, string[]>();
  for (const [taskId, events] of history.tasks) {
    const ref = refOf(events);
    if (ref === null) continue;
    byRef.set(ref, [...(byRef.get(ref) ?? []), taskId]);
  }
  const fired = new Set(history.scheduleFired);
  const known = new Set<string>();
  for (const s of client.submits) {
    known.add(s.ref);
    const found = byRef.get(s.ref) ?? [];
    if (s.outcome === 'accepted') {
      if (s.taskId !== null && !history.tasks.has(s.taskId)) violations.push({ rule: 'lost-submit', taskId: s.taskId, detail: `submit ${s.ref} was answered 2xx with task ${s.taskId}, which has no events` });
      else if (s.taskId === null && found.length === 0) violations.push({ rule: 'lost-submit', detail: `submit ${s.ref} was answered 2xx and no task carries its ref` });
      const others = found.filter((id) => id !== s.taskId);
      if (others.length > 0 && s.taskId !== null) {
        violations.push({ rule: 'duplicate-submit', taskId: others[0], detail: `submit ${s.ref} was answered with task ${s.taskId}, yet task(s) ${others.join(', ')} also carry its ref` });
      }
    } else if (s.outcome === 'rejected') {
      for (const id of found) violations.push({ rule: 'unaccepted-exists', taskId: id, detail: `submit ${s.ref} was answered 4xx, yet task ${id} exists` });
    } else if (found.length > 1) {
      violations.push({ rule: 'duplicate-submit', taskId: found[1], detail: `submit ${s.ref} (answer lost) made ${found.length} tasks: ${found.join(', ')}` });
    }
  }
  for (const [taskId, events] of history.tasks) {
    if (fired.has(taskId)) continue;
    const ref = refOf(events);
    if (ref === null || !known.has(ref)) {
      violations.push({ rule: 'phantom-task', taskId, detail: `task ${taskId} (ref ${ref ?? 'none'}) matches no client submit and no schedule run` });
    }
  }
  return violations;
}

/** Every ScheduleFired names a task that exists. */
export function checkScheduleRuns(history: History): Violation[] {
  return history.scheduleFired
    .filter((taskId) => !history.tasks.has(taskId))
    .map((taskId) => ({ rule: 'schedule-fired-missing' as const, taskId, detail: `ScheduleFired names task ${taskId}, which has no events` }));
}

/** Splits a stream at each TaskRequeued: each window is one budget of attempts and ends in one terminal event. */
function windows(events: readonly LoggedEvent[]): LoggedEvent[][] {
  const out: LoggedEvent[][] = [[]];
  for (const e of events) {
    if (e.type === 'TaskRequeued') out.push([]);
    (out[out.length - 1] as LoggedEvent[]).push(e);
  }
  return out;
}

/**
 * Exactly one terminal event per window (a requeue opens the next window). `reported`: what
 * the nodes said of the task, quoted for a task that did not end (a result lost on its way?).
 */
export function checkTerminal(taskId: string, events: readonly LoggedEvent[], reported: readonly ObservedRecord[] = []): Violation[] {
  const violations: Violation[] = [];
  const ws = windows(events);
  ws.forEach((w, i) => {
    const terminals = w.filter((e) => isTerminalEvent(e.type));
    if (terminals.length > 1) {
      violations.push({ rule: 'multiple-terminal', taskId, detail: `${terminals.map((e) => `${e.type}@v${e.version}`).join(', ')}${ws.length > 1 ? ` in requeue window ${i}` : ''}` });
    } else if (terminals.length === 0) {
      const last = w[w.length - 1];
      const state = events.reduce((s, e) => evolve(s, asTaskEvent(e)), initialTaskState(taskId));
      violations.push({
        rule: 'not-terminal',
        taskId,
        detail:
          `state ${state.status} (attempt ${state.attempt}) since ${last?.type ?? 'nothing'} at ${last ? new Date(last.recordedAt).toISOString() : '-'}` +
          `; the nodes reported ${reported.length === 0 ? 'nothing' : reported.map((r) => `${r.kind} (attempt ${r.attempt}, ${r.nodeId}, ${new Date(r.at).toISOString()})`).join(', ')}`,
      });
    }
  });
  return violations;
}

function asTaskEvent(e: LoggedEvent): TaskEvent {
  return { type: e.type, data: e.data } as unknown as TaskEvent;
}

/**
 * The command that would have produced `e` from `state`, built from the event's own data
 * (spread, so fields a newer domain adds travel along). Null for an event no command makes
 * on its own (a TaskQueued without its TaskReleased, a TaskRetryScheduled without its
 * TaskAttemptFailed).
 */
function commandFor(state: TaskState, e: LoggedEvent, settings: CheckSettings, next?: LoggedEvent): TaskCommand | null {
  const d = e.data as Record<string, unknown> & { at: string };
  const now = d.at;
  switch (e.type) {
    case 'TaskSubmitted':
      return { type: 'SubmitTask', data: { ...d, now, ...submitDependencies(next) } } as unknown as TaskCommand;
    case 'TaskReleased': {
      // A waiting task's release by the dependency it names (the outcomes are the log's).
      const dependency = typeof d.dependency === 'string' ? d.dependency : null;
      if (dependency === null) return null;
      return { type: 'ResolveDependencies', data: { resolved: [{ id: dependency, state: 'succeeded' }], remaining: 0, outcomes: d.outcomes, now } } as unknown as TaskCommand;
    }
    case 'TaskPlacementFallback':
      return { type: 'FallBackPlacement', data: { attempt: d.attempt, now } } as unknown as TaskCommand;
    case 'TaskStarted':
      return { type: 'StartTask', data: { ...d, now } } as unknown as TaskCommand;
    case 'TaskProgressed':
      // Valid only while its node runs the current attempt (decide ignores it otherwise).
      return { type: 'ReportProgress', data: { ...d, now } } as unknown as TaskCommand;
    case 'TaskSucceeded':
      return { type: 'SucceedTask', data: { ...d, startedAt: state.startedAt ?? now, now } } as unknown as TaskCommand;
    case 'TaskAttemptFailed':
      // startedAt null: a start the command implies is in the log as its own TaskStarted already.
      return { type: 'FailTask', data: { ...d, startedAt: null, backoff: settings.backoff, random: 0, now } } as unknown as TaskCommand;
    case 'TaskDeadLettered':
      return { type: 'DeadLetterTask', data: { ...d, now } } as unknown as TaskCommand;
    case 'TaskCancelled':
      if (typeof d.dependency === 'string' && state.status === 'waiting') {
        const resolved = [{ id: d.dependency, state: d.dependencyState }];
        return { type: 'ResolveDependencies', data: { resolved, remaining: 1, outcomes: { succeeded: 0, failed: 0, cancelled: 0 }, now } } as unknown as TaskCommand;
      }
      return { type: 'CancelTask', data: { ...d, now } } as unknown as TaskCommand;
    case 'TaskRequeued':
      return { type: 'RequeueTask', data: { ...d, now } } as unknown as TaskCommand;
    case 'TaskReturned':
      // Issue 15's graceful return (ReturnTask): the same attempt goes back to its queue.
      return { type: 'ReturnTask', data: { ...d, now } } as unknown as TaskCommand;
    default:
      return null;
  }
}

/**
 * What a submit saw of its dependencies, told by the event after its TaskSubmitted: TaskWaiting
 * (some had not ended), TaskReleased (all had), or a TaskCancelled naming a failed one.
 */
function submitDependencies(next: LoggedEvent | undefined): { dependencies?: Record<string, unknown> } {
  const none = { pending: 0, succeeded: 0, failed: 0, cancelled: 0, firstFailed: null, firstFailedState: null };
  const d = next?.data ?? {};
  switch (next?.type) {
    case 'TaskWaiting':
      return { dependencies: { ...none, pending: d.pending } };
    case 'TaskReleased':
      return { dependencies: { ...none, ...(d.outcomes as Record<string, unknown>) } };
    case 'TaskCancelled':
      return typeof d.dependency === 'string' ? { dependencies: { ...none, pending: 0, firstFailed: d.dependency, firstFailedState: d.dependencyState } } : {};
    default:
      return {};
  }
}

/**
 * Folds the stream with the domain's evolve and checks each step is what decide makes of the
 * command the event stands for: same events, same data. A retry's delay is drawn at random,
 * so for TaskRetryScheduled the delay is checked against the backoff's bounds instead.
 */
export function checkTransitions(taskId: string, events: readonly LoggedEvent[], settings: CheckSettings): Violation[] {
  const violations: Violation[] = [];
  let state = initialTaskState(taskId);
  let i = 0;
  while (i < events.length) {
    const e = events[i] as LoggedEvent;
    const problem = explainStep(state, events, i, settings);
    if (problem.ok) {
      for (let k = 0; k < problem.count; k++) state = evolve(state, asTaskEvent(events[i + k] as LoggedEvent));
      i += problem.count;
      continue;
    }
    violations.push({ rule: 'invalid-transition', taskId, detail: `v${e.version} ${e.type} in state ${state.status} (attempt ${state.attempt}): ${problem.why}` });
    // Past the whole decision when only its data was wrong, so one bad step is reported once.
    for (let k = 0; k < problem.count; k++) state = evolve(state, asTaskEvent(events[i + k] as LoggedEvent));
    i += problem.count;
  }
  return violations;
}

/** `count`: the log events the step covers. */
type Step = { ok: boolean; count: number; why?: string };

function explainStep(state: TaskState, events: readonly LoggedEvent[], i: number, settings: CheckSettings): Step {
  const e = events[i] as LoggedEvent;
  const bad = (why: string, count = 1): Step => ({ ok: false, count, why });
  if (e.version !== state.version + 1) return bad(`stream version ${e.version} after ${state.version}`);
  const command = commandFor(state, e, settings, events[i + 1]);
  if (!command) return bad('no command produces this event on its own');
  let produced: TaskEvent[];
  try {
    produced = decide(state, command);
  } catch (error) {
    return bad(`decide refuses ${command.type}: ${(error as Error).message}`);
  }
  if (produced.length === 0) return bad(`decide makes no event of ${command.type} here (a duplicate or late command)`);
  const logged = events.slice(i, i + produced.length);
  const types = (list: readonly { type: string }[]) => list.map((x) => x.type).join(', ');
  if (types(logged) !== types(produced)) return bad(`decide makes ${types(produced)}; the log has ${types(logged)}`);
  for (let k = 0; k < produced.length; k++) {
    const want = produced[k] as TaskEvent;
    const got = logged[k] as LoggedEvent;
    if (k > 0 && got.version !== e.version + k) return bad(`stream version ${got.version} inside one decision`, produced.length);
    if (want.type === 'TaskRetryScheduled') {
      const why = retryMismatch(state, want, got, settings);
      if (why) return bad(why, produced.length);
      continue;
    }
    if (canonicalJson(want.data) !== canonicalJson(got.data)) return bad(`${got.type} data ${canonicalJson(got.data)} is not decide's ${canonicalJson(want.data)}`, produced.length);
  }
  return { ok: true, count: produced.length };
}

function retryMismatch(state: TaskState, want: TaskEvent & { type: 'TaskRetryScheduled' }, got: LoggedEvent, settings: CheckSettings): string | null {
  const { delayMs, availableAt, ...rest } = got.data as { delayMs: number; availableAt: string; [k: string]: unknown };
  const { delayMs: _d, availableAt: _a, ...wantRest } = want.data;
  if (canonicalJson(rest) !== canonicalJson(wantRest)) return `TaskRetryScheduled data ${canonicalJson(got.data)} is not decide's ${canonicalJson(want.data)} (delay aside)`;
  const failedAttempt = want.data.attempt - 1 - state.firstAttempt + 1;
  const backoff = state.spec?.retry ?? settings.backoff;
  const lo = retryDelayMs(failedAttempt, backoff, 0);
  const hi = retryDelayMs(failedAttempt, backoff, 1);
  if (!(delayMs >= lo && delayMs <= hi)) return `retry delay ${delayMs} ms is outside the backoff's [${lo}, ${hi}] ms`;
  if (Date.parse(availableAt) !== Date.parse(want.data.at) + delayMs) return `retry availableAt ${availableAt} is not at + ${delayMs} ms`;
  return null;
}


/** Within each requeue window, the attempts dispatched (distinct attempt numbers) stay within maxAttempts. */
export function checkAttemptBudget(taskId: string, events: readonly LoggedEvent[]): Violation[] {
  const submitted = events.find((e) => e.type === 'TaskSubmitted');
  const maxAttempts = (submitted?.data.task as { maxAttempts?: number } | undefined)?.maxAttempts;
  if (typeof maxAttempts !== 'number') return [];
  const violations: Violation[] = [];
  windows(events).forEach((w, i) => {
    const attempts = new Set(w.flatMap((e) => dispatchOf(asTaskEvent(e))?.attempt ?? []));
    if (attempts.size > maxAttempts) {
      violations.push({ rule: 'attempt-budget', taskId, detail: `${attempts.size} attempts dispatched (${[...attempts].join(', ')}) with maxAttempts ${maxAttempts}${i > 0 ? ` in requeue window ${i}` : ''}` });
    }
  });
  return violations;
}

/**
 * Returns of an unstarted attempt after which a dead-letter is allowed again (issue 15's
 * MAX_RETURNS; read from the domain when it has it).
 */
const MAX_RETURNS = (domain as { MAX_RETURNS?: number }).MAX_RETURNS ?? 5;

/**
 * The delivery limit is for poison, a task that takes its runner down: a task whose attempt
 * never started (no TaskStarted, no start any node reported) must not be dead-lettered for it,
 * unless it was returned MAX_RETURNS times (TaskReturned) first.
 */
export function checkDeadLetters(taskId: string, events: readonly LoggedEvent[], reported: readonly ObservedRecord[] = []): Violation[] {
  const violations: Violation[] = [];
  for (const e of events) {
    if (e.type !== 'TaskDeadLettered' || e.data.reason !== 'delivery-limit') continue;
    const attempt = e.data.attempt as number;
    const started = events.some((x) => x.type === 'TaskStarted' && x.data.attempt === attempt) || reported.some((r) => r.kind === 'started' && r.attempt === attempt);
    const returns = events.filter((x) => x.type === 'TaskReturned' && x.data.attempt === attempt).length;
    if (!started && returns < MAX_RETURNS) {
      violations.push({ rule: 'dead-lettered-unstarted', taskId, detail: `attempt ${attempt} dead-lettered (delivery-limit) at v${e.version} without ever starting (${returns} recorded returns)` });
    }
  }
  return violations;
}

/**
 * A cancel the API acknowledged at `answeredAt` was committed by then. An attempt whose dispatch
 * was not yet due at that moment cannot have been published before the cancel (the relay
 * publishes a row only once it is due), so no node may start that attempt. Also: the task ends
 * cancelled.
 */
export function checkCancels(history: History, client: ClientLog, observed: readonly ObservedRecord[]): Violation[] {
  const violations: Violation[] = [];
  const starts = new Map<string, ObservedRecord[]>();
  for (const s of observed) if (s.kind === 'started') starts.set(s.taskId, [...(starts.get(s.taskId) ?? []), s]);
  const earliestCancel = new Map<string, number>();
  for (const c of client.cancels) earliestCancel.set(c.taskId, Math.min(earliestCancel.get(c.taskId) ?? Infinity, c.answeredAt));
  for (const [taskId, answeredAt] of earliestCancel) {
    const events = history.tasks.get(taskId);
    if (!events) continue; // the submit rules report a missing task
    const terminals = events.filter((e) => isTerminalEvent(e.type));
    const last = terminals[terminals.length - 1];
    if (last && last.type !== 'TaskCancelled') {
      violations.push({ rule: 'cancel-not-outcome', taskId, detail: `cancel answered 2xx at ${new Date(answeredAt).toISOString()}, yet the task ended ${last.type}` });
    }
    // The earliest moment each attempt could have been on a queue.
    const due = new Map<number, number>();
    for (const e of events) {
      const d = dispatchOf(asTaskEvent(e));
      if (d) due.set(d.attempt, Math.min(due.get(d.attempt) ?? Infinity, Date.parse(d.availableAt)));
    }
    for (const s of starts.get(taskId) ?? []) {
      const dueAt = due.get(s.attempt);
      if (dueAt !== undefined && dueAt > answeredAt) {
        violations.push({
          rule: 'ran-after-cancel',
          taskId,
          detail: `attempt ${s.attempt} started on ${s.nodeId} at ${new Date(s.at).toISOString()}; the cancel was acknowledged at ${new Date(answeredAt).toISOString()}, before the attempt was due (${new Date(dueAt).toISOString()})`,
        });
      }
    }
  }
  return violations;
}

interface DependencySpec {
  readonly dependsOn?: readonly string[];
  readonly onDependencyFailure?: 'cancel' | 'run';
}

/**
 * Issue 20, judged across streams by log position (a release is written after, and in the
 * same or a later transaction than, the end that caused it, so its position is higher):
 * a task with dependencies is released at most once; only after every dependency succeeded
 * (policy "cancel") or ended (policy "run"); it never starts unreleased; and with policy
 * "cancel" a dependency that failed or was cancelled ends it cancelled, never run.
 */
export function checkDependencies(history: History): Violation[] {
  const violations: Violation[] = [];
  for (const [taskId, events] of history.tasks) {
    const spec = events.find((e) => e.type === 'TaskSubmitted')?.data.task as DependencySpec | undefined;
    const deps = spec?.dependsOn ?? [];
    if (deps.length === 0) continue;
    const policy = spec?.onDependencyFailure ?? 'cancel';
    const releases = events.filter((e) => e.type === 'TaskReleased');
    if (releases.length > 1) violations.push({ rule: 'multiple-release', taskId, detail: `${releases.length} TaskReleased events (${releases.map((e) => `v${e.version}`).join(', ')})` });
    const release = releases[0];
    const started = events.find((e) => e.type === 'TaskStarted');
    if (started && (!release || started.position < release.position)) {
      violations.push({ rule: 'dependency-order', taskId, detail: `TaskStarted at v${started.version} ${release ? 'before' : 'without'} its release` });
    }
    const failedDeps: string[] = [];
    for (const dep of deps) {
      const depEvents = history.tasks.get(dep) ?? [];
      const firstEnd = depEvents.find((e) => isTerminalEvent(e.type));
      if (firstEnd && firstEnd.type !== 'TaskSucceeded') failedDeps.push(`${dep} (${firstEnd.type})`);
      if (!release) continue;
      const endedBefore = depEvents.filter((e) => isTerminalEvent(e.type) && e.position < release.position);
      const ok = policy === 'run' ? endedBefore.length > 0 : endedBefore.some((e) => e.type === 'TaskSucceeded');
      if (!ok) {
        violations.push({
          rule: 'dependency-order',
          taskId,
          detail: `released at position ${release.position} (policy ${policy}) while dependency ${dep} had ${endedBefore.length === 0 ? 'not ended' : `ended ${endedBefore.map((e) => e.type).join(', ')}`}`,
        });
      }
    }
    if (policy === 'cancel' && failedDeps.length > 0) {
      const ends = events.filter((e) => isTerminalEvent(e.type));
      const end = ends[ends.length - 1];
      if (release || (end && end.type !== 'TaskCancelled' && !(end.type === 'TaskFailed' && end.data.reason === 'expired'))) {
        violations.push({
          rule: 'dependency-propagation',
          taskId,
          detail: `dependencies ${failedDeps.join(', ')} did not succeed, yet the task ${release ? 'was released' : `ended ${end?.type ?? 'nowhere'}`}`,
        });
      }
    }
  }
  return violations;
}

export function checkOutbox(history: History): Violation[] {
  return history.unpublishedDue.map((row) => ({
    rule: 'outbox-unpublished' as const,
    taskId: row.streamId,
    detail: `outbox row ${row.id} (${row.exchange}) due since ${new Date(row.availableAt).toISOString()} is unpublished`,
  }));
}

export function checkReadModel(history: History): Violation[] {
  if (!history.readModel) return [];
  const violations: Violation[] = [];
  for (const [taskId, events] of history.tasks) {
    const folded = events.reduce((s, e) => evolve(s, asTaskEvent(e)), initialTaskState(taskId));
    const row = history.readModel.get(taskId);
    if (!row) {
      violations.push({ rule: 'read-model-drift', taskId, detail: `no task_current row; the log says ${folded.status} v${folded.version}` });
    } else if (row.status !== folded.status || row.version !== folded.version || row.attempt !== folded.attempt) {
      violations.push({
        rule: 'read-model-drift',
        taskId,
        detail: `task_current has ${row.status} v${row.version} attempt ${row.attempt}; the log folds to ${folded.status} v${folded.version} attempt ${folded.attempt}`,
      });
    }
  }
  for (const taskId of history.readModel.keys()) {
    if (!history.tasks.has(taskId)) violations.push({ rule: 'read-model-drift', taskId, detail: 'a task_current row without events' });
  }
  return violations;
}

/** The two checks the CLI does itself: `fogsched projections verify` and `fogsched audit verify` (exit 0 each). */
export function toolViolations(projectionsVerify: { code: number; output: string }, auditVerify: { code: number; output: string }): Violation[] {
  const tail = (text: string, lines: number) => text.trim().split('\n').slice(-lines).join(' | ');
  return [
    ...(projectionsVerify.code === 0 ? [] : [{ rule: 'read-models' as const, detail: `projections verify exited ${projectionsVerify.code}: ${tail(projectionsVerify.output, 5)}` }]),
    ...(auditVerify.code === 0 ? [] : [{ rule: 'hash-chain' as const, detail: `audit verify exited ${auditVerify.code}: ${tail(auditVerify.output, 3)}` }]),
  ];
}

/** How each task ended, for the report: succeeded, failed (by reason), cancelled, or its state when it did not end. */
export function outcomeOf(taskId: string, events: readonly LoggedEvent[]): string {
  const state = events.reduce((s, e) => evolve(s, asTaskEvent(e)), initialTaskState(taskId));
  if (!isTerminal(state.status)) return `not terminal (${state.status})`;
  if (state.status === 'failed') {
    const last = [...events].reverse().find((e) => isTerminalEvent(e.type));
    return last?.type === 'TaskDeadLettered' ? `failed: dead-lettered (${state.failureReason ?? '?'})` : `failed: ${state.failureReason ?? '?'}`;
  }
  return state.status;
}

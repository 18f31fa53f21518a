import { TaskAlreadyExistsError, TaskNotCancellableError, TaskNotFoundError, TaskNotRequeueableError } from './errors.js';
import { retryDelayMs, type BackoffOptions } from './policy.js';

export const PRIORITIES = ['high', 'normal', 'low'] as const;
export type Priority = (typeof PRIORITIES)[number];

export const TASK_STATUSES = ['waiting', 'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];
export const TERMINAL_STATUSES: readonly TaskStatus[] = ['succeeded', 'failed', 'cancelled'];

/** Why a task ended `failed`. */
export type FailureReason = 'non-retryable' | 'max-attempts' | 'delivery-limit' | 'rejected' | 'expired' | 'timeout';

export interface Resources {
  readonly cpu: number;
  readonly memoryMb: number;
}

/** What a client asked for, fixed at submit. Times are ISO-8601 strings. */
export interface TaskSpec {
  readonly taskId: string;
  readonly tenant: string;
  readonly type: string;
  readonly payload: unknown;
  readonly priority: Priority;
  readonly resources: Resources;
  readonly tier: string;
  readonly maxAttempts: number;
  readonly timeoutMs: number | null;
  readonly notBefore: string | null;
  readonly deadline: string | null;
  readonly idempotencyKey: string | null;
  /** Retry backoff of this task; null means the scheduler's default. */
  readonly retry?: BackoffOptions | null;
  /** A free display name (a workflow step's), at most 100 characters; absent when unset. */
  readonly name?: string | null;
  /** Ids of the tasks this one waits for (deduplicated, in the client's order); absent or [] for none. */
  readonly dependsOn?: readonly string[];
  /** What a failed or cancelled dependency does to this task: `cancel` it (default) or `run` it anyway once all ended. Only with dependsOn. */
  readonly onDependencyFailure?: DependencyFailurePolicy;
  /** Where the task must run (every given field must match the node); absent or null for anywhere in its tier. */
  readonly placement?: TaskPlacement | null;
  /** After this long unclaimed in its placement queue, any node of its tier may run it. Only with a placement. */
  readonly fallbackAfterMs?: number | null;
}

/** What a task's failed or cancelled dependency does to it. */
export type DependencyFailurePolicy = 'cancel' | 'run';

/** Where a task must run: a node's zone and labels (all given must match). Labels are stored with sorted keys. */
export interface TaskPlacement {
  readonly zone?: string;
  readonly labels?: Readonly<Record<string, string>>;
}

/** How a dependency ended, as its dependants see it. */
export type DependencyState = 'succeeded' | 'failed' | 'cancelled';

/** Counts of a task's dependencies by how they ended. */
export interface DependencyOutcomes {
  readonly succeeded: number;
  readonly failed: number;
  readonly cancelled: number;
}

/** The most dependencies one task may have (dependsOn, after removing duplicates). */
export const MAX_DEPENDENCIES = 10_000;

/** The reason of a TaskCancelled caused by a failed or cancelled dependency. */
export const DEPENDENCY_FAILED = 'dependency-failed';

/** The task's dependency ids (none for a task without). */
export function dependenciesOf(spec: TaskSpec | null): readonly string[] {
  return spec?.dependsOn ?? [];
}

/**
 * How many times a never-started attempt may come back from the broker's dead-letter queue
 * (delivery limit reached by requeues, not by runs) before it fails `delivery-limit`: each
 * return dispatches the same attempt again with `x-fogsched-returns` one higher.
 */
export const MAX_RETURNS = 5;

/** Header of a task message: how many times its attempt was returned for reaching the delivery limit. */
export const RETURNS_HEADER = 'x-fogsched-returns';

/**
 * Why an attempt went back to its queue without counting as an attempt: its node stopped
 * while running it (`node-shutdown`), or the broker dead-lettered it before it ever started
 * (`delivery-limit`, graceful requeues counted by RabbitMQ < 4.3).
 */
export type ReturnReason = 'node-shutdown' | 'delivery-limit';

export interface TaskError {
  readonly message: string;
  readonly code: string;
  readonly retryable: boolean;
  /** The class name of the error the handler threw (`TypeError`, `RateLimitedError`), when it was not a plain `Error`. */
  readonly name?: string;
}

/** What a handler last said of how far it got (ctx.progress); `at` is the node's clock. */
export interface TaskProgress {
  /** In [0, 1]. */
  readonly fraction: number;
  readonly message: string | null;
  readonly at: string;
}

/** Error code of an attempt a fog node refuses because the task asks for more memory than the node's tier has. */
export const TOO_LARGE_FOR_TIER = 'too-large-for-tier';
/** Error code of an attempt whose worker thread ran out of its heap (resources.memoryMb). */
export const OUT_OF_MEMORY = 'out-of-memory';

export type TaskEvent =
  /**
   * `attempt` and `availableAt` (schema v3): the task was queued at its submit, and this event is
   * also its first dispatch (it used to be followed by a TaskQueued of attempt 1, which events of
   * schema v2 still are). Absent: it waits for its dependencies, or was cancelled by one.
   */
  | { type: 'TaskSubmitted'; data: { task: TaskSpec; at: string; attempt?: number; availableAt?: string } }
  | { type: 'TaskQueued'; data: { attempt: number; tier: string; priority: Priority; availableAt: string; at: string } }
  | { type: 'TaskStarted'; data: { attempt: number; nodeId: string; at: string } }
  /** A running attempt's handler reported progress (coalesced by the node); `reportedAt` is the node's clock. Extends the running lease. */
  | { type: 'TaskProgressed'; data: { attempt: number; nodeId: string; fraction: number; message: string | null; reportedAt: string; at: string } }
  /** `reportedAt`: the node's clock at the result (absent in events written before ingest used its own clock). */
  | { type: 'TaskSucceeded'; data: { attempt: number; nodeId: string; output: unknown; durationMs: number; at: string; reportedAt?: string } }
  | { type: 'TaskAttemptFailed'; data: { attempt: number; nodeId: string | null; error: TaskError; at: string; reportedAt?: string } }
  | { type: 'TaskRetryScheduled'; data: { attempt: number; delayMs: number; availableAt: string; at: string } }
  | { type: 'TaskFailed'; data: { attempt: number; reason: FailureReason; error: TaskError | null; at: string } }
  | { type: 'TaskDeadLettered'; data: { attempt: number; reason: FailureReason; queue: string | null; at: string } }
  /** `dependency`/`dependencyState`: the dependency whose end cancelled it (reason `dependency-failed`, actor `scheduler`). */
  | { type: 'TaskCancelled'; data: { actor: string; reason: string | null; at: string; dependency?: string; dependencyState?: 'failed' | 'cancelled' } }
  | { type: 'TaskRequeued'; data: { actor: string; attempt: number; at: string } }
  /** The same attempt goes back to its queue (a new dispatch); it does not use up `maxAttempts`. */
  | { type: 'TaskReturned'; data: { attempt: number; nodeId: string | null; reason: ReturnReason; returns: number; at: string } }
  /** Submitted with `pending` dependencies not yet ended: the task waits for them. */
  | { type: 'TaskWaiting'; data: { pending: number; at: string } }
  /**
   * Its dependencies ended (all succeeded, or any outcome under policy `run`); a TaskQueued of attempt 1
   * follows. `dependency`: the one whose end released it; null when all had ended at submit.
   */
  | { type: 'TaskReleased'; data: { dependency: string | null; outcomes: DependencyOutcomes; at: string } }
  /** The attempt waited `afterMs` in its placement's queue: the same attempt is dispatched to its tier's general queue. */
  | { type: 'TaskPlacementFallback'; data: { attempt: number; afterMs: number; at: string } };

export type TaskEventType = TaskEvent['type'];

/**
 * What the submit saw of a new task's dependencies (absent: it has none). `firstFailed`: the first
 * (in dependsOn order) that had already failed or been cancelled.
 */
export interface SubmitDependencies {
  readonly pending: number;
  readonly succeeded: number;
  readonly failed: number;
  readonly cancelled: number;
  readonly firstFailed: string | null;
  readonly firstFailedState: 'failed' | 'cancelled' | null;
}

export type TaskCommand =
  | { type: 'SubmitTask'; data: { task: TaskSpec; now: string; dependencies?: SubmitDependencies } }
  /**
   * Dependencies of a waiting task ended: `resolved` in this step, `remaining` still unended,
   * `outcomes` the totals over all its dependencies (meaningful once `remaining` is 0).
   */
  | {
      type: 'ResolveDependencies';
      data: { resolved: readonly { readonly id: string; readonly state: DependencyState }[]; remaining: number; outcomes: DependencyOutcomes; now: string };
    }
  /** The attempt's placement dispatch expired unclaimed after fallbackAfterMs (the broker dead-lettered it). */
  | { type: 'FallBackPlacement'; data: { attempt: number; now: string } }
  /** `startedAt`: the node's clock at the start (TaskStarted.at); `now` when absent. */
  | { type: 'StartTask'; data: { attempt: number; nodeId: string; now: string; startedAt?: string } }
  /** `reportedAt`: the node's clock at the report. */
  | { type: 'ReportProgress'; data: { attempt: number; nodeId: string; fraction: number; message: string | null; reportedAt: string; now: string } }
  | {
      type: 'SucceedTask';
      data: { attempt: number; nodeId: string; output: unknown; durationMs: number; startedAt: string; now: string; reportedAt?: string };
    }
  | {
      type: 'FailTask';
      data: {
        attempt: number;
        nodeId: string | null;
        error: TaskError;
        startedAt: string | null;
        /** Default backoff; the task's own `retry` wins. */
        backoff: BackoffOptions;
        /** In [0, 1): the jitter, drawn by the caller so decide stays pure. */
        random: number;
        /** The decider's clock: the retry's `availableAt` and the events' `at` come from it. */
        now: string;
        /** The reporter's clock (a fog node's), kept as data. */
        reportedAt?: string;
      };
    }
  /** `returns`: the dead-lettered message's RETURNS_HEADER (0 when absent). */
  | { type: 'DeadLetterTask'; data: { attempt: number; reason: FailureReason; queue: string | null; now: string; returns?: number } }
  | { type: 'ReturnTask'; data: { attempt: number; nodeId: string | null; reason: ReturnReason; returns: number; now: string } }
  | { type: 'CancelTask'; data: { actor: string; reason: string | null; now: string } }
  | { type: 'RequeueTask'; data: { actor: string; now: string } };

/** The state of one task, folded from its events; also the shape of a task_current row. */
export interface TaskState {
  readonly taskId: string;
  readonly status: 'new' | TaskStatus;
  /** Number of events in the stream (its version). */
  readonly version: number;
  readonly spec: TaskSpec | null;
  /** Current attempt, 1-based; 0 before the first queue. */
  readonly attempt: number;
  /** The attempt the current budget of `maxAttempts` counts from (moves on requeue). */
  readonly firstAttempt: number;
  readonly availableAt: string | null;
  readonly nodeId: string | null;
  readonly submittedAt: string | null;
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
  readonly updatedAt: string | null;
  readonly output: unknown;
  readonly lastError: TaskError | null;
  readonly failureReason: FailureReason | null;
  /** The last progress the running (or last run) attempt reported; null until it reports, and again at each new start. */
  readonly progress: TaskProgress | null;
}

export function initialTaskState(taskId: string): TaskState {
  return {
    taskId,
    status: 'new',
    version: 0,
    spec: null,
    attempt: 0,
    firstAttempt: 1,
    availableAt: null,
    nodeId: null,
    submittedAt: null,
    startedAt: null,
    finishedAt: null,
    updatedAt: null,
    output: null,
    lastError: null,
    failureReason: null,
    progress: null,
  };
}

export function isTerminal(status: TaskState['status']): boolean {
  return (TERMINAL_STATUSES as readonly string[]).includes(status);
}

/** Has the task an attempt waiting to start (queued, scheduled or retrying)? */
function awaitsStart(status: TaskState['status']): boolean {
  return status === 'queued' || status === 'scheduled' || status === 'retrying';
}

/**
 * Turns a command into the events it causes. Pure: the clock and any randomness
 * (the retry delay) arrive in the command. Duplicate or late results return `[]`;
 * a user's impossible request throws a typed FogschedError.
 */
export function decide(state: TaskState, command: TaskCommand): TaskEvent[] {
  switch (command.type) {
    case 'SubmitTask': {
      if (state.status !== 'new') throw new TaskAlreadyExistsError(state.taskId);
      const { task, now, dependencies } = command.data;
      const submitted: TaskEvent = { type: 'TaskSubmitted', data: { task, at: now } };
      // Nothing to wait for: one event is the submit and the first dispatch.
      if (!dependencies || dependenciesOf(task).length === 0) return [{ type: 'TaskSubmitted', data: { task, at: now, attempt: 1, availableAt: laterOf(task.notBefore, now) } }];
      const { pending, succeeded, failed, cancelled, firstFailed, firstFailedState } = dependencies;
      if (firstFailed !== null && firstFailedState !== null && policyOf(task) === 'cancel') {
        return [submitted, dependencyCancelled(firstFailed, firstFailedState, now)];
      }
      if (pending > 0) return [submitted, { type: 'TaskWaiting', data: { pending, at: now } }];
      return [
        submitted,
        { type: 'TaskReleased', data: { dependency: null, outcomes: { succeeded, failed, cancelled }, at: now } },
        queuedFirst(task, now),
      ];
    }
    case 'ResolveDependencies': {
      const { resolved, remaining, outcomes, now } = command.data;
      if (state.status !== 'waiting' || !state.spec) return [];
      const bad = resolved.find((r) => r.state !== 'succeeded');
      if (bad && policyOf(state.spec) === 'cancel') return [dependencyCancelled(bad.id, bad.state as 'failed' | 'cancelled', now)];
      if (remaining > 0) return [];
      const last = resolved[resolved.length - 1];
      return [
        { type: 'TaskReleased', data: { dependency: last?.id ?? null, outcomes, at: now } },
        queuedFirst(state.spec, now),
      ];
    }
    case 'FallBackPlacement': {
      const { attempt, now } = command.data;
      const afterMs = state.spec?.fallbackAfterMs;
      if (!isCurrentAttempt(state, attempt) || !awaitsStart(state.status)) return [];
      if (!state.spec?.placement || afterMs === null || afterMs === undefined) return [];
      return [{ type: 'TaskPlacementFallback', data: { attempt, afterMs, at: now } }];
    }
    case 'StartTask': {
      const { attempt, nodeId, now, startedAt } = command.data;
      if (!isCurrentAttempt(state, attempt)) return [];
      if (state.status === 'running' && state.nodeId === nodeId) return [];
      // A redelivery to another node after a crash is a new start of the same attempt.
      return [{ type: 'TaskStarted', data: { attempt, nodeId, at: startedAt ?? now } }];
    }
    case 'ReportProgress': {
      const { attempt, nodeId, fraction, message, reportedAt, now } = command.data;
      // Only the node running the current attempt reports it; a late report (after its result,
      // or from a node the attempt has left) changes nothing.
      if (!isCurrentAttempt(state, attempt) || state.status !== 'running' || state.nodeId !== nodeId) return [];
      return [{ type: 'TaskProgressed', data: { attempt, nodeId, fraction, message, reportedAt, at: now } }];
    }
    case 'SucceedTask': {
      const { attempt, nodeId, output, durationMs, startedAt, now, reportedAt } = command.data;
      if (!isCurrentAttempt(state, attempt)) return [];
      return [
        ...startedIfMissing(state, attempt, nodeId, startedAt),
        { type: 'TaskSucceeded', data: { attempt, nodeId, output, durationMs, at: now, ...(reportedAt === undefined ? {} : { reportedAt }) } },
      ];
    }
    case 'FailTask': {
      const { attempt, nodeId, error, startedAt, backoff, random, now, reportedAt } = command.data;
      if (!isCurrentAttempt(state, attempt)) return [];
      const expired = error.code === 'expired';
      // A task refused for its passed deadline, or for asking more memory than the node's tier
      // has, never ran: no TaskStarted is made up for it.
      const neverRan = expired || error.code === TOO_LARGE_FOR_TIER;
      const events: TaskEvent[] = [
        ...(nodeId && startedAt && !neverRan ? startedIfMissing(state, attempt, nodeId, startedAt) : []),
        { type: 'TaskAttemptFailed', data: { attempt, nodeId, error, at: now, ...(reportedAt === undefined ? {} : { reportedAt }) } },
      ];
      const attemptsUsed = attempt - state.firstAttempt + 1;
      const maxAttempts = state.spec?.maxAttempts ?? 1;
      if (error.retryable && !expired && attemptsUsed < maxAttempts) {
        const delayMs = retryDelayMs(attempt - state.firstAttempt + 1, state.spec?.retry ?? backoff, random);
        const availableAt = new Date(Date.parse(now) + delayMs).toISOString();
        events.push({ type: 'TaskRetryScheduled', data: { attempt: attempt + 1, delayMs, availableAt, at: now } });
      } else {
        const reason: FailureReason = expired ? 'expired' : error.retryable ? 'max-attempts' : 'non-retryable';
        events.push({ type: 'TaskFailed', data: { attempt, reason, error, at: now } });
      }
      return events;
    }
    case 'DeadLetterTask': {
      const { attempt, reason, queue, now } = command.data;
      const returns = command.data.returns ?? 0;
      if (!isCurrentAttempt(state, attempt)) return [];
      // An attempt that never started reached the delivery limit by requeues alone (graceful
      // returns of buffered messages count on RabbitMQ < 4.3): it goes back, a bounded number
      // of times. A started attempt that keeps coming back is poison: the task fails.
      if (awaitsStart(state.status) && reason === 'delivery-limit' && returns < MAX_RETURNS) {
        return [{ type: 'TaskReturned', data: { attempt, nodeId: null, reason: 'delivery-limit', returns: returns + 1, at: now } }];
      }
      return [{ type: 'TaskDeadLettered', data: { attempt, reason, queue, at: now } }];
    }
    case 'ReturnTask': {
      const { attempt, nodeId, reason, returns, now } = command.data;
      if (!isCurrentAttempt(state, attempt)) return [];
      // A node gives back only an attempt it is running: a second copy of the same return (or
      // one from a node the attempt has since left) finds it elsewhere and changes nothing.
      if (reason === 'node-shutdown' && !(state.status === 'running' && state.nodeId === nodeId)) return [];
      return [{ type: 'TaskReturned', data: { attempt, nodeId, reason, returns, at: now } }];
    }
    case 'CancelTask': {
      if (state.status === 'new') throw new TaskNotFoundError(state.taskId);
      if (state.status === 'cancelled') return []; // a retried cancel is not an error
      if (isTerminal(state.status)) throw new TaskNotCancellableError(state.taskId, state.status);
      return [{ type: 'TaskCancelled', data: { actor: command.data.actor, reason: command.data.reason, at: command.data.now } }];
    }
    case 'RequeueTask': {
      if (state.status === 'new') throw new TaskNotFoundError(state.taskId);
      if (state.status !== 'failed') throw new TaskNotRequeueableError(state.taskId, state.status);
      return [{ type: 'TaskRequeued', data: { actor: command.data.actor, attempt: state.attempt + 1, at: command.data.now } }];
    }
    default:
      return assertNever(command);
  }
}

/** Applies one event. Total: an event that does not fit the state leaves it as it is, with the version moved on. */
export function evolve(state: TaskState, event: TaskEvent): TaskState {
  const next = { ...state, version: state.version + 1, updatedAt: event.data.at };
  switch (event.type) {
    case 'TaskSubmitted': {
      const { task, at, availableAt } = event.data;
      const submitted = { ...next, spec: task, submittedAt: at };
      // Queued at its submit (schema v3): as a TaskQueued of attempt 1 would leave it.
      return availableAt === undefined ? submitted : { ...submitted, status: availableAt > at ? 'scheduled' : 'queued', attempt: event.data.attempt ?? 1, availableAt };
    }
    case 'TaskQueued': {
      const { attempt, availableAt, at } = event.data;
      return { ...next, status: availableAt > at ? 'scheduled' : 'queued', attempt, availableAt };
    }
    case 'TaskStarted':
      return { ...next, status: 'running', attempt: event.data.attempt, nodeId: event.data.nodeId, startedAt: event.data.at, progress: null };
    case 'TaskProgressed': {
      const { fraction, message, reportedAt } = event.data;
      // `updatedAt` moves on with the version; what the task shows is the node's report.
      return { ...next, progress: { fraction, message, at: reportedAt } };
    }
    case 'TaskSucceeded':
      return { ...next, status: 'succeeded', nodeId: event.data.nodeId, output: event.data.output, finishedAt: event.data.at };
    case 'TaskAttemptFailed':
      return { ...next, lastError: event.data.error };
    case 'TaskRetryScheduled':
      return { ...next, status: 'retrying', attempt: event.data.attempt, availableAt: event.data.availableAt, nodeId: null };
    case 'TaskFailed':
      return { ...next, status: 'failed', failureReason: event.data.reason, finishedAt: event.data.at };
    case 'TaskDeadLettered':
      return { ...next, status: 'failed', failureReason: event.data.reason, finishedAt: event.data.at };
    case 'TaskCancelled':
      return { ...next, status: 'cancelled', finishedAt: event.data.at };
    case 'TaskRequeued':
      return {
        ...next,
        status: 'queued',
        attempt: event.data.attempt,
        firstAttempt: event.data.attempt,
        availableAt: event.data.at,
        nodeId: null,
        failureReason: null,
        finishedAt: null,
      };
    case 'TaskReturned':
      return { ...next, status: 'queued', availableAt: event.data.at, nodeId: null };
    case 'TaskWaiting':
      return { ...next, status: 'waiting' };
    case 'TaskReleased':
      // Still waiting: the TaskQueued that always follows moves it on.
      return next;
    case 'TaskPlacementFallback':
      return { ...next, status: 'queued', availableAt: event.data.at, nodeId: null };
    default:
      return assertNever(event);
  }
}

export function foldTask(taskId: string, events: readonly TaskEvent[], from: TaskState = initialTaskState(taskId)): TaskState {
  return events.reduce(evolve, from);
}

/** Does an event put a message on a task queue? Returns the attempt and when. */
export function dispatchOf(event: TaskEvent): { attempt: number; availableAt: string } | null {
  switch (event.type) {
    case 'TaskSubmitted':
      // Queued at its submit (schema v3); a waiting task's first dispatch is its TaskQueued.
      return event.data.availableAt === undefined ? null : { attempt: event.data.attempt ?? 1, availableAt: event.data.availableAt };
    case 'TaskQueued':
      return { attempt: event.data.attempt, availableAt: event.data.availableAt };
    case 'TaskRetryScheduled':
      return { attempt: event.data.attempt, availableAt: event.data.availableAt };
    case 'TaskRequeued':
      return { attempt: event.data.attempt, availableAt: event.data.at };
    case 'TaskReturned':
      // The same attempt again, in a new message: it does not use up maxAttempts.
      return { attempt: event.data.attempt, availableAt: event.data.at };
    case 'TaskPlacementFallback':
      // The same attempt again, to its tier's general queue.
      return { attempt: event.data.attempt, availableAt: event.data.at };
    default:
      return null;
  }
}

function isCurrentAttempt(state: TaskState, attempt: number): boolean {
  return state.status !== 'new' && !isTerminal(state.status) && attempt === state.attempt;
}

function startedIfMissing(state: TaskState, attempt: number, nodeId: string, startedAt: string): TaskEvent[] {
  return awaitsStart(state.status) ? [{ type: 'TaskStarted', data: { attempt, nodeId, at: startedAt } }] : [];
}

function queuedFirst(task: TaskSpec, now: string): TaskEvent {
  return { type: 'TaskQueued', data: { attempt: 1, tier: task.tier, priority: task.priority, availableAt: laterOf(task.notBefore, now), at: now } };
}

function policyOf(task: TaskSpec): DependencyFailurePolicy {
  return task.onDependencyFailure ?? 'cancel';
}

function dependencyCancelled(dependency: string, dependencyState: 'failed' | 'cancelled', now: string): TaskEvent {
  return { type: 'TaskCancelled', data: { actor: 'scheduler', reason: DEPENDENCY_FAILED, at: now, dependency, dependencyState } };
}

function laterOf(notBefore: string | null, now: string): string {
  return notBefore !== null && notBefore > now ? notBefore : now;
}

/** JSON with every object's keys sorted: equal for equal values however jsonb ordered them. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

export function assertNever(value: never): never {
  throw new Error(`unhandled variant: ${JSON.stringify(value)}`);
}

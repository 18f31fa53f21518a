import { FogschedError } from './errors.js';
import { assertNever } from './task.js';

export type CatchUp = 'skip' | 'once';
export type ScheduleStatus = 'active' | 'paused' | 'deleted';

/** The task a schedule submits at each firing (a submit body without idempotency key). */
export interface TaskTemplate {
  readonly type: string;
  readonly payload?: unknown;
  readonly priority?: 'high' | 'normal' | 'low';
  readonly resources?: { readonly cpu: number; readonly memoryMb: number };
  readonly maxAttempts?: number;
  readonly timeoutMs?: number;
}

export interface ScheduleSpec {
  readonly scheduleId: string;
  readonly tenant: string;
  readonly name: string;
  readonly cron: string;
  readonly timezone: string;
  /** skip: runs missed by more than the grace are dropped; once: one run for all that were missed. */
  readonly catchUp: CatchUp;
  readonly template: TaskTemplate;
}

export type ScheduleEvent =
  | { type: 'ScheduleCreated'; data: { schedule: ScheduleSpec; nextFireAt: string | null; actor: string; at: string } }
  | { type: 'SchedulePaused'; data: { actor: string; at: string } }
  | { type: 'ScheduleResumed'; data: { actor: string; nextFireAt: string | null; at: string } }
  | { type: 'ScheduleDeleted'; data: { actor: string; at: string } }
  | { type: 'ScheduleFired'; data: { fireAt: string; taskId: string; nextFireAt: string | null; at: string } }
  | { type: 'ScheduleSkipped'; data: { from: string; nextFireAt: string | null; at: string; reason?: ScheduleSkipReason } };

/**
 * Why a run was skipped: `missed` (later than the misfire grace, catch-up `skip`) or `refused`
 * (its task could not be submitted, e.g. the template fits no tier any more; `error` says why).
 * Events written before reasons existed have none: those runs were missed.
 */
export type ScheduleSkipReason = { readonly kind: 'missed'; readonly lateMs: number } | { readonly kind: 'refused'; readonly error: { readonly code: string; readonly message: string } };

export type ScheduleCommand =
  | { type: 'CreateSchedule'; data: { schedule: ScheduleSpec; nextFireAt: string | null; actor: string; now: string } }
  | { type: 'PauseSchedule'; data: { actor: string; now: string } }
  | { type: 'ResumeSchedule'; data: { actor: string; nextFireAt: string | null; now: string } }
  | { type: 'DeleteSchedule'; data: { actor: string; now: string } }
  /** Fire the due run at `fireAt` (the caller computed `nextFireAt` from the cron). */
  | { type: 'FireSchedule'; data: { fireAt: string; taskId: string; nextFireAt: string | null; now: string } }
  | { type: 'SkipSchedule'; data: { from: string; nextFireAt: string | null; now: string; reason: ScheduleSkipReason } };

export interface ScheduleState {
  readonly scheduleId: string;
  readonly status: 'new' | ScheduleStatus;
  readonly version: number;
  readonly spec: ScheduleSpec | null;
  readonly nextFireAt: string | null;
  readonly lastFiredAt: string | null;
  readonly lastTaskId: string | null;
  readonly firedCount: number;
  readonly createdAt: string | null;
  readonly updatedAt: string | null;
}

export class ScheduleNotFoundError extends FogschedError {
  constructor(readonly scheduleId: string) {
    super({ code: 'SCHEDULE_NOT_FOUND', status: 404, message: `schedule ${scheduleId} does not exist` });
  }
}

export function initialScheduleState(scheduleId: string): ScheduleState {
  return { scheduleId, status: 'new', version: 0, spec: null, nextFireAt: null, lastFiredAt: null, lastTaskId: null, firedCount: 0, createdAt: null, updatedAt: null };
}

/** Schedule decider: pausing a paused schedule or resuming an active one is a no-op; a deleted schedule is gone. */
export function decideSchedule(state: ScheduleState, command: ScheduleCommand): ScheduleEvent[] {
  if (command.type === 'CreateSchedule') {
    if (state.status !== 'new') return [];
    const { schedule, nextFireAt, actor, now } = command.data;
    return [{ type: 'ScheduleCreated', data: { schedule, nextFireAt, actor, at: now } }];
  }
  if (state.status === 'new' || state.status === 'deleted') throw new ScheduleNotFoundError(state.scheduleId);
  switch (command.type) {
    case 'PauseSchedule':
      return state.status === 'paused' ? [] : [{ type: 'SchedulePaused', data: { actor: command.data.actor, at: command.data.now } }];
    case 'ResumeSchedule':
      return state.status === 'active' ? [] : [{ type: 'ScheduleResumed', data: { actor: command.data.actor, nextFireAt: command.data.nextFireAt, at: command.data.now } }];
    case 'DeleteSchedule':
      return [{ type: 'ScheduleDeleted', data: { actor: command.data.actor, at: command.data.now } }];
    case 'FireSchedule': {
      // Only the run the state says is due fires: a second scheduler with a stale view fires nothing.
      if (state.status !== 'active' || state.nextFireAt !== command.data.fireAt) return [];
      const { fireAt, taskId, nextFireAt, now } = command.data;
      return [{ type: 'ScheduleFired', data: { fireAt, taskId, nextFireAt, at: now } }];
    }
    case 'SkipSchedule':
      if (state.status !== 'active' || state.nextFireAt !== command.data.from) return [];
      return [{ type: 'ScheduleSkipped', data: { from: command.data.from, nextFireAt: command.data.nextFireAt, at: command.data.now, reason: command.data.reason } }];
    default:
      return assertNever(command);
  }
}

export function evolveSchedule(state: ScheduleState, event: ScheduleEvent): ScheduleState {
  const next = { ...state, version: state.version + 1, updatedAt: event.data.at };
  switch (event.type) {
    case 'ScheduleCreated':
      return { ...next, status: 'active', spec: event.data.schedule, nextFireAt: event.data.nextFireAt, createdAt: event.data.at };
    case 'SchedulePaused':
      return { ...next, status: 'paused' };
    case 'ScheduleResumed':
      return { ...next, status: 'active', nextFireAt: event.data.nextFireAt };
    case 'ScheduleDeleted':
      return { ...next, status: 'deleted', nextFireAt: null };
    case 'ScheduleFired':
      return { ...next, nextFireAt: event.data.nextFireAt, lastFiredAt: event.data.fireAt, lastTaskId: event.data.taskId, firedCount: state.firedCount + 1 };
    case 'ScheduleSkipped':
      return { ...next, nextFireAt: event.data.nextFireAt };
    default:
      return assertNever(event);
  }
}

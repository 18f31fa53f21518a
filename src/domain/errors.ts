/**
 * The one error type of fogsched: a stable `code` (listed in docs/errors.md),
 * the HTTP `status` it maps to, and optional `details` safe to show a user.
 */
export class FogschedError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(opts: { code: string; status: number; message: string; details?: Record<string, unknown>; cause?: unknown }) {
    super(opts.message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = opts.code;
    this.status = opts.status;
    this.details = opts.details;
  }
}

export class ConfigError extends FogschedError {
  constructor(message: string) {
    super({ code: 'CONFIG_INVALID', status: 500, message });
  }
}

export class ValidationError extends FogschedError {
  constructor(message: string, details?: Record<string, unknown>) {
    super({ code: 'VALIDATION_FAILED', status: 400, message, ...(details ? { details } : {}) });
  }
}

export class TaskNotFoundError extends FogschedError {
  constructor(readonly taskId: string) {
    super({ code: 'TASK_NOT_FOUND', status: 404, message: `task ${taskId} does not exist` });
  }
}

export class NoTierFitsError extends FogschedError {
  constructor(readonly resources: { cpu: number; memoryMb: number }, largest: { name: string; maxCpu: number; maxMemoryMb: number }) {
    super({
      code: 'NO_TIER_FITS',
      status: 422,
      message: `no tier can run a task needing ${resources.cpu} cpu and ${resources.memoryMb} MB; the largest tier (${largest.name}) allows ${largest.maxCpu} cpu and ${largest.maxMemoryMb} MB`,
      details: { resources, largestTier: largest },
    });
  }
}

export class TaskNotCancellableError extends FogschedError {
  constructor(readonly taskId: string, readonly state: string) {
    super({ code: 'TASK_NOT_CANCELLABLE', status: 409, message: `task ${taskId} is ${state} and can no longer be cancelled`, details: { state } });
  }
}

export class TaskAlreadyExistsError extends FogschedError {
  constructor(readonly taskId: string) {
    super({ code: 'TASK_ALREADY_EXISTS', status: 409, message: `task ${taskId} already exists` });
  }
}

export class TaskNotRequeueableError extends FogschedError {
  constructor(readonly taskId: string, readonly state: string) {
    super({ code: 'TASK_NOT_REQUEUEABLE', status: 409, message: `task ${taskId} is ${state}; only failed tasks can be requeued`, details: { state } });
  }
}

export class IdempotencyConflictError extends FogschedError {
  constructor(readonly key: string, readonly taskId: string) {
    super({
      code: 'IDEMPOTENCY_KEY_REUSED',
      status: 422,
      message: `Idempotency-Key ${JSON.stringify(key)} was already used for a different request (task ${taskId})`,
      details: { taskId },
    });
  }
}

/** Another writer appended to the stream first; carries both versions. */
export class ConcurrencyError extends FogschedError {
  constructor(readonly streamId: string, readonly expectedVersion: number, readonly actualVersion?: number) {
    super({
      code: 'CONCURRENT_UPDATE',
      status: 409,
      message: `stream ${streamId} was changed concurrently (expected version ${expectedVersion})`,
      details: { streamId, expectedVersion, ...(actualVersion === undefined ? {} : { actualVersion }) },
    });
  }
}

export class ServiceUnavailableError extends FogschedError {
  constructor(readonly service: string, cause?: unknown) {
    super({ code: 'SERVICE_UNAVAILABLE', status: 503, message: `${service} is unavailable`, details: { service }, cause });
  }
}

/** The submit queue is full: the API is behind on writing; the client retries after `retryAfterSeconds`. */
export class SubmitQueueFullError extends FogschedError {
  constructor(readonly limit: number) {
    super({
      code: 'SUBMIT_QUEUE_FULL',
      status: 503,
      message: `${limit} submits are already waiting to be written (SUBMIT_QUEUE_MAX); nothing was written; retry later`,
      details: { limit, retryAfterSeconds: 1 },
    });
  }
}

/** A tenant has as many schedules as it may (TENANT_MAX_SCHEDULES); deleting one makes room. */
export class ScheduleLimitReachedError extends FogschedError {
  constructor(readonly tenant: string, readonly limit: number) {
    super({ code: 'SCHEDULE_LIMIT_REACHED', status: 409, message: `tenant ${tenant} already has ${limit} schedules, the most it may have; delete one first`, details: { limit } });
  }
}

/** One problem with a submit's dependencies: where (`body/dependsOn`, `body/tasks/<i>/dependsOn`) and what. */
export interface FieldProblem {
  readonly path: string;
  readonly message: string;
}

/** dependsOn names an unknown or foreign task, the task itself, too many tasks, or makes a cycle; nothing was written. */
export class InvalidDependenciesError extends FogschedError {
  constructor(message: string, readonly errors: readonly FieldProblem[] = [{ path: 'body/dependsOn', message }]) {
    super({ code: 'INVALID_DEPENDENCIES', status: 400, message, details: { errors } });
  }
}

/** A submit's client-chosen `id` belongs to an existing task with another body or of another tenant. */
export class TaskIdConflictError extends FogschedError {
  constructor(readonly taskId: string) {
    super({ code: 'TASK_ID_CONFLICT', status: 409, message: `a different task with id ${taskId} already exists`, details: { taskId } });
  }
}

/** A submit names a placement class no submit used before, and PLACEMENT_MAX_CLASSES are in use. */
export class PlacementClassLimitError extends FogschedError {
  constructor(classes: readonly string[], max: number) {
    super({
      code: 'PLACEMENT_CLASS_LIMIT',
      status: 422,
      message: `${classes.length === 1 ? `placement class ${classes[0]} is new` : `${classes.length} placement classes are new`} and ${max} (PLACEMENT_MAX_CLASSES) are in use: use an existing zone, label set and fallback delay, or ask an operator to raise the limit`,
      details: { classes: classes.slice(0, 20), maxClasses: max },
    });
  }
}

/** A placement (zone, labels) or fallbackAfterMs of a submit is malformed. */
export class InvalidPlacementError extends FogschedError {
  constructor(message: string, path = 'body/placement') {
    super({ code: 'INVALID_PLACEMENT', status: 400, message, details: { errors: [{ path, message }] } });
  }
}

/** Wraps any thrown value in an Error, keeping the original as `cause`. */
export function coerceError(value: unknown): Error {
  if (value instanceof Error) return value;
  return new Error(typeof value === 'string' ? value : `non-error thrown: ${safeString(value)}`, { cause: value });
}

function safeString(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * The one error the client throws. `code` is the problem's stable `code` (docs/errors.md) when
 * the API answered with application/problem+json; the client's own codes, for answers that never
 * came or made no sense, are `UNREACHABLE`, `BAD_RESPONSE` and `WAIT_TIMEOUT` (status 0).
 */

/** Codes the API answers with (docs/errors.md); a unit test keeps this list equal to that table. */
export const API_ERROR_CODES = [
  'VALIDATION_FAILED',
  'BAD_REQUEST',
  'FST_ERR_BAD_URL',
  'FST_ERR_CTP_INVALID_JSON_BODY',
  'FST_ERR_CTP_EMPTY_JSON_BODY',
  'FST_ERR_CTP_INVALID_CONTENT_LENGTH',
  'INVALID_WORKFLOW',
  'INVALID_DEPENDENCIES',
  'INVALID_PLACEMENT',
  'UNAUTHORIZED',
  'FORBIDDEN',
  'ROUTE_NOT_FOUND',
  'TASK_NOT_FOUND',
  'SCHEDULE_NOT_FOUND',
  'AUDIT_QUERY_NOT_FOUND',
  'REQUEST_TIMEOUT',
  'TASK_ALREADY_EXISTS',
  'TASK_ID_CONFLICT',
  'PLACEMENT_CLASS_LIMIT',
  'TASK_NOT_CANCELLABLE',
  'TASK_NOT_REQUEUEABLE',
  'CONCURRENT_UPDATE',
  'SCHEDULE_LIMIT_REACHED',
  'FST_ERR_CTP_BODY_TOO_LARGE',
  'PAYLOAD_TOO_LARGE',
  'FST_ERR_CTP_INVALID_MEDIA_TYPE',
  'IDEMPOTENCY_KEY_REUSED',
  'NO_TIER_FITS',
  'BURST_EXCEEDED',
  'RATE_LIMITED',
  'TOO_MANY_ACTIVE_TASKS',
  'TOO_MANY_STREAMS',
  'HEADERS_TOO_LARGE',
  'SERVICE_UNAVAILABLE',
  'AUTH_UNAVAILABLE',
  'SUBMIT_QUEUE_FULL',
  'INTERNAL',
] as const;

/** Codes the client itself gives (status 0): no answer, an answer that is not the API's, a wait that ran out. */
export const CLIENT_ERROR_CODES = ['UNREACHABLE', 'BAD_RESPONSE', 'WAIT_TIMEOUT'] as const;

export type ApiErrorCode = (typeof API_ERROR_CODES)[number];
export type ClientErrorCode = (typeof CLIENT_ERROR_CODES)[number];
/** A known code, or any other string (a newer server may add codes; they still arrive). */
export type ErrorCode = ApiErrorCode | ClientErrorCode | (string & {});

/** One entry of a problem's `errors`: which field, and why. */
export interface ProblemFieldError {
  readonly path: string;
  readonly message: string;
  readonly code?: string;
  readonly [extra: string]: unknown;
}

/** RFC 9457 problem details as the API sends them, with any further members (`retryAfterSeconds`, `taskId`, ...). */
export interface ProblemDetails {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly code: string;
  readonly instance?: string;
  readonly errors?: readonly ProblemFieldError[];
  readonly [extra: string]: unknown;
}

export class FogschedApiError<C extends ErrorCode = ErrorCode> extends Error {
  override readonly name = 'FogschedApiError';
  /** HTTP status; 0 when no answer came (UNREACHABLE) or the client gave up (WAIT_TIMEOUT). */
  readonly status: number;
  readonly code: C;
  readonly detail: string;
  /** The whole problem body when the API sent one. */
  readonly problem: ProblemDetails | undefined;

  constructor(init: { code: C; status: number; detail: string; problem?: ProblemDetails; cause?: unknown }) {
    super(init.detail, init.cause === undefined ? undefined : { cause: init.cause });
    this.code = init.code;
    this.status = init.status;
    this.detail = init.detail;
    this.problem = init.problem;
  }

  /** Field errors of a 400/413/422 (`errors` of the problem), empty otherwise. */
  get fieldErrors(): readonly ProblemFieldError[] {
    return this.problem?.errors ?? [];
  }

  /** Seconds the API asked to wait (429, 503), if it said. */
  get retryAfterSeconds(): number | undefined {
    const v = this.problem?.retryAfterSeconds;
    return typeof v === 'number' ? v : undefined;
  }

  /** Narrows the code: `if (e.is('TASK_NOT_FOUND')) ...`. */
  is<K extends ErrorCode>(...codes: K[]): this is FogschedApiError<K> {
    return (codes as string[]).includes(this.code);
  }
}

/** True when `error` is a FogschedApiError, and (when codes are given) has one of them. */
export function isFogschedApiError<K extends ErrorCode = ErrorCode>(error: unknown, ...codes: K[]): error is FogschedApiError<K> {
  return error instanceof FogschedApiError && (codes.length === 0 || (codes as string[]).includes(error.code as string));
}

/** 404: the task, schedule or route does not exist. */
export const isNotFound = (error: unknown): error is FogschedApiError => error instanceof FogschedApiError && error.status === 404;
/** 401 or 403: the credential is missing, unknown, or may not do this. */
export const isAuthError = (error: unknown): error is FogschedApiError => error instanceof FogschedApiError && (error.status === 401 || error.status === 403);
/** 400, 413, 415 or 422: the request itself is wrong; sending it again will not help. */
export const isInvalidRequest = (error: unknown): error is FogschedApiError => error instanceof FogschedApiError && [400, 413, 415, 422].includes(error.status);
/** 409: the task or schedule is not in a state that allows this. */
export const isConflict = (error: unknown): error is FogschedApiError => error instanceof FogschedApiError && error.status === 409;
/** Worth retrying later: no answer, 408, 429 or 5xx. */
export const isRetryable = (error: unknown): error is FogschedApiError =>
  error instanceof FogschedApiError && (error.code === 'UNREACHABLE' || error.status === 408 || error.status === 429 || error.status >= 500);

import type { Priority, TaskError } from './task.js';

/** Body of a message on a task queue: everything a fog node needs to run one attempt. */
export interface TaskMessage {
  readonly taskId: string;
  readonly attempt: number;
  readonly type: string;
  readonly payload: unknown;
  readonly tenant: string;
  readonly tier: string;
  readonly priority: Priority;
  readonly timeoutMs: number | null;
  readonly deadline: string | null;
  /** When the dispatch became due (for queue-wait figures). */
  readonly availableAt: string;
  /** The task's resources.memoryMb: the heap limit of the thread that runs it (absent in messages of older versions). */
  readonly memoryMb?: number;
  /** The task's attempt budget, for the handler's ctx (absent in messages of older versions). */
  readonly maxAttempts?: number;
  /**
   * A task with dependsOn: each dependency's state and output, read at dispatch (the handler's
   * ctx.dependencies). Outputs are left out (states kept) when their JSON passes 4 MiB.
   */
  // eslint-disable-next-line @typescript-eslint/no-redundant-type-constituents -- the three states name what a handler sees; a newer writer may send another
  readonly dependencies?: Readonly<Record<string, { readonly state: 'succeeded' | 'failed' | 'cancelled' | string; readonly output: unknown }>>;
  /** True when the dependencies' outputs were left out for size. */
  readonly dependenciesTruncated?: boolean;
}

/**
 * What a fog node reports. Several records travel in one message (a result
 * batch) to keep the number of broker messages per task near one. Each carries the
 * W3C `traceparent` of its run (docs/tracing.md), which the result events keep.
 */
export type ResultRecord = { readonly traceparent?: string } & (
  | { readonly kind: 'started'; readonly taskId: string; readonly attempt: number; readonly at: string }
  /** The handler's last progress report (ctx.progress), coalesced by the node; always before the attempt's outcome. */
  | { readonly kind: 'progress'; readonly taskId: string; readonly attempt: number; readonly at: string; readonly fraction: number; readonly message: string | null }
  | {
      readonly kind: 'succeeded';
      readonly taskId: string;
      readonly attempt: number;
      readonly startedAt: string;
      readonly at: string;
      readonly durationMs: number;
      readonly output: unknown;
    }
  | {
      readonly kind: 'failed';
      readonly taskId: string;
      readonly attempt: number;
      readonly startedAt: string;
      readonly at: string;
      readonly durationMs: number;
      readonly error: TaskError;
    }
  /**
   * The node gives back an attempt it had started (and whose task message it
   * had acked) without an outcome: it was stopped past FOG_NODE_GRACE_MS. Not a
   * failure of the task; the same attempt is dispatched again.
   */
  | { readonly kind: 'returned'; readonly taskId: string; readonly attempt: number; readonly at: string; readonly reason: 'node-shutdown' }
);

/** Why a node gives an attempt back (a `returned` record). */
export const RETURN_REASONS = ['node-shutdown'] as const;

export interface ResultBatch {
  readonly nodeId: string;
  readonly tier: string;
  readonly records: readonly ResultRecord[];
}

/** Broadcast on the `system` fanout exchange to every fog node. */
export type SystemMessage =
  | { readonly kind: 'cancel'; readonly taskId: string; readonly at: string }
  /**
   * The relay declared a placement queue (`<class>.<tier>.<priority>`) and recorded it in Redis:
   * a hint that nodes whose placement matches look again now rather than at their next rescan.
   */
  | { readonly kind: 'placement-class'; readonly routingKey: string; readonly at: string };

export interface NodeMetricSample {
  readonly nodeId: string;
  readonly tier: string;
  readonly at: string;
  /** CPU use of the node process since the last sample, in cores. */
  readonly cpu: number;
  readonly rssMb: number;
  readonly inFlight: number;
  readonly completed: number;
  readonly failed: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Checks an untrusted result batch; returns a reason when it is malformed. */
export function invalidResultBatch(value: unknown): string | null {
  if (typeof value !== 'object' || value === null) return 'not an object';
  const batch = value as Partial<ResultBatch>;
  if (typeof batch.nodeId !== 'string' || !Array.isArray(batch.records)) return 'missing nodeId or records';
  for (const record of batch.records as unknown[]) {
    const r = record as Partial<Record<string, unknown>>;
    if (typeof r !== 'object' || r === null) return 'record is not an object';
    if (!['started', 'progress', 'succeeded', 'failed', 'returned'].includes(r.kind as string)) return `unknown record kind ${String(r.kind)}`;
    if (typeof r.taskId !== 'string' || !UUID.test(r.taskId)) return 'record taskId is not a uuid';
    if (!Number.isInteger(r.attempt) || typeof r.at !== 'string' || Number.isNaN(Date.parse(r.at))) return 'record attempt or at is invalid';
    if (r.kind === 'failed' && (typeof r.error !== 'object' || r.error === null)) return 'failed record has no error';
    if (r.kind === 'progress' && !isProgress(r.fraction, r.message)) return 'progress record has a fraction outside [0, 1] or a bad message';
    if (r.kind === 'returned' && !(RETURN_REASONS as readonly unknown[]).includes(r.reason)) return `returned record has an unknown reason ${String(r.reason)}`;
  }
  return null;
}

/** Longest progress message a handler may report (characters). */
export const MAX_PROGRESS_MESSAGE_CHARS = 1000;

/** Is this a valid progress report: a finite fraction in [0, 1] and a message of at most MAX_PROGRESS_MESSAGE_CHARS (or none)? */
export function isProgress(fraction: unknown, message: unknown): boolean {
  return (
    typeof fraction === 'number' &&
    Number.isFinite(fraction) &&
    fraction >= 0 &&
    fraction <= 1 &&
    (message === null || message === undefined || (typeof message === 'string' && message.length <= MAX_PROGRESS_MESSAGE_CHARS))
  );
}

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}

/**
 * The result lane (0 .. lanes-1) of a task: FNV-1a of its id. Every record of a task goes to the
 * same lane, so one consumer applies them in order; `lanes` 0 or 1 is lane 0.
 */
export function laneOf(taskId: string, lanes: number): number {
  if (lanes <= 1) return 0;
  let hash = 0x811c9dc5;
  for (let i = 0; i < taskId.length; i++) {
    hash ^= taskId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % lanes;
}

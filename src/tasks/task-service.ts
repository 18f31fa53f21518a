import { createHash } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import { sql, type Kysely } from 'kysely';
import {
  DEFAULT_RESOURCES,
  FogschedError,
  IdempotencyConflictError,
  SubmitQueueFullError,
  TaskNotFoundError,
  tierFor,
  type Priority,
  type Resources,
  type TaskCommand,
  type TaskSpec,
  type TaskState,
  type Tier,
} from '../domain/index.js';
import type { Database, EventMetadata, Executor } from '../store/index.js';
import { listFailedTasks, loadTaskStates, type FailedTaskFilter } from '../projections/index.js';
import type { TopologyNames } from '../outbox/index.js';
import { isConnectionError } from '../infra/postgres.js';
import { countedTransaction, executeTaskCommands } from './execute-commands.js';
import { createGroupCommit } from './group-commit.js';

/** A submit as the API validated it. */
export interface SubmitInput {
  readonly type: string;
  readonly payload?: unknown;
  readonly priority?: Priority;
  readonly resources?: Resources;
  readonly maxAttempts?: number;
  readonly timeoutMs?: number | null;
  readonly notBefore?: string | null;
  readonly deadline?: string | null;
  readonly idempotencyKey?: string | null;
  readonly retry?: { readonly baseMs: number; readonly factor: number; readonly maxMs: number } | null;
  id?: string; name?: string | null; dependsOn?: string[]; onDependencyFailure?: 'cancel'|'run';
  placement?: {zone?: string; labels?: Record<string,string>} | null; fallbackAfterMs?: number | null
}

export interface Caller {
  readonly tenant: string;
  /** From the credential (`key:<tenant>/<id>`, `jwt:<sub>`), or the role writing (`schedule:<id>`). */
  readonly actor: string;
  /** The trace of the request (32 hex digits), and its W3C `traceparent` that the task's messages carry. */
  readonly traceId?: string;
  readonly traceparent?: string;
  /** Whom the caller says it acts for (`X-Actor`): recorded beside `actor`, never instead of it. */
  readonly onBehalfOf?: string;
}

/** The event metadata of a caller's command. */
export function callerMetadata(caller: Caller): EventMetadata {
  return {
    tenant: caller.tenant,
    actor: caller.actor,
    ...(caller.onBehalfOf ? { onBehalfOf: caller.onBehalfOf } : {}),
    ...(caller.traceId ? { traceId: caller.traceId } : {}),
    ...(caller.traceparent ? { traceparent: caller.traceparent } : {}),
  };
}

export interface SubmitResult {
  readonly task: TaskState;
  /** False when an Idempotency-Key matched an earlier submit. */
  readonly created: boolean;
}

export interface TaskServiceOptions {
  readonly db: Kysely<Database>;
  readonly names: TopologyNames;
  readonly tiers: readonly Tier[];
  readonly defaultMaxAttempts: number;
  readonly maxBatch: number;
  /**
   * Submits that may wait to be written (SUBMIT_QUEUE_MAX): single submits queued for the group
   * commit plus the tasks of batches in flight. Past it a submit fails at once with
   * SubmitQueueFullError (503, Retry-After). Default 10,000.
   */
  readonly maxQueued?: number;
  /** Group-commit transactions in flight at once (default 3, see createGroupCommit). */
  readonly concurrency?: number;
  /**
   * IDEMPOTENCY_KEY_TTL_HOURS (default 24): a key older than this is treated as new, whether or
   * not retention has deleted it yet, so the window does not depend on when retention last ran.
   */
  readonly idempotencyKeyTtlHours?: number;
}

export const DEFAULT_IDEMPOTENCY_KEY_TTL_HOURS = 24;

interface PreparedSubmit {
  readonly spec: TaskSpec;
  readonly hash: string;
  readonly metadata: EventMetadata;
}

export type TaskService = ReturnType<typeof createTaskService>;

/** Submits (group-committed), cancels and requeues tasks. */
export function createTaskService(options: TaskServiceOptions) {
  const { db, names } = options;
  const keyTtlHours = options.idempotencyKeyTtlHours ?? DEFAULT_IDEMPOTENCY_KEY_TTL_HOURS;

  const prepare = (input: SubmitInput, caller: Caller): PreparedSubmit => {
    // Time-ordered ids (UUIDv7): every per-task index then grows at its right edge, so a long log
    // does not turn each insert into a random page write (and a full-page image in the WAL).
    const spec = buildTaskSpec(input, caller.tenant, uuidv7(), options);
    const { taskId: _id, tenant: _t, idempotencyKey: _k, ...significant } = spec;
    const hash = createHash('sha256').update(JSON.stringify(significant)).digest('base64url');
    return { spec, hash, metadata: callerMetadata(caller) };
  };

  /** Writes a group of submits in the caller's transaction; one result per item. */
  const writeSubmits = async (trx: Executor, items: readonly PreparedSubmit[]): Promise<(SubmitResult | Error)[]> => {
    const now = new Date().toISOString();
    const results = new Array<SubmitResult | Error | undefined>(items.length);
    // Idempotency: the first item with a (tenant, key) owns it; later ones with the same key follow it.
    const owners = new Map<string, number>();
    const followers: [number, number][] = [];
    items.forEach((item, i) => {
      if (item.spec.idempotencyKey === null) return;
      const k = `${item.spec.tenant}\u0000${item.spec.idempotencyKey}`;
      const owner = owners.get(k);
      if (owner === undefined) owners.set(k, i);
      else followers.push([i, owner]);
    });
    const existing = new Map<number, { taskId: string; hash: string }>();
    if (owners.size > 0) {
      const keyed = [...owners.values()].map((i) => items[i] as PreparedSubmit);
      // Claims the keys; a key a concurrent transaction holds makes this wait for it, then skip.
      // A key past its TTL is taken over (the row now names the new task), as if it were gone.
      const claimed = await sql<{ tenant: string; key: string }>`
        INSERT INTO idempotency_keys AS k (tenant, key, task_id, request_hash)
        SELECT * FROM unnest(${keyed.map((p) => p.spec.tenant)}::text[], ${keyed.map((p) => p.spec.idempotencyKey)}::text[],
          ${keyed.map((p) => p.spec.taskId)}::uuid[], ${keyed.map((p) => p.hash)}::text[])
        ON CONFLICT (tenant, key) DO UPDATE SET task_id = EXCLUDED.task_id, request_hash = EXCLUDED.request_hash, created_at = now()
          WHERE k.created_at < now() - ${keyTtlHours}::float8 * interval '1 hour'
        RETURNING tenant, key`.execute(trx);
      const claimedKeys = new Set(claimed.rows.map((r) => `${r.tenant}\u0000${r.key}`));
      const lost = [...owners.entries()].filter(([k]) => !claimedKeys.has(k));
      if (lost.length > 0) {
        const rows = await trx
          .selectFrom('idempotency_keys')
          .select(['tenant', 'key', 'task_id', 'request_hash'])
          .where(sql<boolean>`(tenant, key) IN (SELECT * FROM unnest(${lost.map(([k]) => k.split('\u0000')[0])}::text[], ${lost.map(([k]) => k.split('\u0000')[1])}::text[]))`)
          .execute();
        const byKey = new Map(rows.map((r) => [`${r.tenant}\u0000${r.key}`, r]));
        for (const [k, i] of lost) {
          const row = byKey.get(k);
          if (row) existing.set(i, { taskId: row.task_id, hash: row.request_hash });
        }
      }
    }
    const creates = items.map((item, i) => ({ item, i })).filter(({ i }) => !existing.has(i) && !followers.some(([f]) => f === i));
    const outcome = await executeTaskCommands(
      trx,
      creates.map(({ item }) => ({
        taskId: item.spec.taskId,
        command: { type: 'SubmitTask', data: { task: item.spec, now } } satisfies TaskCommand,
        metadata: item.metadata,
      })),
      names,
      new Set(creates.map(({ item }) => item.spec.taskId)),
    );
    creates.forEach(({ item, i }) => {
      results[i] = { task: outcome.states.get(item.spec.taskId) as TaskState, created: true };
    });
    const earlier = await loadTaskStates(trx, [...new Set([...existing.values()].map((e) => e.taskId))], { forUpdate: false });
    const replay = (i: number, taskId: string, hash: string) => {
      const item = items[i] as PreparedSubmit;
      const task = earlier.get(taskId) ?? outcome.states.get(taskId);
      if (!task) return new TaskNotFoundError(taskId);
      if (hash !== item.hash) return new IdempotencyConflictError(item.spec.idempotencyKey ?? '', taskId);
      return { task, created: false };
    };
    for (const [i, e] of existing) results[i] = replay(i, e.taskId, e.hash);
    for (const [i, owner] of followers) {
      const ownerItem = items[owner] as PreparedSubmit;
      const e = existing.get(owner);
      results[i] = replay(i, e?.taskId ?? ownerItem.spec.taskId, e?.hash ?? ownerItem.hash);
    }
    return results.map((r) => r ?? new Error('submit produced no result'));
  };

  const maxQueued = options.maxQueued ?? 10_000;
  let batchItemsInFlight = 0;
  const group = createGroupCommit<PreparedSubmit, SubmitResult>({
    maxBatch: options.maxBatch,
    maxQueued,
    onFull: () => new SubmitQueueFullError(maxQueued),
    ...(options.concurrency !== undefined ? { concurrency: options.concurrency } : {}),
    run: (items) => countedTransaction(db, (trx) => writeSubmits(trx, items)),
    isolate: (error) => !isConnectionError(error),
  });

  /** A batch in one transaction: all or nothing. Throws on the first invalid item. */
  const writeBatch = async (inputs: readonly SubmitInput[], caller: Caller): Promise<SubmitResult[]> => {
    // Every item is checked before anything is written; the problem lists each bad one by index.
    const itemErrors: { index: number; error: FogschedError }[] = [];
    const prepared = inputs.flatMap((input, index) => {
      try {
        return [prepare(input, caller)];
      } catch (error) {
        if (error instanceof FogschedError) itemErrors.push({ index, error });
        else throw error;
        return [];
      }
    });
    const results = await countedTransaction(db, async (trx) => {
      const r = await writeSubmits(trx, prepared);
      r.forEach((x, index) => {
        if (x instanceof FogschedError) itemErrors.push({ index, error: x });
      });
      if (itemErrors.length > 0) throw batchRejected(itemErrors); // rolls the whole batch back
      const failed = r.find((x): x is Error => x instanceof Error);
      if (failed) throw failed;
      return r as SubmitResult[];
    });
    return results;
  };

  const runCommand = async (taskId: string, caller: Caller, command: TaskCommand): Promise<TaskState> => {
    const outcome = await countedTransaction(db, async (trx) => {
      const found = await loadTaskStates(trx, [taskId], { forUpdate: false });
      if (found.get(taskId)?.spec?.tenant !== caller.tenant) throw new TaskNotFoundError(taskId);
      return executeTaskCommands(trx, [{ taskId, command, metadata: callerMetadata(caller) }], names);
    });
    const refused = outcome.refused.get(0);
    if (refused) throw refused;
    return outcome.states.get(taskId) as TaskState;
  };

  return {
    /** Validates and group-commits one submit; resolves after its transaction committed. */
    async submit(input: SubmitInput, caller: Caller): Promise<SubmitResult> {
      if (group.queued() + batchItemsInFlight >= maxQueued) throw new SubmitQueueFullError(maxQueued);
      return group.submit(prepare(input, caller));
    },
    /** Submits many tasks in one transaction: all or nothing. Throws on the first invalid item. */
    async submitBatch(inputs: readonly SubmitInput[], caller: Caller): Promise<SubmitResult[]> {
      // A batch larger than the whole queue still goes through when nothing else waits.
      const waiting = group.queued() + batchItemsInFlight;
      if (waiting > 0 && waiting + inputs.length > maxQueued) throw new SubmitQueueFullError(maxQueued);
      batchItemsInFlight += inputs.length;
      try {
        return await writeBatch(inputs, caller);
      } finally {
        batchItemsInFlight -= inputs.length;
      }
    },
    /** Submits waiting to be written (single ones queued for the group commit, tasks of batches in flight). */
    queued: () => group.queued() + batchItemsInFlight,
    /** Requeues the failed tasks matching the filter (at most `limit`), one transaction; `dryRun` only counts. */
    async requeueFailed(filter: FailedTaskFilter, caller: Caller, opts: { dryRun: boolean; limit: number }): Promise<{ matched: number; requeued: string[] }> {
      return countedTransaction(db, async (trx) => {
        const rows = await listFailedTasks(trx, { ...filter, tenant: caller.tenant, limit: opts.limit });
        if (opts.dryRun) return { matched: rows.length, requeued: [] };
        const now = new Date().toISOString();
        const outcome = await executeTaskCommands(
          trx,
          rows.map((r) => ({
            taskId: r.state.taskId,
            command: { type: 'RequeueTask', data: { actor: caller.actor, now } } satisfies TaskCommand,
            metadata: callerMetadata(caller),
          })),
          names,
        );
        // A task requeued meanwhile by someone else is refused by decide and left out.
        return { matched: rows.length, requeued: rows.filter((_, i) => !outcome.refused.has(i)).map((r) => r.state.taskId) };
      });
    },
    cancel(taskId: string, caller: Caller, reason: string | null): Promise<TaskState> {
      return runCommand(taskId, caller, { type: 'CancelTask', data: { actor: caller.actor, reason, now: new Date().toISOString() } });
    },
    requeue(taskId: string, caller: Caller): Promise<TaskState> {
      return runCommand(taskId, caller, { type: 'RequeueTask', data: { actor: caller.actor, now: new Date().toISOString() } });
    },
    idle: () => group.idle(),
  };
}

/** The spec of a new task; throws NoTierFitsError when no tier fits its resources. */
export function buildTaskSpec(
  input: SubmitInput,
  tenant: string,
  taskId: string,
  options: { readonly tiers: readonly Tier[]; readonly defaultMaxAttempts: number },
): TaskSpec {
  const resources = input.resources ?? DEFAULT_RESOURCES;
  return {
    taskId,
    tenant,
    type: input.type,
    payload: input.payload ?? null,
    priority: input.priority ?? 'normal',
    resources,
    tier: tierFor(resources, options.tiers), // before anything is written
    maxAttempts: input.maxAttempts ?? options.defaultMaxAttempts,
    timeoutMs: input.timeoutMs ?? null,
    notBefore: input.notBefore ? new Date(input.notBefore).toISOString() : null,
    deadline: input.deadline ? new Date(input.deadline).toISOString() : null,
    idempotencyKey: input.idempotencyKey ?? null,
    ...(input.retry ? { retry: input.retry } : {}),
  };
}

function batchRejected(items: { index: number; error: FogschedError }[]): FogschedError {
  const sorted = [...items].sort((a, b) => a.index - b.index);
  const first = sorted[0] as { index: number; error: FogschedError };
  return new FogschedError({
    code: first.error.code,
    status: first.error.status,
    message: `batch rejected, nothing stored: ${sorted.length} invalid item(s); tasks/${first.index}: ${first.error.message}`,
    details: { errors: sorted.map((i) => ({ path: `body/tasks/${i.index}`, message: i.error.message, code: i.error.code })) },
  });
}

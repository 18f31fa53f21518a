import { createHash } from 'node:crypto';
import { uuidv7 } from '../infra/ids.js';
import { sql, type Kysely } from 'kysely';
import {
  DEFAULT_RESOURCES,
  FogschedError,
  IdempotencyConflictError,
  InvalidDependenciesError,
  InvalidPlacementError,
  fallbackStep,
  normalizePlacement,
  PlacementClassLimitError,
  placementClass,
  placementErrors,
  canonicalJson,
  isUuid,
  MAX_DEPENDENCIES,
  TaskIdConflictError,
  ValidationError,
  type DependencyFailurePolicy,
  type DependencyState,
  type SubmitDependencies,
  type TaskPlacement,
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
import { countedStatement, countedTransaction, executeTaskCommands } from './execute-commands.js';
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
  /** The task's id (a UUID) chosen by the client: a repeat with the same body is idempotent, with another 409. */
  readonly id?: string;
  readonly name?: string | null;
  /** Tasks this one waits for: existing tasks of the tenant, or ids of other items of the same batch. */
  readonly dependsOn?: readonly string[];
  readonly onDependencyFailure?: DependencyFailurePolicy;
  readonly placement?: { readonly zone?: string; readonly labels?: Readonly<Record<string, string>> } | null;
  readonly fallbackAfterMs?: number | null;
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
  /** PLACEMENT_MAX_CLASSES: placement classes in use at most (each has broker queues); default 200. */
  readonly maxPlacementClasses?: number;
  /**
   * IDEMPOTENCY_KEY_TTL_HOURS (default 24): a key older than this is treated as new, whether or
   * not retention has deleted it yet, so the window does not depend on when retention last ran.
   */
  readonly idempotencyKeyTtlHours?: number;
}

export const DEFAULT_IDEMPOTENCY_KEY_TTL_HOURS = 24;
/** PLACEMENT_MAX_CLASSES by default. */
export const DEFAULT_MAX_PLACEMENT_CLASSES = 200;

interface PreparedSubmit {
  readonly spec: TaskSpec;
  readonly hash: string;
  readonly metadata: EventMetadata;
  /** The id was the client's (SubmitInput.id). */
  readonly clientId: boolean;
  /** Key-sorted JSON of the significant spec: what a repeat with the same id must match ('' without a client id). */
  readonly canonical: string;
}

/** A submit whose write is the one statement of executeTaskCommands: nothing to look up first. */
const oneStatement = (item: PreparedSubmit): boolean => !item.clientId && item.spec.idempotencyKey === null && (item.spec.dependsOn?.length ?? 0) === 0;

export type TaskService = ReturnType<typeof createTaskService>;

/** Submits (group-committed), cancels and requeues tasks. */
export function createTaskService(options: TaskServiceOptions) {
  const { db, names } = options;
  const keyTtlHours = options.idempotencyKeyTtlHours ?? DEFAULT_IDEMPOTENCY_KEY_TTL_HOURS;

  const prepare = (input: SubmitInput, caller: Caller): PreparedSubmit => {
    // Time-ordered ids (UUIDv7): every per-task index then grows at its right edge, so a long log
    // does not turn each insert into a random page write (and a full-page image in the WAL).
    if (input.id !== undefined && !isUuid(input.id)) throw new ValidationError(`id ${JSON.stringify(input.id)} is not a UUID`, { errors: [{ path: 'body/id', message: 'must be a UUID' }] });
    const spec = buildTaskSpec(input, caller.tenant, input.id?.toLowerCase() ?? uuidv7(), options);
    const hash = createHash('sha256').update(JSON.stringify(significantSpec(spec))).digest('base64url');
    const clientId = input.id !== undefined;
    return { spec, hash, metadata: callerMetadata(caller), clientId, canonical: clientId ? canonicalJson(significantSpec(spec)) : '' };
  };

  /**
   * Writes a group of submits in the caller's transaction; one result per item. `batch`: the
   * items are one batch, whose items may depend on each other (by their client-chosen ids).
   */
  const writeSubmits = async (trx: Executor, items: readonly PreparedSubmit[], batch = false): Promise<(SubmitResult | Error)[]> => {
    const now = new Date().toISOString();
    const results = new Array<SubmitResult | Error | undefined>(items.length);
    const { existingById, idFollowers } = await checkClientIds(trx, items, results);
    const dependencies = await checkDependencies(trx, items, results, batch, (i) => existingById.has(i) || idFollowers.has(i));
    const settled = (i: number) => results[i] !== undefined || existingById.has(i) || idFollowers.has(i);
    // Idempotency: the first item with a (tenant, key) owns it; later ones with the same key follow it.
    const owners = new Map<string, number>();
    const followers: [number, number][] = [];
    items.forEach((item, i) => {
      if (item.spec.idempotencyKey === null || settled(i)) return;
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
    const keyFollowers = new Set(followers.map(([f]) => f));
    const creates = items.map((item, i) => ({ item, i })).filter(({ i }) => !settled(i) && !existing.has(i) && !keyFollowers.has(i));
    const outcome = await executeTaskCommands(
      trx,
      creates.map(({ item, i }) => {
        const deps = dependencies.get(i);
        return {
          taskId: item.spec.taskId,
          command: { type: 'SubmitTask', data: { task: item.spec, now, ...(deps ? { dependencies: deps.counts } : {}) } } satisfies TaskCommand,
          metadata: item.metadata,
        };
      }),
      names,
      new Set(creates.map(({ item }) => item.spec.taskId)),
    );
    creates.forEach(({ item, i }, index) => {
      results[i] = outcome.refused.get(index) ?? { task: outcome.states.get(item.spec.taskId) as TaskState, created: true };
    });
    await writeEdges(
      trx,
      creates.flatMap(({ item, i }) => {
        const deps = dependencies.get(i);
        const state = outcome.states.get(item.spec.taskId);
        return deps && state && !(results[i] instanceof Error) ? [{ spec: item.spec, edges: deps.edges, waiting: state.status === 'waiting', pending: deps.counts.pending }] : [];
      }),
    );
    for (const [i, first] of idFollowers) {
      const r = results[first];
      results[i] = r === undefined || r instanceof Error ? (r ?? new Error('submit produced no result')) : { task: r.task, created: false };
    }
    const earlier = await loadTaskStates(trx, [...new Set([...[...existing.values()].map((e) => e.taskId), ...existingById.values()])], { forUpdate: false });
    for (const [i, taskId] of existingById) {
      const task = earlier.get(taskId);
      results[i] = task ? { task, created: false } : new TaskNotFoundError(taskId);
    }
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
    // Tasks without a client id, idempotency key or dependencies are written by one statement:
    // no transaction around it (each item's result stands alone, as in the transaction).
    run: (items) =>
      items.every(oneStatement)
        ? countedStatement(db, (exec) => writeSubmits(exec, items))
        : countedTransaction(db, (trx) => writeSubmits(trx, items)),
    isolate: (error) => !isConnectionError(error),
  });

  /** A batch in one transaction: all or nothing. Throws on the first invalid item. */
  const writeBatch = async (inputs: readonly SubmitInput[], caller: Caller): Promise<SubmitResult[]> => {
    // Every item is checked before anything is written; the problem lists each bad one by index.
    const itemErrors: { index: number; error: FogschedError }[] = [];
    const positions: number[] = []; // the input index of each prepared item
    const prepared = inputs.flatMap((input, index) => {
      try {
        const p = prepare(input, caller);
        positions.push(index);
        return [p];
      } catch (error) {
        if (error instanceof FogschedError) itemErrors.push({ index, error });
        else throw error;
        return [];
      }
    });
    await admitPlacementClasses(prepared.map((p) => p.spec));
    const results = await countedTransaction(db, async (trx) => {
      const r = await writeSubmits(trx, prepared, true);
      r.forEach((x, index) => {
        if (x instanceof FogschedError) itemErrors.push({ index: positions[index] ?? index, error: x });
      });
      if (itemErrors.length > 0) throw batchRejected(itemErrors); // rolls the whole batch back
      const failed = r.find((x): x is Error => x instanceof Error);
      if (failed) throw failed;
      return r as SubmitResult[];
    });
    return results;
  };

  const maxPlacementClasses = options.maxPlacementClasses ?? DEFAULT_MAX_PLACEMENT_CLASSES;
  /**
   * Placement classes are capped (each has broker queues nothing deletes): the classes of these
   * specs that no submit used before are recorded, unless that would pass PLACEMENT_MAX_CLASSES
   * (PlacementClassLimitError, nothing written). Approximate under concurrent first uses of new
   * classes (each checks the count it saw); a known class never waits on anything but an index read.
   */
  const admitPlacementClasses = async (specs: readonly TaskSpec[]): Promise<void> => {
    const wanted = new Map<string, TaskSpec>();
    for (const spec of specs) {
      const cls = placementClass(spec.placement, spec.fallbackAfterMs);
      if (cls !== null && !wanted.has(cls)) wanted.set(cls, spec);
    }
    if (wanted.size === 0) return;
    const known = await db.selectFrom('placement_classes').select('class').where('class', 'in', [...wanted.keys()]).execute();
    for (const row of known) wanted.delete(row.class);
    if (wanted.size === 0) return;
    const inUse = await db.selectFrom('placement_classes').select(sql<number>`count(*)::int`.as('n')).executeTakeFirst();
    if ((inUse?.n ?? 0) + wanted.size > maxPlacementClasses) throw new PlacementClassLimitError([...wanted.keys()], maxPlacementClasses);
    await db
      .insertInto('placement_classes')
      .values(
        [...wanted].map(([cls, spec]) => ({
          class: cls,
          placement: JSON.stringify(spec.placement ?? null),
          fallback_after_ms: spec.fallbackAfterMs ?? null,
          first_tenant: spec.tenant,
        })),
      )
      .onConflict((oc) => oc.column('class').doNothing())
      .execute();
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
      const prepared = prepare(input, caller);
      await admitPlacementClasses([prepared.spec]);
      return group.submit(prepared);
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

/**
 * The spec of a new task; throws NoTierFitsError when no tier fits its resources,
 * InvalidDependenciesError for a malformed dependsOn (not a UUID, the task itself, more than
 * MAX_DEPENDENCIES) and InvalidPlacementError for a malformed placement or fallbackAfterMs.
 * Fields left unset are left out of the spec (old specs, and their idempotency hashes, stay as they were).
 */
export function buildTaskSpec(
  input: SubmitInput,
  tenant: string,
  taskId: string,
  options: { readonly tiers: readonly Tier[]; readonly defaultMaxAttempts: number },
): TaskSpec {
  const resources = input.resources ?? DEFAULT_RESOURCES;
  const dependsOn = normalizeDependsOn(input.dependsOn, taskId);
  // The placement rules are the domain's (placementErrors), shared with the nodes' FOG_NODE_* settings.
  const placementProblem = placementErrors(input.placement, input.fallbackAfterMs)[0];
  if (placementProblem) throw new InvalidPlacementError(`${placementProblem.path} ${placementProblem.message}`, `body/${placementProblem.path}`);
  const placement: TaskPlacement | null = normalizePlacement(input.placement);
  // Rounded up to the next step (FALLBACK_STEPS_MS): each delay of a place has queues of its own.
  const fallbackAfterMs = input.fallbackAfterMs === undefined || input.fallbackAfterMs === null ? null : fallbackStep(input.fallbackAfterMs);
  const name = input.name ?? null;
  if (name !== null && (typeof name !== 'string' || name.length > MAX_TASK_NAME_CHARS)) {
    throw new ValidationError(`name must be a string of at most ${MAX_TASK_NAME_CHARS} characters`, { errors: [{ path: 'body/name', message: `at most ${MAX_TASK_NAME_CHARS} characters` }] });
  }
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
    ...(name !== null ? { name } : {}),
    // onDependencyFailure means nothing without dependencies (a workflow may set it for every step).
    ...(dependsOn.length > 0 ? { dependsOn, onDependencyFailure: input.onDependencyFailure ?? 'cancel' } : {}),
    ...(placement ? { placement } : {}),
    ...(placement && fallbackAfterMs !== null ? { fallbackAfterMs } : {}),
  };
}

/** Longest task name (characters). */
export const MAX_TASK_NAME_CHARS = 100;
/** dependsOn without duplicates (first occurrence kept, ids lower-cased); throws InvalidDependenciesError. */
function normalizeDependsOn(dependsOn: readonly string[] | undefined, taskId: string): readonly string[] {
  if (!dependsOn || dependsOn.length === 0) return [];
  const bad = dependsOn.filter((id) => !isUuid(id));
  if (bad.length > 0) throw new InvalidDependenciesError(`dependsOn holds ${bad.length} value(s) that are not task ids (UUIDs): ${bad.slice(0, 5).map((b) => JSON.stringify(b)).join(', ')}`);
  const ids = [...new Set(dependsOn.map((id) => id.toLowerCase()))];
  if (ids.length > MAX_DEPENDENCIES) throw new InvalidDependenciesError(`dependsOn names ${ids.length} tasks; at most ${MAX_DEPENDENCIES} (MAX_DEPENDENCIES)`);
  if (ids.includes(taskId)) throw new InvalidDependenciesError(`task ${taskId} cannot depend on itself`);
  return ids;
}

function batchRejected(items: { index: number; error: FogschedError }[]): FogschedError {
  const sorted = [...items].sort((a, b) => a.index - b.index);
  const first = sorted[0] as { index: number; error: FogschedError };
  return new FogschedError({
    code: first.error.code,
    status: first.error.status,
    message: `batch rejected, nothing stored: ${sorted.length} invalid item(s); tasks/${first.index}: ${first.error.message}`,
    details: {
      errors: sorted.flatMap((i) => {
        // An error that names its fields (body/dependsOn) is reported at the item's (body/tasks/3/dependsOn).
        const fields = i.error.details?.errors;
        if (Array.isArray(fields) && fields.length > 0) {
          return (fields as { path: string; message: string }[]).map((f) => ({
            path: f.path.replace(/^body(?=\/|$)/, `body/tasks/${i.index}`),
            message: f.message,
            code: i.error.code,
          }));
        }
        return [{ path: `body/tasks/${i.index}`, message: i.error.message, code: i.error.code }];
      }),
    },
  });
}

/** The spec without what may differ between two submits of the same task (id, tenant, Idempotency-Key). */
function significantSpec(spec: TaskSpec): Omit<TaskSpec, 'taskId' | 'tenant' | 'idempotencyKey'> {
  const { taskId: _id, tenant: _t, idempotencyKey: _k, ...significant } = spec;
  return significant;
}

/**
 * Client-chosen ids: an item whose id names an existing task of its tenant with the same
 * significant spec is a repeat (`existingById`); another body or tenant is TaskIdConflictError.
 * A later item of the same call with the same id follows the first (`idFollowers`) or conflicts.
 */
async function checkClientIds(
  trx: Executor,
  items: readonly PreparedSubmit[],
  results: (SubmitResult | Error | undefined)[],
): Promise<{ existingById: Map<number, string>; idFollowers: Map<number, number> }> {
  const existingById = new Map<number, string>();
  const idFollowers = new Map<number, number>();
  const withId = items.flatMap((item, i) => (item.clientId ? [{ item, i }] : []));
  if (withId.length === 0) return { existingById, idFollowers };
  const rows = await trx
    .selectFrom('task_current')
    .select(['task_id', 'tenant', 'spec'])
    .where('task_id', '=', sql<string>`ANY(${withId.map((w) => w.item.spec.taskId)}::uuid[])`)
    .execute();
  const found = new Map(rows.map((r) => [r.task_id, r]));
  const first = new Map<string, number>();
  for (const { item, i } of withId) {
    const { taskId, tenant } = item.spec;
    const row = found.get(taskId);
    if (row) {
      const same = row.tenant === tenant && canonicalJson(significantSpec(row.spec as TaskSpec)) === item.canonical;
      if (same) existingById.set(i, taskId);
      else results[i] = new TaskIdConflictError(taskId);
      continue;
    }
    const j = first.get(taskId);
    if (j === undefined) first.set(taskId, i);
    else if ((items[j] as PreparedSubmit).spec.tenant === tenant && (items[j] as PreparedSubmit).canonical === item.canonical) idFollowers.set(i, j);
    else results[i] = new TaskIdConflictError(taskId);
  }
  return { existingById, idFollowers };
}

interface PlannedDependencies {
  readonly counts: SubmitDependencies;
  /** Each dependency with its state when it had already ended (null: not yet). */
  readonly edges: readonly { readonly id: string; readonly resolved: 'succeeded' | 'failed' | 'cancelled' | null }[];
}

/**
 * Checks the dependsOn of the items to create and plans their SubmitTask.dependencies. A
 * dependency is another new item of the same batch or an existing task of the tenant, whose
 * task_current row is locked FOR SHARE (in id order): a dependency ending concurrently either
 * committed first (its end is seen here) or waits for this transaction (and then sees the edges).
 * A bad item gets InvalidDependenciesError in `results` and is not written.
 */
async function checkDependencies(
  trx: Executor,
  items: readonly PreparedSubmit[],
  results: (SubmitResult | Error | undefined)[],
  batch: boolean,
  replayed: (i: number) => boolean,
): Promise<Map<number, PlannedDependencies>> {
  const planned = new Map<number, PlannedDependencies>();
  const open = (i: number) => results[i] === undefined && !replayed(i);
  const withDeps = items.flatMap((item, i) => (open(i) && (item.spec.dependsOn?.length ?? 0) > 0 ? [i] : []));
  if (withDeps.length === 0) return planned;
  // New items of this batch, by id (only a batch's items may depend on each other).
  const batchNew = new Map<string, number>();
  if (batch) items.forEach((item, i) => open(i) && item.clientId && batchNew.set(item.spec.taskId, i));
  const external = [...new Set(withDeps.flatMap((i) => (items[i]?.spec.dependsOn ?? []).filter((id) => !batchNew.has(id))))].sort();
  const rows =
    external.length === 0
      ? []
      : (
          await sql<{ task_id: string; tenant: string; state: string }>`
            SELECT task_id, tenant, state FROM task_current WHERE task_id = ANY(${external}::uuid[]) ORDER BY task_id FOR SHARE`.execute(trx)
        ).rows;
  const found = new Map(rows.map((r) => [r.task_id, r]));
  const fail = (i: number, message: string) => {
    results[i] = new InvalidDependenciesError(message);
    planned.delete(i);
  };
  for (const i of withDeps) {
    const spec = (items[i] as PreparedSubmit).spec;
    const unknown = (spec.dependsOn ?? []).filter((id) => !batchNew.has(id) && found.get(id)?.tenant !== spec.tenant);
    if (unknown.length > 0) fail(i, `dependsOn names ${unknown.length} task(s) that do not exist${batch ? ' in this tenant or this batch' : ' in this tenant'}: ${unknown.slice(0, 5).join(', ')}`);
  }
  // Cycles among the batch's items: a depth-first walk; an item reached again while on the path closes one.
  const order: number[] = []; // dependencies before their dependants
  const mark = new Map<number, 'open' | 'done'>();
  const path: number[] = [];
  const visit = (i: number): void => {
    if (mark.get(i) === 'done') return;
    if (mark.get(i) === 'open') {
      const cycle = path.slice(path.indexOf(i));
      for (const c of cycle) fail(c, `dependsOn makes a cycle: ${cycle.map((x) => items[x]?.spec.taskId).join(' -> ')} -> ${items[i]?.spec.taskId}`);
      return;
    }
    mark.set(i, 'open');
    path.push(i);
    for (const id of items[i]?.spec.dependsOn ?? []) {
      const j = batchNew.get(id);
      if (j !== undefined) visit(j);
    }
    path.pop();
    mark.set(i, 'done');
    order.push(i);
  };
  for (const i of withDeps) visit(i);
  const hasDeps = new Set(withDeps);
  // What each item's SubmitTask will see. A new item of the batch has not ended, unless its own
  // SubmitTask cancels it (one of its dependencies had failed, policy cancel): simulated in order.
  const cancelledAtSubmit = new Set<number>();
  for (const i of order) {
    if (results[i] !== undefined || !hasDeps.has(i)) continue;
    const spec = (items[i] as PreparedSubmit).spec;
    const counts = { pending: 0, succeeded: 0, failed: 0, cancelled: 0, firstFailed: null as string | null, firstFailedState: null as 'failed' | 'cancelled' | null };
    const edges = (spec.dependsOn ?? []).map((id) => {
      const j = batchNew.get(id);
      const state = j !== undefined ? (cancelledAtSubmit.has(j) ? 'cancelled' : 'pending') : (found.get(id)?.state ?? 'pending');
      const resolved: DependencyState | null = state === 'succeeded' || state === 'failed' || state === 'cancelled' ? state : null;
      if (resolved === null) counts.pending++;
      else counts[resolved]++;
      if ((resolved === 'failed' || resolved === 'cancelled') && counts.firstFailed === null) {
        counts.firstFailed = id;
        counts.firstFailedState = resolved;
      }
      return { id, resolved };
    });
    if (counts.firstFailed !== null && (spec.onDependencyFailure ?? 'cancel') === 'cancel') cancelledAtSubmit.add(i);
    planned.set(i, { counts, edges });
  }
  return planned;
}

/**
 * The new tasks' edges (task_dependencies) and, for those left waiting, their unresolved count
 * (task_waits): one statement, in the submit's transaction.
 */
async function writeEdges(trx: Executor, tasks: readonly { spec: TaskSpec; edges: PlannedDependencies['edges']; waiting: boolean; pending: number }[]): Promise<void> {
  if (tasks.length === 0) return;
  const edges = tasks.flatMap((t) => t.edges.map((e) => ({ task: t.spec.taskId, on: e.id, tenant: t.spec.tenant, resolved: e.resolved })));
  const waits = tasks.filter((t) => t.waiting);
  // unnest: one statement for up to MAX_DEPENDENCIES edges per task, whatever the batch.
  await sql`
    WITH edges AS (
      INSERT INTO task_dependencies (task_id, depends_on, tenant, resolved_state)
      SELECT * FROM unnest(${edges.map((e) => e.task)}::uuid[], ${edges.map((e) => e.on)}::uuid[], ${edges.map((e) => e.tenant)}::text[], ${edges.map((e) => e.resolved)}::text[])
    )
    INSERT INTO task_waits (task_id, pending)
    SELECT * FROM unnest(${waits.map((w) => w.spec.taskId)}::uuid[], ${waits.map((w) => w.pending)}::int[])`.execute(trx);
}

import { createHash } from 'node:crypto';
import { uuidv7 } from '../infra/ids.js';
import { Cron } from 'croner';
import { sql, type Kysely, type Selectable } from 'kysely';
import {
  decideSchedule,
  evolveSchedule,
  FogschedError,
  initialScheduleState,
  ScheduleLimitReachedError,
  ScheduleNotFoundError,
  ValidationError,
  type BackoffOptions,
  type CatchUp,
  type ScheduleCommand,
  type ScheduleSkipReason,
  type ScheduleSpec,
  type ScheduleState,
  type ScheduleStatus,
  type TaskCommand,
  type TaskTemplate,
  type Tier,
} from '../domain/index.js';
import { createBackoff } from '../infra/backoff.js';
import { processHealth, UNTRACKED, type LoopProgress } from '../infra/health.js';
import type { Logger } from '../infra/logger.js';
import { sleep, type Role } from '../infra/role.js';
import type { TopologyNames } from '../outbox/index.js';
import { appendEvents, type Database, type Executor, type SchedulesTable } from '../store/index.js';
import { buildTaskSpec, callerMetadata, countedTransaction, executeTaskCommands, type Caller } from '../tasks/index.js';
import { expireRunningLeases, nextLeaseExpiryMs, type RunningLease } from './lease.js';
import { pruneRetention, type RetentionOptions, type RetentionResult } from './retention.js';

export interface ScheduleInput {
  readonly name?: string;
  readonly cron: string;
  readonly timezone?: string;
  readonly catchUp?: CatchUp;
  readonly template: TaskTemplate;
}

export interface ScheduleDeps {
  readonly db: Kysely<Database>;
  readonly names: TopologyNames;
  readonly tiers: readonly Tier[];
  readonly defaultMaxAttempts: number;
  /** Schedules (not deleted) one tenant may have (TENANT_MAX_SCHEDULES). Default 1,000. */
  readonly maxPerTenant?: number;
  /** A cron whose runs come closer than this is refused (SCHEDULE_MIN_INTERVAL_MS). Default 1,000. */
  readonly minIntervalMs?: number;
}

/** The next run strictly after `after`, or null when the expression has no more. Throws ValidationError on a bad cron or zone. */
export function nextFireAt(cron: string, timezone: string, after: Date): string | null {
  let job: Cron;
  try {
    job = new Cron(cron, { timezone, paused: true });
  } catch (error) {
    throw new ValidationError(`cron ${JSON.stringify(cron)} is invalid: ${(error as Error).message}`, { errors: [{ path: 'body/cron', message: (error as Error).message }] });
  }
  try {
    return job.nextRun(after)?.toISOString() ?? null;
  } catch (error) {
    throw new ValidationError(`timezone ${JSON.stringify(timezone)} is invalid`, { errors: [{ path: 'body/timezone', message: (error as Error).message }] });
  }
}

/**
 * Throws ValidationError when two runs of the cron come less than `minMs` apart. Checked over the
 * next 100 runs or the next year, whichever ends first (a cron's pattern repeats within a year,
 * except Feb 29, whose runs are years apart anyway).
 */
export function checkCronInterval(cron: string, timezone: string, minMs: number, from: Date): void {
  if (minMs <= 0) return;
  const job = new Cron(cron, { timezone, paused: true }); // nextFireAt validated the expression first
  const horizon = from.getTime() + 366 * 86_400_000;
  let previous = job.nextRun(from);
  for (let i = 0; previous && i < 100; i++) {
    const next = job.nextRun(previous);
    if (!next) return;
    const gap = next.getTime() - previous.getTime();
    if (gap < minMs) {
      const message = `runs ${gap} ms apart (at ${previous.toISOString()} and ${next.toISOString()}); runs must be at least ${minMs} ms apart (SCHEDULE_MIN_INTERVAL_MS)`;
      throw new ValidationError(`cron ${JSON.stringify(cron)} ${message}`, { errors: [{ path: 'body/cron', message }] });
    }
    if (next.getTime() > horizon) return;
    previous = next;
  }
}

/** The id of the task a schedule's run at `fireAt` creates: the same run can never make two tasks. */
export function firingTaskId(scheduleId: string, fireAt: string): string {
  const h = createHash('sha256').update(`${scheduleId}|${fireAt}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-8${h.slice(13, 16)}-${((parseInt(h.slice(16, 17), 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

type ScheduleRow = Selectable<SchedulesTable>;

export function scheduleRowToState(row: ScheduleRow): ScheduleState {
  return {
    scheduleId: row.schedule_id,
    status: row.state as ScheduleStatus,
    version: row.version,
    spec: { scheduleId: row.schedule_id, tenant: row.tenant, name: row.name, cron: row.cron, timezone: row.timezone, catchUp: row.catch_up as CatchUp, template: row.template as TaskTemplate },
    nextFireAt: row.next_fire_at?.toISOString() ?? null,
    lastFiredAt: row.last_fired_at?.toISOString() ?? null,
    lastTaskId: row.last_task_id,
    firedCount: row.fired_count,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

async function loadSchedule(db: Executor, scheduleId: string, forUpdate: boolean): Promise<ScheduleState> {
  let q = db.selectFrom('schedules').selectAll().where('schedule_id', '=', scheduleId);
  if (forUpdate) q = q.forUpdate();
  const row = await q.executeTakeFirst();
  return row ? scheduleRowToState(row) : initialScheduleState(scheduleId);
}

/** Decides, appends the schedule's events and writes its read-model row, in the caller's transaction. */
async function applyScheduleCommand(trx: Executor, state: ScheduleState, command: ScheduleCommand, caller: Caller | 'scheduler'): Promise<ScheduleState> {
  const who = caller === 'scheduler' ? { actor: 'scheduler' } : callerMetadata(caller);
  const events = decideSchedule(state, command);
  if (events.length === 0) return state;
  let next = state;
  const newEvents = events.map((event) => {
    next = evolveSchedule(next, event);
    return { streamId: state.scheduleId, streamType: 'schedule', streamVersion: next.version, eventId: uuidv7(), type: event.type, data: event.data, metadata: { ...who, tenant: next.spec?.tenant } };
  });
  await appendEvents(trx, newEvents);
  const spec = next.spec as ScheduleSpec;
  await sql`
    INSERT INTO schedules (schedule_id, tenant, name, cron, timezone, catch_up, template, state, next_fire_at, last_fired_at, last_task_id, fired_count, version, created_at, updated_at)
    VALUES (${next.scheduleId}, ${spec.tenant}, ${spec.name}, ${spec.cron}, ${spec.timezone}, ${spec.catchUp}, ${JSON.stringify(spec.template)}::jsonb, ${next.status},
      ${next.nextFireAt}, ${next.lastFiredAt}, ${next.lastTaskId}, ${next.firedCount}, ${next.version}, ${next.createdAt}, ${next.updatedAt})
    ON CONFLICT (schedule_id) DO UPDATE SET state = EXCLUDED.state, next_fire_at = EXCLUDED.next_fire_at, last_fired_at = EXCLUDED.last_fired_at,
      last_task_id = EXCLUDED.last_task_id, fired_count = EXCLUDED.fired_count, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
    WHERE schedules.version < EXCLUDED.version`.execute(trx);
  return next;
}

export function createScheduleService(deps: ScheduleDeps) {
  const { db } = deps;
  const maxPerTenant = deps.maxPerTenant ?? 1000;
  const minIntervalMs = deps.minIntervalMs ?? 1000;
  const mutate = (scheduleId: string, caller: Caller, command: (state: ScheduleState) => ScheduleCommand) =>
    db.transaction().execute(async (trx) => {
      const state = await loadSchedule(trx, scheduleId, true);
      if (state.spec && state.spec.tenant !== caller.tenant) throw new ScheduleNotFoundError(scheduleId);
      return applyScheduleCommand(trx, state, command(state), caller);
    });

  return {
    async create(input: ScheduleInput, caller: Caller): Promise<ScheduleState> {
      const timezone = input.timezone ?? 'UTC';
      const now = new Date();
      const first = nextFireAt(input.cron, timezone, now);
      checkCronInterval(input.cron, timezone, minIntervalMs, now);
      // Checks the template the way a submit would (tier), before anything is stored.
      buildTaskSpec(input.template, caller.tenant, uuidv7(), deps);
      const scheduleId = uuidv7();
      const schedule: ScheduleSpec = { scheduleId, tenant: caller.tenant, name: input.name ?? input.template.type, cron: input.cron, timezone, catchUp: input.catchUp ?? 'skip', template: input.template };
      return db.transaction().execute(async (trx) => {
        // Creates of one tenant take turns (a transaction-scoped lock), so two at once cannot both
        // see room for one more schedule.
        await sql`SELECT pg_advisory_xact_lock(hashtextextended(${`fogsched:schedules:${caller.tenant}`}, 0))`.execute(trx);
        const count = await trx
          .selectFrom('schedules')
          .select((eb) => eb.fn.countAll<number>().as('n'))
          .where('tenant', '=', caller.tenant)
          .where('state', '!=', 'deleted')
          .executeTakeFirstOrThrow();
        if (Number(count.n) >= maxPerTenant) throw new ScheduleLimitReachedError(caller.tenant, maxPerTenant);
        return applyScheduleCommand(trx, initialScheduleState(scheduleId), { type: 'CreateSchedule', data: { schedule, nextFireAt: first, actor: caller.actor, now: now.toISOString() } }, caller);
      });
    },
    async get(scheduleId: string, caller: Caller): Promise<ScheduleState> {
      const state = await loadSchedule(db, scheduleId, false);
      if (state.status === 'new' || state.status === 'deleted' || state.spec?.tenant !== caller.tenant) throw new ScheduleNotFoundError(scheduleId);
      return state;
    },
    /** Newest first; with `maxBytes` a page also ends after the schedule whose template brings it there (`pageBytes`, counted in PostgreSQL). */
    async list(caller: Caller, opts: { limit: number; beforeSeq?: number; maxBytes?: number }): Promise<{ seq: number; state: ScheduleState; pageBytes?: number }[]> {
      let q = db.selectFrom('schedules').selectAll().where('tenant', '=', caller.tenant).where('state', '!=', 'deleted');
      if (opts.beforeSeq !== undefined) q = q.where('seq', '<', opts.beforeSeq);
      if (opts.maxBytes === undefined) {
        const rows = await q.orderBy('seq', 'desc').limit(opts.limit).execute();
        return rows.map((r) => ({ seq: r.seq, state: scheduleRowToState(r) }));
      }
      // As listTasks: a row comes while the rows before it hold less than maxBytes.
      const limited = q
        .select([sql<string>`sum(octet_length(template::text)) OVER (ORDER BY seq DESC)`.as('page_bytes'), sql<number>`octet_length(template::text)`.as('row_bytes')])
        .orderBy('seq', 'desc')
        .limit(opts.limit);
      const rows = await db.selectFrom(limited.as('page')).selectAll().where(sql<boolean>`page_bytes - row_bytes < ${opts.maxBytes}`).orderBy('seq', 'desc').execute();
      return rows.map(({ page_bytes, row_bytes: _, ...r }) => ({ seq: r.seq, state: scheduleRowToState(r), pageBytes: Number(page_bytes) }));
    },
    pause: (id: string, caller: Caller) => mutate(id, caller, () => ({ type: 'PauseSchedule', data: { actor: caller.actor, now: new Date().toISOString() } })),
    resume: (id: string, caller: Caller) =>
      mutate(id, caller, (state) => ({
        type: 'ResumeSchedule',
        data: { actor: caller.actor, nextFireAt: state.spec ? nextFireAt(state.spec.cron, state.spec.timezone, new Date()) : null, now: new Date().toISOString() },
      })),
    remove: (id: string, caller: Caller) => mutate(id, caller, () => ({ type: 'DeleteSchedule', data: { actor: caller.actor, now: new Date().toISOString() } })),
  };
}
export type ScheduleService = ReturnType<typeof createScheduleService>;

export interface SchedulerOptions extends ScheduleDeps {
  readonly logger: Logger;
  readonly pollIntervalMs: number;
  /** A run late by more than this counts as missed (catch-up policy decides). */
  readonly misfireGraceMs: number;
  /** RUNNING_LEASE_MS and RUNNING_LEASE_GRACE_MS. */
  readonly lease: RunningLease;
  /** Backoff of the retries the lease schedules (RETRY_BASE_MS, RETRY_FACTOR, RETRY_MAX_MS). */
  readonly backoff: BackoffOptions;
  /** OUTBOX_RETENTION_DAYS, INBOX_RETENTION_DAYS, IDEMPOTENCY_KEY_TTL_HOURS. */
  readonly retention: RetentionOptions;
  /** How often retention runs (default 60 s). */
  readonly retentionIntervalMs?: number;
}

export interface Scheduler extends Role {
  /** Fires every due schedule once; returns the number of tasks created. */
  tick(): Promise<number>;
  /** Fails waiting tasks past their deadline; returns how many. */
  expireOverdue(): Promise<number>;
  /** Gives up running attempts whose node was lost or whose lease ran out; returns how many. */
  expireLeases(): Promise<number>;
  /** Deletes old outbox, inbox and idempotency-key rows (see RetentionOptions). */
  pruneRetention(): Promise<RetentionResult>;
}

/**
 * Fires due schedules, expires waiting tasks past their deadline, gives up running tasks whose
 * lease ran out, and prunes the outbox, inbox and idempotency keys. Replica-safe: due rows are
 * claimed with FOR UPDATE SKIP LOCKED, the firing is checked against the schedule's state by
 * decide, and the created task's id is derived from (schedule, run time), so a run can never
 * create two tasks, across replicas and restarts.
 */
export function createScheduler(options: SchedulerOptions): Scheduler {
  const logger = options.logger.child({ role: 'scheduler' });
  const abort = new AbortController();
  let loop: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;

  const fire = async (trx: Executor, state: ScheduleState, now: Date): Promise<boolean> => {
    const spec = state.spec as ScheduleSpec;
    const fireAt = state.nextFireAt as string;
    const late = now.getTime() - Date.parse(fireAt);
    const upcoming = nextFireAt(spec.cron, spec.timezone, now);
    const skip = (reason: ScheduleSkipReason) =>
      applyScheduleCommand(trx, state, { type: 'SkipSchedule', data: { from: fireAt, nextFireAt: upcoming, now: now.toISOString(), reason } }, 'scheduler');
    if (spec.catchUp === 'skip' && late > options.misfireGraceMs) {
      await skip({ kind: 'missed', lateMs: late });
      return false;
    }
    // 'once' (or on time): one run for this due time; runs missed meanwhile fold into it.
    const taskId = firingTaskId(state.scheduleId, fireAt);
    // The ScheduleFired and the task it names are written together or not at all: a refused
    // submit rolls both back to the savepoint, and the run is recorded as skipped, with why.
    await sql`SAVEPOINT schedule_run`.execute(trx);
    try {
      const after = await applyScheduleCommand(trx, state, { type: 'FireSchedule', data: { fireAt, taskId, nextFireAt: upcoming, now: now.toISOString() } }, 'scheduler');
      if (after === state) {
        await sql`RELEASE SAVEPOINT schedule_run`.execute(trx);
        return false;
      }
      const task = buildTaskSpec(spec.template, spec.tenant, taskId, options);
      const command: TaskCommand = { type: 'SubmitTask', data: { task, now: now.toISOString() } };
      const outcome = await executeTaskCommands(
        trx,
        [{ taskId, command, metadata: { tenant: spec.tenant, actor: `schedule:${state.scheduleId}`, causationId: state.scheduleId } }],
        options.names,
        new Set([taskId]),
      );
      const refused = outcome.refused.get(0);
      if (refused) throw refused;
      await sql`RELEASE SAVEPOINT schedule_run`.execute(trx);
      return true;
    } catch (error) {
      const rolledBack = await sql`ROLLBACK TO SAVEPOINT schedule_run`.execute(trx).then(() => true, () => false);
      if (!(error instanceof FogschedError) || !rolledBack) throw error;
      // A template that no longer fits (tiers changed): skip this run, keep the schedule.
      logger.error({ scheduleId: state.scheduleId, fireAt, code: error.code, err: error.message }, 'schedule run refused');
      await skip({ kind: 'refused', error: { code: error.code, message: error.message } });
      return false;
    }
  };

  /**
   * Fails the waiting tasks whose deadline passed (reason `expired`), so a task
   * no fog node picked up in time still ends; a node that gets its message later
   * refuses it too. A task still waiting for its dependencies expires the same way (its
   * dependants then see it failed). Returns how many expired.
   */
  const expireOverdue = async (): Promise<number> =>
    countedTransaction(options.db, async (trx) => {
      const rows = await trx
        .selectFrom('task_current')
        .select(['task_id', 'attempt', 'deadline'])
        .where('deadline', '<=', sql<Date>`now()`)
        .where('state', 'in', ['waiting', 'queued', 'scheduled', 'retrying'])
        .orderBy('deadline')
        .limit(500)
        .forUpdate()
        .skipLocked()
        .execute();
      if (rows.length === 0) return 0;
      const now = new Date().toISOString();
      const outcome = await executeTaskCommands(
        trx,
        rows.map((r) => ({
          taskId: r.task_id,
          command: {
            type: 'FailTask',
            data: {
              attempt: r.attempt,
              nodeId: null,
              error: { message: `deadline ${r.deadline?.toISOString()} passed before the task started`, code: 'expired', retryable: false },
              startedAt: null,
              backoff: { baseMs: 0, factor: 1, maxMs: 0 },
              random: 0,
              now,
            },
          } satisfies TaskCommand,
          metadata: { actor: 'scheduler' },
        })),
        options.names,
      );
      return outcome.eventCount > 0 ? rows.length : 0;
    });

  /** Fires every due schedule once; returns the number of tasks created. */
  const tick = async (): Promise<number> =>
    countedTransaction(options.db, async (trx) => {
      const rows = await trx
        .selectFrom('schedules')
        .selectAll()
        .where('state', '=', 'active')
        .where('next_fire_at', '<=', sql<Date>`now()`)
        .orderBy('next_fire_at')
        .limit(100)
        .forUpdate()
        .skipLocked()
        .execute();
      let fired = 0;
      const now = new Date();
      for (const row of rows) {
        if (await fire(trx, scheduleRowToState(row), now)) fired++;
      }
      return fired;
    });

  const leaseSweep = {
    db: options.db,
    names: options.names,
    lease: options.lease,
    backoff: options.backoff,
    logger,
  };
  const expireLeases = () => expireRunningLeases(leaseSweep);

  let progress: LoopProgress = UNTRACKED;
  const run = async () => {
    const retry = createBackoff({ baseMs: 400, maxMs: 10_000 });
    while (!abort.signal.aborted) {
      let wait = options.pollIntervalMs;
      try {
        await tick();
        await expireOverdue();
        await expireLeases();
        retry.reset();
        const next = await sql<{ ms: number | null }>`
          SELECT (extract(epoch FROM least(
            (SELECT min(next_fire_at) FROM schedules WHERE state = 'active'),
            (SELECT min(deadline) FROM task_current WHERE deadline IS NOT NULL AND state IN ('waiting', 'queued', 'scheduled', 'retrying'))
          ) - now()) * 1000)::float8 AS ms`.execute(options.db);
        const leaseMs = await nextLeaseExpiryMs(options.db, options.lease);
        for (const ms of [next.rows[0]?.ms, leaseMs]) {
          if (ms !== null && ms !== undefined) wait = Math.max(5, Math.min(wait, Math.ceil(ms)));
        }
      } catch (error) {
        wait = retry.next();
        logger.warn({ err: (error as Error).message, retryInMs: wait }, 'scheduler tick failed');
      }
      progress.beat(wait);
      await sleep(wait, abort.signal);
    }
  };

  const prune = () => pruneRetention(options.db, options.retention, abort.signal);

  /** Retention in a loop of its own: a long backlog to delete never holds back a schedule run. */
  const retain = async () => {
    while (!abort.signal.aborted) {
      try {
        const pruned = await prune();
        if (pruned.outbox + pruned.inbox + pruned.idempotencyKeys + pruned.taskWaits > 0) logger.info(pruned, 'retention pruned rows');
      } catch (error) {
        logger.warn({ err: (error as Error).message }, 'retention failed; will retry');
      }
      await sleep(options.retentionIntervalMs ?? 60_000, abort.signal);
    }
  };

  return {
    name: 'scheduler',
    tick,
    expireOverdue,
    expireLeases,
    pruneRetention: prune,
    async start() {
      // /healthz: each scheduler tick beats (retention, in its own loop, may run long and is not tracked).
      progress = processHealth.loop('scheduler', { intervalMs: options.pollIntervalMs });
      loop = Promise.all([run(), retain()]).then(() => undefined);
    },
    stop() {
      return (stopped ??= (async () => {
        abort.abort();
        await loop;
        progress.dispose();
      })());
    },
  };
}

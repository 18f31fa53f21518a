import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { Logger } from '../infra/logger.js';

/**
 * Relay leadership as a lease in PostgreSQL (table `relay_lease`, migration 1700000000007).
 *
 * - **Acquire**: one upsert that takes the row when its lease expired (or was ours) and bumps
 *   `epoch`, the fencing token of that leadership term. Expiry is judged on the database's clock.
 * - **Renew**: every third of the lease, `expires_at = now() + lease` while the epoch is still ours.
 *   The leader's own deadline is `(monotonic time just before the renew was sent) + lease`: never
 *   later than the database's expiry, so a leader that has not renewed stops publishing before a
 *   standby can take over (a process frozen by SIGSTOP finds its deadline passed when it wakes).
 * - **Fence**: every write of a leader (marking rows published, backoffs) names its epoch and
 *   share-locks the lease row in the same statement. A takeover (an UPDATE of that row) therefore
 *   waits for a write in progress, and a write that comes after it finds another epoch and
 *   changes nothing: no write of an old term commits after a newer term began.
 */

export const DEFAULT_RELAY_LEASE_NAME = 'outbox';

export interface LeaseSpec {
  /** Row of `relay_lease`: replicas sharing a name share one leader. */
  readonly name: string;
  /** This replica, unique per process (`host-pid-random`). */
  readonly holder: string;
  readonly leaseMs: number;
}

/** The lease was taken over or ran out: the writes of this term are refused from now on. */
export class LeaseLostError extends Error {
  constructor(readonly reason: LeaseEndReason) {
    super(`relay lease lost (${reason})`);
    this.name = 'LeaseLostError';
  }
}

/**
 * `expired`: no renewal before the local deadline; `taken`: a renewal or a fenced write found
 * another epoch; `ended`: this replica ended the term itself (stop, a failed round).
 */
export type LeaseEndReason = 'expired' | 'taken' | 'ended';

/** Takes the lease when it is free, expired or already ours; the new epoch, or undefined when another replica holds it. */
export async function tryAcquireLease(db: pg.Client, spec: LeaseSpec): Promise<number | undefined> {
  const r = await db.query<{ epoch: number }>(
    `INSERT INTO relay_lease AS l (name, holder, epoch, expires_at, acquired_at)
     VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond', now())
     ON CONFLICT (name) DO UPDATE
        SET holder = excluded.holder, epoch = l.epoch + 1, expires_at = excluded.expires_at, acquired_at = excluded.acquired_at
      WHERE l.expires_at < now() OR l.holder = excluded.holder
     RETURNING epoch`,
    [spec.name, spec.holder, spec.leaseMs],
  );
  return r.rows[0]?.epoch;
}

/** Extends the lease of `epoch`; false when another replica has taken it. */
export async function renewLease(db: pg.Client, spec: LeaseSpec, epoch: number): Promise<boolean> {
  const r = await db.query(
    `UPDATE relay_lease SET expires_at = now() + $4 * interval '1 millisecond' WHERE name = $1 AND holder = $2 AND epoch = $3`,
    [spec.name, spec.holder, epoch, spec.leaseMs],
  );
  return r.rowCount === 1;
}

/** Gives the lease up at once (a clean stop), so a standby need not wait for it to expire. */
export async function releaseLease(db: pg.Client, spec: LeaseSpec, epoch: number): Promise<void> {
  await db.query(`UPDATE relay_lease SET expires_at = '-infinity' WHERE name = $1 AND holder = $2 AND epoch = $3`, [spec.name, spec.holder, epoch]);
}

export interface FencedResult {
  /** The lease was still this epoch's when the write ran. */
  readonly held: boolean;
  /** Rows changed. */
  readonly rows: number;
}

/**
 * Wraps one `UPDATE ... WHERE <cond> AND EXISTS (SELECT 1 FROM lease) RETURNING 1` so it runs
 * only while the lease is `epoch`'s. The lease row is share-locked (FOR SHARE): a takeover, an
 * UPDATE of that row, waits for this statement, and this statement, when it comes second,
 * re-reads the row, sees the new epoch and changes nothing. Parameters $1..$3 are the lease's.
 */
function fenced(update: string): string {
  return `WITH lease AS (SELECT 1 FROM relay_lease WHERE name = $1 AND holder = $2 AND epoch = $3 FOR SHARE),
       changed AS (${update})
  SELECT EXISTS (SELECT 1 FROM lease) AS held, (SELECT count(*) FROM changed)::int AS rows`;
}

const MARK_PUBLISHED = fenced(
  `UPDATE outbox SET published_at = now(), published_epoch = $3
    WHERE id = ANY($4::bigint[]) AND published_at IS NULL AND EXISTS (SELECT 1 FROM lease) RETURNING 1`,
);

// unnest: one statement sets a different error and backoff per row.
const BACK_OFF = fenced(
  `UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error,
          available_at = CASE WHEN f.backoff IS NULL THEN o.available_at ELSE now() + f.backoff * interval '1 millisecond' END
     FROM unnest($4::bigint[], $5::text[], $6::int[]) AS f(id, error, backoff)
    WHERE o.id = f.id AND o.published_at IS NULL AND EXISTS (SELECT 1 FROM lease) RETURNING 1`,
);

/** Marks confirmed rows published by `epoch` (kept in `published_epoch`), only while that epoch holds the lease. */
export async function markPublishedFenced(db: pg.Client, spec: LeaseSpec, epoch: number, ids: readonly number[]): Promise<FencedResult> {
  const r = await db.query<FencedResult>(MARK_PUBLISHED, [spec.name, spec.holder, epoch, ids]);
  return r.rows[0] ?? { held: false, rows: 0 };
}

/**
 * Records refused rows' error, and sets them back by their backoff (null: the row keeps its place
 * and only counts the refusal), only while `epoch` holds the lease.
 */
export async function backOffFenced(
  db: pg.Client,
  spec: LeaseSpec,
  epoch: number,
  rows: readonly { id: number; error: string; backoffMs: number | null }[],
): Promise<FencedResult> {
  const r = await db.query<FencedResult>(BACK_OFF, [spec.name, spec.holder, epoch, rows.map((f) => f.id), rows.map((f) => f.error), rows.map((f) => f.backoffMs)]);
  return r.rows[0] ?? { held: false, rows: 0 };
}

/** One leadership term: renews the lease in the background and says whether this replica may still publish. */
export interface LeaseTerm {
  readonly epoch: number;
  /** Aborted when the term ends (its reason is a LeaseEndReason). */
  readonly signal: AbortSignal;
  /** The term has not ended and its local deadline has not passed: publishing is allowed. */
  holds(): boolean;
  /** Why the term ended, once it has. */
  reason(): LeaseEndReason | undefined;
  /** Ends the term (idempotent): renewals stop, holds() is false from now on. */
  end(reason: LeaseEndReason): void;
  /**
   * Waits (at most `ms`) until no renewal is in flight, so the lease connection may take another
   * query (pg.Client runs one at a time). False when one is still out: that connection may be dead.
   */
  quiet(ms: number): Promise<boolean>;
}

export interface KeepLeaseOptions {
  /** The connection renewals run on (not the one of the outbox work, so they never queue behind it). */
  readonly db: pg.Client;
  readonly spec: LeaseSpec;
  readonly epoch: number;
  /** Monotonic time (performance.now()) taken just before the acquiring query was sent. */
  readonly sentAt: number;
  readonly logger: Logger;
  /** Called once when the term ends, whatever the reason. */
  readonly onEnd?: (reason: LeaseEndReason) => void;
}

/**
 * Starts renewing a lease just acquired. The term ends by itself when a renewal finds another
 * epoch (`taken`) or when the local deadline passes without a renewal (`expired`): a renewal
 * that fails or hangs does not extend it.
 */
export function keepLease(options: KeepLeaseOptions): LeaseTerm {
  const { db, spec, epoch, logger } = options;
  const ended = new AbortController();
  const now = () => performance.now();
  let deadline = options.sentAt + spec.leaseMs;
  let endReason: LeaseEndReason | undefined;
  let renewing: Promise<unknown> | undefined;
  let renewTimer: NodeJS.Timeout | undefined;
  let deadlineTimer: NodeJS.Timeout | undefined;

  const end = (reason: LeaseEndReason) => {
    if (endReason !== undefined) return;
    endReason = reason;
    clearTimeout(renewTimer);
    clearTimeout(deadlineTimer);
    ended.abort(reason);
    options.onEnd?.(reason);
  };

  const armDeadline = () => {
    clearTimeout(deadlineTimer);
    // +1: a timer may fire a little before the monotonic clock reaches the deadline; checkDeadline re-arms then.
    deadlineTimer = setTimeout(checkDeadline, Math.max(0, deadline - now()) + 1);
  };
  const checkDeadline = () => {
    if (endReason !== undefined) return;
    if (now() >= deadline) end('expired');
    else armDeadline();
  };

  const renew = async () => {
    if (endReason !== undefined) return;
    // One renewal at a time: a hung one is not joined by more; the deadline ends the term.
    if (!renewing) {
      const sentAt = now();
      const renewal = renewLease(db, spec, epoch);
      renewing = renewal.catch(() => {});
      try {
        const ours = await renewal;
        if (!ours) end('taken');
        // A reply that comes after the deadline no longer counts: publishing has stopped already.
        else if (now() >= deadline) end('expired');
        else if (endReason === undefined) {
          deadline = Math.max(deadline, sentAt + spec.leaseMs);
          armDeadline();
        }
      } catch (error) {
        logger.warn({ err: (error as Error).message, epoch }, 'relay lease renewal failed');
      } finally {
        renewing = undefined;
      }
    }
    if (endReason === undefined) renewTimer = setTimeout(() => void renew(), renewEveryMs(spec.leaseMs));
  };

  armDeadline();
  renewTimer = setTimeout(() => void renew(), renewEveryMs(spec.leaseMs));
  return {
    epoch,
    signal: ended.signal,
    holds: () => {
      // Whoever looks first after the deadline ends the term (the timer may not have fired yet).
      if (endReason === undefined && now() >= deadline) end('expired');
      return endReason === undefined;
    },
    reason: () => endReason,
    end,
    async quiet(ms) {
      const pending = renewing;
      if (!pending) return true;
      let timer: NodeJS.Timeout | undefined;
      const done = await Promise.race([pending.then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)))]);
      clearTimeout(timer);
      return done;
    },
  };
}

/** A third of the lease: two renewals may fail before the deadline. */
export function renewEveryMs(leaseMs: number): number {
  return Math.max(1, Math.floor(leaseMs / 3));
}

/**
 * Settings of every relay session: a statement or an open transaction that outlives a lease is
 * cut by the server (its term would be over anyway, and the server frees its locks), and the
 * server probes an idle connection so a client gone from the network is noticed in seconds
 * rather than after the kernel's two hours. Sent as one SET batch after connecting (startup
 * `options` are refused by some poolers).
 */
export function sessionSettings(leaseMs: number): string {
  const idleS = Math.max(1, Math.ceil(leaseMs / 1000));
  return [
    `SET statement_timeout = ${leaseMs}`,
    `SET idle_in_transaction_session_timeout = ${leaseMs}`,
    `SET tcp_keepalives_idle = ${idleS}`,
    'SET tcp_keepalives_interval = 1',
    'SET tcp_keepalives_count = 3',
    `SET tcp_user_timeout = ${leaseMs}`,
  ].join('; ');
}

/**
 * Liveness by progress: each role's loop beats when it completes a turn (a relay round, an
 * ingest consume batch or idle wait, a fog node heartbeat, a scheduler or coordinator tick), and
 * `/healthz` fails once a loop has not beaten within its interval plus a grace. A turn that ends
 * in an error (PostgreSQL down, the broker gone) is still a turn: dependencies are `/readyz`'s
 * business, so a database outage never makes Swarm restart every role.
 *
 * Pure: the clock comes in (`now`), so the rules are unit-tested without waiting.
 */

/** A loop's handle: `beat()` after each turn, `dispose()` when the loop ends (a stopped role is not stalled). */
export interface LoopProgress {
  /**
   * Records progress. `nextWithinMs`: the loop is about to wait this long on purpose (a backoff, an
   * idle poll) before its next turn, so the deadline moves out by that much.
   */
  beat(nextWithinMs?: number): void;
  dispose(): void;
}

/** A handle that tracks nothing: a loop's placeholder until its role starts. */
export const UNTRACKED: LoopProgress = Object.freeze({ beat() {}, dispose() {} });

export interface LoopOptions {
  /** The loop's normal period: a turn is expected at least this often. */
  readonly intervalMs: number;
  /** Slack past the interval before the loop counts as stalled; default max(2 × interval, DEFAULT_GRACE_MS). */
  readonly graceMs?: number;
}

export interface LoopStatus {
  readonly ok: boolean;
  /** Milliseconds since the last beat (or since registration). */
  readonly sinceProgressMs: number;
  /** Milliseconds the loop may go without a beat from its last one. */
  readonly allowedMs: number;
}

export interface HealthStatus {
  /** No loop stalled (also true while no loop is registered). */
  readonly healthy: boolean;
  readonly loops: Readonly<Record<string, LoopStatus>>;
}

export interface HealthTracker {
  /** Registers a loop; a second loop of the same name gets `name#2`, and so on. */
  loop(name: string, options: LoopOptions): LoopProgress;
  status(): HealthStatus;
}

/** Grace no loop goes below: a statement, connect or confirm may take seconds under load. */
export const DEFAULT_GRACE_MS = 30_000;

interface Entry {
  readonly name: string;
  readonly intervalMs: number;
  readonly graceMs: number;
  last: number;
  waitMs: number;
}

export function createHealthTracker(now: () => number = () => performance.now()): HealthTracker {
  const entries = new Map<string, Entry>();
  return {
    loop(name, options) {
      let key = name;
      for (let i = 2; entries.has(key); i++) key = `${name}#${i}`;
      const entry: Entry = {
        name: key,
        intervalMs: options.intervalMs,
        graceMs: options.graceMs ?? Math.max(2 * options.intervalMs, DEFAULT_GRACE_MS),
        last: now(),
        waitMs: 0,
      };
      entries.set(key, entry);
      return {
        beat(nextWithinMs = 0) {
          entry.last = now();
          entry.waitMs = Math.max(0, nextWithinMs);
        },
        dispose() {
          if (entries.get(key) === entry) entries.delete(key);
        },
      };
    },
    status() {
      const t = now();
      const loops: Record<string, LoopStatus> = {};
      let healthy = true;
      for (const e of entries.values()) {
        const allowedMs = Math.max(e.intervalMs, e.waitMs) + e.graceMs;
        const sinceProgressMs = Math.max(0, t - e.last);
        const ok = sinceProgressMs <= allowedMs;
        healthy &&= ok;
        loops[e.name] = { ok, sinceProgressMs: Math.round(sinceProgressMs), allowedMs };
      }
      return { healthy, loops };
    },
  };
}

/** The process's tracker: every role of the process reports here, and the one ops server reads it. */
export const processHealth: HealthTracker = createHealthTracker();

/**
 * The autoscaler's decision, pure: what it measured of one tier, when it last scaled it, and
 * the policy in; the replica count to set (and why) or `null` (hold) out.
 *
 * - **Clamps** first, without cooldown: below `min` → `min`, above `max` → `max`.
 * - **Up** when the ready backlog exceeds `upDepth` per replica, or the oldest queued task has
 *   waited longer than `upWaitMs` (with 0 replicas: any work at all). The step is as many
 *   replicas as the backlog needs at `upDepth` each, at least one, at most `max`. Not within
 *   `upCooldownMs` of the last scale-up.
 * - **Down**, one replica at a time, only when all of: with one replica fewer the backlog per
 *   replica would still be at most `downDepth`, the oldest wait is at most `downWaitMs`, the
 *   tasks queued and running would fit in the remaining replicas' slots; and not within
 *   `downCooldownMs` of the last scaling either way. `downDepth < upDepth` and
 *   `downWaitMs < upWaitMs` make the band between them a hold: no flapping at one threshold.
 */

/** What the autoscaler saw of one tier in one round. */
export interface TierMeasurement {
  /** Ready messages in the tier's task queues (every priority), from the broker. */
  readonly depth: number;
  /** Due tasks of the tier not started yet (task_current: `queued`, and `scheduled`/`retrying` past their time; delivered-but-not-started ones included); null when unknown. */
  readonly queued: number | null;
  /** task_current rows of the tier in state `running`; null when unknown. */
  readonly running: number | null;
  /** How long the oldest queued task of the tier has waited since it became due (ms); null when none or unknown. */
  readonly oldestWaitMs: number | null;
  /** Mean wait of the tier's queued tasks (ms); null when none or unknown. */
  readonly avgWaitMs: number | null;
}

export interface ScalePolicy {
  readonly min: number;
  readonly max: number;
  /** Tasks one replica runs at once (FOG_NODE_SLOTS). */
  readonly slotsPerReplica: number;
  readonly upDepth: number;
  readonly downDepth: number;
  readonly upWaitMs: number;
  readonly downWaitMs: number;
  readonly upCooldownMs: number;
  readonly downCooldownMs: number;
}

/** When the tier was last scaled (ms since the epoch), from the log; null for never. */
export interface ScaleHistory {
  readonly lastUpAt: number | null;
  readonly lastDownAt: number | null;
}

/** Why replicas changed: the clamps, a backlog, a long wait, or idle capacity. */
export type ScaleTrigger = 'below-min' | 'above-max' | 'backlog' | 'wait' | 'idle';

export interface ScaleDecision {
  readonly from: number;
  readonly to: number;
  readonly trigger: ScaleTrigger;
  /** One line for people: the trigger with the measured figures behind it. */
  readonly reason: string;
}

const seconds = (ms: number | null) => (ms === null ? 'none' : `${(ms / 1000).toFixed(1)} s`);

function describe(m: TierMeasurement): string {
  return `depth ${m.depth}, queued ${m.queued ?? '?'}, running ${m.running ?? '?'}, oldest wait ${seconds(m.oldestWaitMs)}, average wait ${seconds(m.avgWaitMs)}`;
}

/** The replicas one tier should have now, or null to keep what it has. */
export function decideScale(replicas: number, m: TierMeasurement, history: ScaleHistory, policy: ScalePolicy, now: number): ScaleDecision | null {
  const make = (to: number, trigger: ScaleTrigger, why: string): ScaleDecision => ({ from: replicas, to, trigger, reason: `${trigger}: ${why} (${describe(m)})` });
  if (replicas < policy.min) return make(policy.min, 'below-min', `${replicas} replicas, minimum ${policy.min}`);
  if (replicas > policy.max) return make(policy.max, 'above-max', `${replicas} replicas, maximum ${policy.max}`);

  const wait = m.oldestWaitMs ?? 0;
  const lastChange = Math.max(history.lastUpAt ?? -Infinity, history.lastDownAt ?? -Infinity);
  if (replicas < policy.max && now - (history.lastUpAt ?? -Infinity) >= policy.upCooldownMs) {
    const work = m.depth > 0 || (m.queued ?? 0) > 0;
    const backlog = replicas === 0 ? work : m.depth > policy.upDepth * replicas;
    const waited = replicas > 0 && wait > policy.upWaitMs;
    if (backlog || waited) {
      const needed = Math.ceil(m.depth / policy.upDepth);
      const to = Math.min(policy.max, Math.max(replicas + 1, needed));
      return backlog
        ? make(to, 'backlog', replicas === 0 ? 'work queued and no replica' : `more than ${policy.upDepth} ready per replica on ${replicas}`)
        : make(to, 'wait', `oldest wait above ${seconds(policy.upWaitMs)}`);
    }
  }
  if (replicas > policy.min && now - lastChange >= policy.downCooldownMs) {
    const fewer = replicas - 1;
    const shallow = fewer === 0 ? m.depth === 0 : m.depth <= policy.downDepth * fewer;
    const short = wait <= policy.downWaitMs;
    const fits = (m.queued ?? 0) + (m.running ?? 0) <= policy.slotsPerReplica * fewer;
    // Unknown task_current figures (PostgreSQL away): never scale down blind.
    if (shallow && short && fits && m.queued !== null && m.running !== null) {
      return make(fewer, 'idle', `the work fits in ${fewer} replica${fewer === 1 ? '' : 's'}`);
    }
  }
  return null;
}

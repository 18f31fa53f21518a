import { randomUUID } from 'node:crypto';
import { ConcurrencyError } from '../domain/errors.js';
import { appendToStream, type Executor } from '../store/index.js';
import type { ScaleTrigger } from './decide.js';

/** Stream of one tier's capacity decisions: `autoscale:<tier>`, stream type `autoscale`. */
export const tierStreamId = (tier: string) => `autoscale:${tier}`;

/** The autoscaler set a tier's fog-node replicas from `from` to `to`, and why. */
export interface FogTierScaled {
  readonly type: 'FogTierScaled';
  readonly data: {
    tier: string;
    from: number;
    to: number;
    trigger: ScaleTrigger;
    /** One line: the trigger with the figures measured (depth, queued, running, oldest and average wait). */
    reason: string;
    depth: number;
    queued: number | null;
    running: number | null;
    oldestWaitMs: number | null;
    avgWaitMs: number | null;
    min: number;
    max: number;
    /** `swarm` or `local`. */
    backend: string;
    at: string;
  };
}

export interface TierStreamState {
  readonly version: number;
  /** When the last scale-up / scale-down of the tier was decided (ms since the epoch), from the log. */
  readonly lastUpAt: number | null;
  readonly lastDownAt: number | null;
}

/** The stream's length and the times of its last scale-up and scale-down (a new leader's cooldowns come from here). */
export async function readTierStreamState(db: Executor, tier: string): Promise<TierStreamState> {
  const rows = await db
    .selectFrom('events')
    .select(['stream_version', 'data'])
    .where('stream_id', '=', tierStreamId(tier))
    .orderBy('stream_version', 'desc')
    .limit(50)
    .execute();
  let lastUpAt: number | null = null;
  let lastDownAt: number | null = null;
  for (const row of rows) {
    const d = row.data as Partial<FogTierScaled['data']>;
    const at = d.at ? Date.parse(d.at) : NaN;
    if (Number.isNaN(at) || d.from === undefined || d.to === undefined) continue;
    if (d.to > d.from) lastUpAt ??= at;
    else if (d.to < d.from) lastDownAt ??= at;
    if (lastUpAt !== null && lastDownAt !== null) break;
  }
  return { version: rows[0]?.stream_version ?? 0, lastUpAt, lastDownAt };
}

/**
 * Appends one decision at `expected.version`. Null when another writer got there first (a
 * replaced leader that woke up): the caller re-reads and decides again, so a stale leader
 * neither records nor carries out a decision.
 */
export async function appendTierScaled(db: Executor, expected: TierStreamState, event: FogTierScaled, actor: string): Promise<TierStreamState | null> {
  try {
    await appendToStream(db, { id: tierStreamId(event.data.tier), type: 'autoscale', expectedVersion: expected.version }, [
      { eventId: randomUUID(), type: event.type, data: event.data, metadata: { tenant: 'system', actor } },
    ]);
    const at = Date.parse(event.data.at);
    return {
      version: expected.version + 1,
      lastUpAt: event.data.to > event.data.from ? at : expected.lastUpAt,
      lastDownAt: event.data.to < event.data.from ? at : expected.lastDownAt,
    };
  } catch (error) {
    if (error instanceof ConcurrencyError) return null;
    throw error;
  }
}

import { NoTierFitsError } from './errors.js';
import type { Priority, Resources } from './task.js';

export interface Tier {
  readonly name: string;
  readonly maxCpu: number;
  readonly maxMemoryMb: number;
}

/** Defaults of the tiers; `TIERS` in the config overrides them. */
export const DEFAULT_TIERS: readonly Tier[] = [
  { name: 'light', maxCpu: 0.5, maxMemoryMb: 512 },
  { name: 'medium', maxCpu: 0.75, maxMemoryMb: 768 },
  { name: 'heavy', maxCpu: 1, maxMemoryMb: 1024 },
];

export const DEFAULT_RESOURCES: Resources = { cpu: 0.1, memoryMb: 64 };

/** The lightest tier that fits the resources; throws NoTierFitsError when none does. */
export function tierFor(resources: Resources, tiers: readonly Tier[] = DEFAULT_TIERS): string {
  const fit = tiers.find((t) => resources.cpu <= t.maxCpu && resources.memoryMb <= t.maxMemoryMb);
  if (fit) return fit.name;
  const largest = tiers[tiers.length - 1] ?? { name: 'none', maxCpu: 0, maxMemoryMb: 0 };
  throw new NoTierFitsError(resources, largest);
}

/**
 * Slots of a fog node of `tier` when FOG_NODE_SLOTS does not say: as many default-sized tasks
 * (DEFAULT_RESOURCES.memoryMb) as the tier's memory holds. Larger tasks take more of it: the node
 * also keeps the heaps of its running thread tasks within maxMemoryMb.
 */
export function slotsFor(tier: Tier): number {
  return Math.max(1, Math.floor(tier.maxMemoryMb / DEFAULT_RESOURCES.memoryMb));
}

/** Tiers a node of `tier` serves: its own first, then the lighter ones. */
export function servedTiers(tier: string, tiers: readonly Tier[] = DEFAULT_TIERS): string[] {
  const index = tiers.findIndex((t) => t.name === tier);
  if (index < 0) return [tier];
  return tiers.slice(0, index + 1).map((t) => t.name).reverse();
}

export interface BackoffOptions {
  readonly baseMs: number;
  readonly factor: number;
  readonly maxMs: number;
}

/**
 * Delay before attempt `failedAttempt + 1`: exponential, capped, with "equal jitter"
 * (half fixed, half random) so retries of a burst spread out but never come early.
 * `random` is in [0, 1) and comes from the caller, keeping this pure.
 */
export function retryDelayMs(failedAttempt: number, options: BackoffOptions, random: number): number {
  const exp = Math.min(options.maxMs, options.baseMs * options.factor ** Math.max(0, failedAttempt - 1));
  // Rounded up, so never earlier than exp/2; capped at exp (rounded up) for random = 1.
  return Math.min(Math.ceil(exp), Math.ceil(exp / 2 + (exp / 2) * random));
}

/** Routing key of a task message on the `tasks` exchange. */
export function taskRoutingKey(tier: string, priority: Priority): string {
  return `${tier}.${priority}`;
}

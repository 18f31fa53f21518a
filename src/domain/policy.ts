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

/** Where a task may run: a zone, labels a node must all carry, or both (TaskSpec.placement). */
export interface Placement {
  readonly zone?: string;
  readonly labels?: Readonly<Record<string, string>>;
}

/** What a fog node advertises (FOG_NODE_ZONE, FOG_NODE_LABELS). */
export interface NodePlacement {
  readonly zone: string | null;
  readonly labels: Readonly<Record<string, string>>;
}

/** Prefix of a label class without a zone: no zone starts with `_`, so it never collides with one. */
const ANY_ZONE = '_any';

/**
 * The placement class of a task: the part of its queue name (`<prefix>tasks.<class>.<tier>.<priority>`)
 * and routing key (`<class>.<tier>.<priority>`) that says where it may run; null for no placement.
 * - zone only: the zone itself (`site-a`), so a zone's queues read `tasks.site-a.light.normal`;
 * - labels (with or without a zone): `<zone or _any>~<16 hex digits>`, a 64-bit FNV-1a hash of the
 *   labels as sorted `k=v` joined by `,` (`site-a~3f09c1d2a4b5e6f7`, `_any~...`);
 * - with a fallback delay, `~fb<ms>` after either (`site-a~fb1500`): each delay has queues of its
 *   own whose queue-wide TTL is that delay (see fallbackOfClass). A quorum queue expires messages
 *   only at its head; with one TTL per queue the head is always the first due, so no message
 *   waits behind one that falls back later (or never).
 * Stable across processes and versions (it names durable queues); only `[a-z0-9_~-]`, so queue-name-safe.
 */
export function placementClass(placement: Placement | null | undefined, fallbackAfterMs?: number | null): string | null {
  if (!placement) return null;
  const zone = placement.zone || null;
  const labels = sortedLabels(placement.labels);
  const base = labels.length === 0 ? zone : `${zone ?? ANY_ZONE}~${fnv1a64(labels.map(([k, v]) => `${k}=${v}`).join(','))}`;
  if (base === null) return null;
  return typeof fallbackAfterMs === 'number' && Number.isInteger(fallbackAfterMs) && fallbackAfterMs > 0 ? `${base}${FALLBACK_SUFFIX}${fallbackAfterMs}` : base;
}

const FALLBACK_SUFFIX = '~fb';

/** The fallback delay a placement class's queues expire their messages after (their `x-message-ttl`); null for none. */
export function fallbackOfClass(placementClass: string): number | null {
  const m = /~fb(\d+)$/.exec(placementClass);
  return m ? Number(m[1]) : null;
}

/** Does a node satisfy a placement: its zone when one is asked, and every label asked with the same value? */
export function placementMatches(placement: Placement | null | undefined, node: NodePlacement): boolean {
  if (!placement) return true;
  if (placement.zone && placement.zone !== node.zone) return false;
  return sortedLabels(placement.labels).every(([k, v]) => Object.hasOwn(node.labels, k) && node.labels[k] === v);
}

function sortedLabels(labels: Readonly<Record<string, string>> | undefined): [string, string][] {
  return Object.entries(labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** FNV-1a, 64 bits, over the UTF-16 code units (the label grammar is ASCII); 16 lowercase hex digits. */
function fnv1a64(text: string): string {
  let hash = 0xcbf29ce484222325n;
  for (let i = 0; i < text.length; i++) {
    hash ^= BigInt(text.charCodeAt(i));
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash.toString(16).padStart(16, '0');
}

/** Routing key of a placement dispatch on the `tasks` exchange. */
export function placementRoutingKey(placementClassKey: string, tier: string, priority: Priority): string {
  return `${placementClassKey}.${tier}.${priority}`;
}

/** A zone name (FOG_NODE_ZONE, placement.zone). */
export const ZONE_PATTERN = /^[a-z0-9][a-z0-9-]{0,39}$/;
/** A label key (FOG_NODE_LABELS, placement.labels). */
export const LABEL_KEY_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
/** A label value. */
export const LABEL_VALUE_PATTERN = /^[A-Za-z0-9_.-]{1,63}$/;
export const MAX_PLACEMENT_LABELS = 16;
/** Longest fallbackAfterMs: a week. */
export const MAX_FALLBACK_AFTER_MS = 604_800_000;

/**
 * The fallback delays a placement may have: a submit's fallbackAfterMs is rounded up to the next
 * (and the task shows the delay it got). Each delay of a place has queues of its own (one TTL per
 * queue, see placementClass), so a free choice would let one submitter make a queue per
 * millisecond; these bound it to 24 per place, tier and priority.
 */
export const FALLBACK_STEPS_MS: readonly number[] = [
  250, 500, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
  7_200_000, 14_400_000, 21_600_000, 43_200_000, 86_400_000, 172_800_000, MAX_FALLBACK_AFTER_MS,
];

/** fallbackAfterMs rounded up to the next of FALLBACK_STEPS_MS (a valid one, 1..MAX_FALLBACK_AFTER_MS). */
export function fallbackStep(ms: number): number {
  return FALLBACK_STEPS_MS.find((step) => step >= ms) ?? MAX_FALLBACK_AFTER_MS;
}

/**
 * What is wrong with a placement and its fallback delay, as `{ path, message }` relative to the
 * task (`placement/zone`, `placement/labels/<key>`, `fallbackAfterMs`); empty when valid.
 */
export function placementErrors(placement: unknown, fallbackAfterMs: unknown): { path: string; message: string }[] {
  const errors: { path: string; message: string }[] = [];
  const given = placement !== undefined && placement !== null;
  if (given) {
    if (typeof placement !== 'object' || Array.isArray(placement)) {
      errors.push({ path: 'placement', message: 'must be an object { zone?, labels? }' });
    } else {
      const { zone, labels, ...rest } = placement as { zone?: unknown; labels?: unknown };
      for (const key of Object.keys(rest)) errors.push({ path: `placement/${key}`, message: 'unknown field (only zone and labels)' });
      if (zone !== undefined && (typeof zone !== 'string' || !ZONE_PATTERN.test(zone))) errors.push({ path: 'placement/zone', message: `must match ${ZONE_PATTERN.source}` });
      if (labels !== undefined) {
        if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) errors.push({ path: 'placement/labels', message: 'must be an object of key: value' });
        else {
          const entries = Object.entries(labels);
          if (entries.length > MAX_PLACEMENT_LABELS) errors.push({ path: 'placement/labels', message: `at most ${MAX_PLACEMENT_LABELS} labels` });
          for (const [k, v] of entries) {
            if (!LABEL_KEY_PATTERN.test(k)) errors.push({ path: `placement/labels/${k}`, message: `key must match ${LABEL_KEY_PATTERN.source}` });
            else if (typeof v !== 'string' || !LABEL_VALUE_PATTERN.test(v)) errors.push({ path: `placement/labels/${k}`, message: `value must match ${LABEL_VALUE_PATTERN.source}` });
          }
        }
      }
    }
  }
  if (fallbackAfterMs !== undefined && fallbackAfterMs !== null) {
    if (!Number.isInteger(fallbackAfterMs) || (fallbackAfterMs as number) < 1 || (fallbackAfterMs as number) > MAX_FALLBACK_AFTER_MS) {
      errors.push({ path: 'fallbackAfterMs', message: `must be an integer 1..${MAX_FALLBACK_AFTER_MS}` });
    } else if (errors.length === 0 && normalizePlacement(given ? placement : null) === null) {
      errors.push({ path: 'fallbackAfterMs', message: 'only with a placement (zone or labels)' });
    }
  }
  return errors;
}

/** A valid placement as stored: labels with sorted keys, no empty parts; null when it names neither zone nor labels. */
export function normalizePlacement(placement: Placement | null | undefined): { zone?: string; labels?: Record<string, string> } | null {
  if (!placement) return null;
  const labels = sortedLabels(placement.labels);
  const out: { zone?: string; labels?: Record<string, string> } = {};
  if (placement.zone) out.zone = placement.zone;
  if (labels.length > 0) out.labels = Object.fromEntries(labels);
  return out.zone === undefined && out.labels === undefined ? null : out;
}

/** Header of a placement dispatch: its placement class (the relay declares the class's queue before it publishes). */
export const PLACEMENT_CLASS_HEADER = 'x-fogsched-placement-class';
/** Header of a placement dispatch: the placement as JSON, recorded in Redis for nodes whose labels match. */
export const PLACEMENT_HEADER = 'x-fogsched-placement';
/** Header of a placement dispatch with a fallback: its fallbackAfterMs, which the relay publishes as the message's `expiration`. */
export const FALLBACK_AFTER_HEADER = 'x-fogsched-fallback-after-ms';

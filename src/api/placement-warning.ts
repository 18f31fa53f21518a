import { placementMatches } from '../domain/index.js';
import type { TaskView } from './schemas.js';

/** A live fog node as a submit's warning needs it: the tiers it serves, its zone and labels. */
export interface LiveNode {
  readonly tiers: ReadonlySet<string>;
  readonly zone: string | null;
  readonly labels: Readonly<Record<string, string>>;
}

/** A node's zone and labels (FOG_NODE_ZONE, FOG_NODE_LABELS); a membership record without them has none. */
export function nodePlacement(node: object): { zone: string | null; labels: Record<string, string> } {
  const { zone, labels } = node as { zone?: unknown; labels?: unknown };
  return {
    zone: typeof zone === 'string' && zone !== '' ? zone : null,
    labels: labels && typeof labels === 'object' ? Object.fromEntries(Object.entries(labels).filter((e): e is [string, string] => typeof e[1] === 'string')) : {},
  };
}

function describePlacement(placement: NonNullable<TaskView['placement']>): string {
  const parts = [
    ...(placement.zone !== undefined ? [`zone ${placement.zone}`] : []),
    ...Object.entries(placement.labels ?? {}).map(([k, v]) => `${k}=${v}`),
  ];
  return parts.join(', ');
}

/**
 * Warnings of an accepted task that no live fog node can run yet: none serves its tier, or none of
 * its tier matches its placement. Unknown membership (Redis down): no warning. The task is
 * accepted all the same; its dispatch waits on its queue until such a node joins (or, with
 * fallbackAfterMs, until it falls back to the tier's general queue).
 */
export function liveWarnings(view: TaskView, liveTiers: ReadonlySet<string> | null | undefined, liveNodes: readonly LiveNode[] | null | undefined): string[] {
  if (liveTiers && !liveTiers.has(view.tier)) return [`no live fog node serves tier ${view.tier}; the task waits until one joins`];
  const placement = view.placement;
  if (!placement || !liveNodes) return [];
  if (liveNodes.some((n) => n.tiers.has(view.tier) && placementMatches(placement, n))) return [];
  const fallback = view.fallbackAfterMs !== undefined ? ` or, after ${view.fallbackAfterMs} ms undelivered, runs on any node of the tier` : '';
  return [`no live fog node of tier ${view.tier} matches placement ${describePlacement(placement)}; the task waits until one joins${fallback}`];
}

/** The view with its warnings, when it has any. */
export function withWarnings(view: TaskView, liveTiers: ReadonlySet<string> | null | undefined, liveNodes: readonly LiveNode[] | null | undefined): TaskView {
  const warnings = liveWarnings(view, liveTiers, liveNodes);
  return warnings.length > 0 ? { ...view, warnings } : view;
}

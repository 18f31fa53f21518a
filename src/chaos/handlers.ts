/**
 * Task handlers the chaos run adds to its fog nodes (FOG_NODE_HANDLERS points at the built
 * file). Loaded by the fog node as a user handler module, so it imports nothing.
 */

/**
 * Returns an output PostgreSQL cannot store: jsonb refuses `\u0000` in a string. A fog node
 * must not let one such result sink the other records of its result message (issue 15).
 */
export function unstorable(payload: unknown): { text: string; ref: unknown } {
  return { text: 'before\u0000after', ref: (payload as { ref?: unknown } | null)?.ref ?? null };
}

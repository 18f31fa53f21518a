/**
 * A map that forgets: at most `max` entries (the least recently set go first)
 * and none older than `ttlMs`. The fog node keeps its recently finished runs
 * in one, so a late redelivery of one of them is acked without a second run.
 *
 * ### Example
 * ```ts
 * const recent = createRecentMap<string, Run>({ max: 10_000, ttlMs: 600_000 });
 * recent.set(`${taskId}:${attempt}`, run, Date.now());
 * recent.get(`${taskId}:${attempt}`, Date.now()); // the run, for ten minutes
 * ```
 */
export interface RecentMap<K, V> {
  readonly size: number;
  get(key: K, now: number): V | undefined;
  set(key: K, value: V, now: number): void;
  delete(key: K): void;
}

export function createRecentMap<K, V>(opts: { readonly max: number; readonly ttlMs: number }): RecentMap<K, V> {
  // A Map iterates in insertion order and set() re-inserts, so the first entry is always the oldest.
  const entries = new Map<K, { value: V; at: number }>();
  const prune = (now: number) => {
    for (const [key, entry] of entries) {
      if (entries.size <= opts.max && now - entry.at < opts.ttlMs) break;
      entries.delete(key);
    }
  };
  return {
    get size() {
      return entries.size;
    },
    get(key, now) {
      const entry = entries.get(key);
      if (!entry) return undefined;
      if (now - entry.at >= opts.ttlMs) {
        entries.delete(key);
        return undefined;
      }
      return entry.value;
    },
    set(key, value, now) {
      entries.delete(key);
      entries.set(key, { value, at: now });
      prune(now);
    },
    delete(key) {
      entries.delete(key);
    },
  };
}

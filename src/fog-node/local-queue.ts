import { PRIORITIES, type Priority } from '../domain/index.js';

/** What the local queue needs to know of a waiting delivery. */
export interface Queued {
  readonly priority: Priority;
  /** 0 for the node's own tier, higher for lighter tiers it also serves. */
  readonly tierRank: number;
  /** When it arrived here (ms since the epoch). */
  readonly receivedAt: number;
}

/** The deliveries a fog node holds but has not started (prefetched beyond its free slots). */
export interface LocalQueue<T extends Queued> {
  readonly size: number;
  push(item: T): void;
  /**
   * Takes the next item to run: high before normal before low, and within a
   * priority the node's own tier before lighter ones (first come first within
   * a tier). A priority's oldest item that waited longer than `agingMs` goes
   * first, the longest-waiting of them when several did, so low never starves.
   */
  pick(now: number): T | undefined;
  /** Takes out every item `match` selects (all of them without it), in arrival order per priority. */
  remove(match?: (item: T) => boolean): T[];
}

export function createLocalQueue<T extends Queued>(agingMs: number): LocalQueue<T> {
  const lists = new Map<Priority, T[]>(PRIORITIES.map((p) => [p, []]));
  let size = 0;
  const listOf = (p: Priority) => lists.get(p) as T[];

  const take = (list: T[], index: number): T => {
    size--;
    return list.splice(index, 1)[0] as T;
  };

  return {
    get size() {
      return size;
    },
    push(item) {
      listOf(item.priority).push(item);
      size++;
    },
    pick(now) {
      let aged: { list: T[]; waited: number } | undefined;
      for (const p of PRIORITIES) {
        const list = listOf(p);
        const head = list[0];
        if (head && now - head.receivedAt > agingMs && (!aged || now - head.receivedAt > aged.waited)) aged = { list, waited: now - head.receivedAt };
      }
      if (aged) return take(aged.list, 0);
      for (const p of PRIORITIES) {
        const list = listOf(p);
        if (list.length === 0) continue;
        let best = 0;
        for (let i = 1; i < list.length && (list[best] as T).tierRank > 0; i++) {
          if ((list[i] as T).tierRank < (list[best] as T).tierRank) best = i;
        }
        return take(list, best);
      }
      return undefined;
    },
    remove(match) {
      const out: T[] = [];
      for (const list of lists.values()) {
        for (let i = 0; i < list.length; ) {
          if (!match || match(list[i] as T)) out.push(take(list, i));
          else i++;
        }
      }
      return out;
    },
  };
}

import type { Redis } from 'ioredis';
import type { BrokerSpec } from './config.js';
import type { RedisKeys } from './redis.js';

export interface BrokerView {
  readonly name: string;
  /** In `rabbitmq:cluster:members`. */
  readonly member: boolean;
  readonly master: boolean;
  /** Time of the last successful probe (ISO), null when the heartbeat key is gone. */
  readonly lastHeartbeat: string | null;
  /** The last probe is at most `staleAfterMs` old. */
  readonly healthy: boolean;
}

export interface FogNodeView {
  readonly id: string;
  readonly tier: string | null;
  /** FOG_NODE_ZONE; null when the node has none (or its hash expired). */
  readonly zone: string | null;
  /** FOG_NODE_LABELS; {} when none. */
  readonly labels: Record<string, string>;
  readonly slots: number | null;
  readonly inFlight: number | null;
  readonly cpu: number | null;
  readonly memMb: number | null;
  readonly version: string | null;
  /** null when the hash has expired (the coordinator reaps it at its next round). */
  readonly lastSeen: string | null;
  readonly state: 'up' | 'stopped' | 'expired';
}

export type ClusterView =
  | { readonly redis: 'ok'; readonly leader: string | null; readonly brokers: BrokerView[]; readonly fogNodes: FogNodeView[] }
  | { readonly redis: 'unavailable'; readonly error: string; readonly leader: null; readonly brokers: BrokerView[]; readonly fogNodes: FogNodeView[] };

/** Heartbeat values are epoch milliseconds; the seed wrote epoch seconds, so small values are read as seconds. */
function parseTimestamp(value: string | null | undefined): number | null {
  const n = Number(value);
  if (!value || !Number.isFinite(n) || n <= 0) return null;
  return n < 1e11 ? n * 1000 : n;
}

/** The `labels` field of a fog node's hash (JSON written by its heartbeat); {} when absent or unreadable. */
function parseLabelsField(value: string | undefined): Record<string, string> {
  if (!value) return {};
  try {
    const parsed = JSON.parse(value) as unknown;
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return {};
    return Object.fromEntries(Object.entries(parsed).filter((e): e is [string, string] => typeof e[1] === 'string'));
  } catch {
    return {};
  }
}

const num = (v: string | undefined) => (v === undefined || v === '' || !Number.isFinite(Number(v)) ? null : Number(v));

/**
 * Reads the membership picture the coordinator keeps in Redis. Never throws:
 * a down Redis gives `redis: 'unavailable'` and the configured brokers with
 * nothing known about them.
 */
export async function readClusterView(redis: Redis, keys: RedisKeys, opts: { brokers: readonly BrokerSpec[]; staleAfterMs: number; now?: number }): Promise<ClusterView> {
  const now = opts.now ?? Date.now();
  try {
    if (redis.status !== 'ready') throw new Error(`not connected to Redis (${redis.status})`);
    const [members, master, lease, fogIds] = await Promise.all([
      redis.smembers(keys.brokerMembers),
      redis.get(keys.brokerMaster),
      redis.get(keys.coordinatorLease),
      redis.smembers(keys.fogNodes),
    ]);
    const names = [...new Set([...opts.brokers.map((b) => b.node), ...[...members].sort()])];
    const beats = names.length > 0 ? await redis.mget(names.map((n) => keys.brokerHeartbeat(n))) : [];
    const brokers = names.map((name, i): BrokerView => {
      const at = parseTimestamp(beats[i]);
      return { name, member: members.includes(name), master: master === name, lastHeartbeat: at ? new Date(at).toISOString() : null, healthy: at !== null && now - at <= opts.staleAfterMs };
    });
    const pipeline = redis.pipeline();
    for (const id of fogIds) pipeline.hgetall(keys.fogNode(id));
    const hashes = fogIds.length > 0 ? ((await pipeline.exec()) ?? []) : [];
    const fogNodes = fogIds
      .map((id, i): FogNodeView => {
        const h = (hashes[i]?.[1] ?? {}) as Record<string, string>;
        const seen = parseTimestamp(h.lastSeen);
        const expired = Object.keys(h).length === 0;
        return {
          id,
          tier: h.tier ?? null,
          zone: h.zone || null,
          labels: parseLabelsField(h.labels),
          slots: num(h.slots),
          inFlight: num(h.inFlight),
          cpu: num(h.cpu),
          memMb: num(h.mem),
          version: h.version ?? null,
          lastSeen: seen ? new Date(seen).toISOString() : null,
          state: expired ? 'expired' : h.state === 'stopped' ? 'stopped' : 'up',
        };
      })
      .sort((a, b) => a.id.localeCompare(b.id));
    return { redis: 'ok', leader: lease ? (lease.split('/')[0] ?? lease) : null, brokers, fogNodes };
  } catch (error) {
    return {
      redis: 'unavailable',
      error: error instanceof Error ? error.message : String(error),
      leader: null,
      brokers: opts.brokers.map((b) => ({ name: b.node, member: false, master: false, lastHeartbeat: null, healthy: false })),
      fogNodes: [],
    };
  }
}

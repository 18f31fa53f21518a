import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Kysely } from 'kysely';
import { probeBroker } from '../broker/index.js';
import type { BrokerSpec } from '../infra/config.js';
import type { Logger } from '../infra/logger.js';
import { createRedis, redisKeys, type RedisKeys } from '../infra/redis.js';
import { sleep, type Role } from '../infra/role.js';
import { processHealth, UNTRACKED, type LoopProgress } from '../infra/health.js';
import { cachedSource, registerScrapeGaugeVec } from '../infra/metrics.js';
import { readClusterView } from '../infra/cluster-view.js';
import { servedTiers, type Tier } from '../domain/index.js';
import type { Database } from '../store/index.js';
import { fenced, type Fenced } from './fenced.js';
import { appendNodeEvent, readNodeStreamState, type NodeStreamState } from './node-events.js';

export interface CoordinatorDeps {
  readonly redisUrl: string;
  /** REDIS_PREFIX. */
  readonly prefix: string;
  readonly db: Kysely<Database>;
  /** Broker nodes to probe, in master-preference order (COORDINATOR_BROKERS). */
  readonly brokers: readonly BrokerSpec[];
  /** COORDINATOR_INTERVAL_MS (default 30000): probe and reap period. */
  readonly intervalMs: number;
  /** BROKER_HEARTBEAT_TTL_MS (default 90000). */
  readonly brokerHeartbeatTtlMs: number;
  /** COORDINATOR_LEASE_MS (default 15000); renewed every third of it. */
  readonly leaseMs: number;
  /** Names this replica in the lease value and in event metadata (default: a random id). */
  readonly coordinatorId?: string;
  /** An AMQP probe that has not answered within this is a failure (default min(intervalMs, 5000)). */
  readonly probeTimeoutMs?: number;
  /** TIERS, lightest first: `fogsched_fog_nodes_live` shows each, 0 when no live node serves it (default: the tiers live nodes report). */
  readonly tiers?: readonly Tier[];
  /** Release the lease on stop so a standby takes over at once (default true). */
  readonly releaseLeaseOnStop?: boolean;
  readonly logger: Logger;
}

export interface Coordinator extends Role {
  readonly id: string;
  /** Holds the lease now, by its own clock (the lease may end earlier in Redis; every write is fenced). */
  isLeader(): boolean;
  /** Fog nodes this replica keeps something about (last heartbeat seen, cached stream state): those in `fog:nodes` at its last round. */
  trackedNodes(): { readonly seen: number; readonly streams: number };
}

interface FogNodeSeen {
  tier: string | null;
  lastSeen: number | null;
  inFlightTaskIds: string[];
  state: string;
}

/**
 * The coordinator daemon: keeps the broker-cluster and fog-node membership in
 * Redis and records fog nodes joining and leaving in PostgreSQL.
 *
 * Replicas compete for a lease (`coordinator:leader`, SET NX PX, renewed every
 * third of COORDINATOR_LEASE_MS). Only the leader probes the brokers, writes
 * the membership keys, reaps and elects a master; each of its Redis writes is a
 * Lua script that first compares the lease with its token, and each event
 * append expects the node stream's version, so a leader that was paused and
 * replaced writes nothing twice. Redis down: it logs, keeps running and retries.
 */
export function createCoordinator(deps: CoordinatorDeps): Coordinator {
  const id = deps.coordinatorId ?? `coordinator-${randomUUID().slice(0, 8)}`;
  const logger = deps.logger.child({ role: 'coordinator', coordinatorId: id });
  const keys: RedisKeys = redisKeys(deps.prefix);
  const probeTimeoutMs = deps.probeTimeoutMs ?? Math.min(deps.intervalMs, 5000);
  const renewEveryMs = Math.max(50, Math.floor(deps.leaseMs / 3));
  const abort = new AbortController();
  const fogSeen = new Map<string, FogNodeSeen>();
  const streams = new Map<string, NodeStreamState>();
  let redis: Redis | undefined;
  let scripts: Fenced | undefined;
  let token: string | undefined;
  let leaderUntil = 0;
  let wake: (() => void) | undefined;
  let wakeRequested = false;
  let loops: Promise<unknown> | undefined;
  let stopped: Promise<void> | undefined;
  let lastRoundError: string | undefined;

  const requestWake = () => {
    wakeRequested = true;
    wake?.();
  };

  const isLeader = () => token !== undefined && performance.now() < leaderUntil;

  const loseLeadership = (why: string) => {
    if (token === undefined) return;
    logger.warn({ why }, 'coordinator lost leadership');
    token = undefined;
    leaderUntil = 0;
  };

  /** Runs a fenced script; a -1 (the lease is someone else's) ends our leadership. */
  const fencedRun = async (...args: Parameters<Fenced['run']>): Promise<number | null> => {
    if (!scripts || !token || !isLeader()) return null;
    const result = await scripts.run(args[0], [keys.coordinatorLease, ...args[1]], [token, ...args[2]]);
    if (result === -1) {
      loseLeadership('lease held by another replica');
      return null;
    }
    return result;
  };

  // --- leadership ----------------------------------------------------------------

  const leaseRound = async () => {
    if (!redis || !scripts) return;
    const sentAt = performance.now();
    try {
      if (token) {
        const renewed = await scripts.run('renewLease', [keys.coordinatorLease], [token, deps.leaseMs]);
        if (renewed === 1) leaderUntil = sentAt + deps.leaseMs;
        else loseLeadership('lease expired before renewal');
      } else {
        const candidate = `${id}/${randomUUID()}`;
        const ok = await redis.set(keys.coordinatorLease, candidate, 'PX', deps.leaseMs, 'NX');
        if (ok === 'OK') {
          token = candidate;
          leaderUntil = sentAt + deps.leaseMs;
          logger.info({ leaseMs: deps.leaseMs }, 'coordinator is leader');
          requestWake(); // take up the work at once rather than at the next interval
        }
      }
    } catch {
      // Redis down: createRedis logs the outage once. Our clock ends the leadership at leaderUntil.
    }
  };

  // --- brokers -------------------------------------------------------------------

  const probe = (broker: BrokerSpec): Promise<boolean> =>
    probeBroker(broker.url, { timeoutMs: probeTimeoutMs, name: `fogsched-coordinator-probe-${id}` }).then(
      () => true,
      () => false,
    );

  const brokerRound = async () => {
    if (!redis || deps.brokers.length === 0 || !isLeader()) return;
    const health = await Promise.all(deps.brokers.map(async (b) => ({ broker: b, ok: await probe(b) })));
    for (const { broker, ok } of health) {
      if (ok) await fencedRun('brokerUp', [keys.brokerHeartbeat(broker.node), keys.brokerMembers], [Date.now(), deps.brokerHeartbeatTtlMs, broker.node]);
    }
    for (const node of await redis.smembers(keys.brokerMembers)) {
      if ((await fencedRun('brokerReap', [keys.brokerHeartbeat(node), keys.brokerMembers], [node])) === 1) {
        logger.warn({ node }, 'broker left the cluster members (heartbeat expired)');
      }
    }
    const members = new Set(await redis.smembers(keys.brokerMembers));
    const master = await redis.get(keys.brokerMaster);
    if (master && members.has(master)) return;
    // Configured order first, preferring a node that answered this round; then any other member.
    const healthy = new Set(health.filter((h) => h.ok).map((h) => h.broker.node));
    const ordered = deps.brokers.map((b) => b.node);
    const next =
      ordered.find((n) => members.has(n) && healthy.has(n)) ?? ordered.find((n) => members.has(n)) ?? [...members].sort()[0];
    if (next && (await fencedRun('setMaster', [keys.brokerMaster], [next])) === 1) {
      logger.warn({ previous: master, master: next }, 'broker master elected');
    }
  };

  // --- fog nodes -----------------------------------------------------------------

  const streamState = async (nodeId: string): Promise<NodeStreamState> => {
    let state = streams.get(nodeId);
    if (!state) {
      state = await readNodeStreamState(deps.db, nodeId);
      streams.set(nodeId, state);
    }
    return state;
  };

  /** The lease is checked right before each PostgreSQL write; the expected version catches a replica that slept between the two. */
  const stillLeader = async () => (await fencedRun('checkLease', [], [])) === 1;

  const fogRound = async () => {
    if (!redis) return;
    const ids = await redis.smembers(keys.fogNodes);
    // Forget nodes no longer in the set (reaped by this or another replica): a restarted fog node
    // usually comes back under a new id (hostname-pid), so what is kept of gone ones would grow by
    // one entry per restart. A node that comes back under an old id is read afresh.
    const present = new Set(ids);
    for (const map of [fogSeen, streams]) {
      for (const nodeId of map.keys()) if (!present.has(nodeId)) map.delete(nodeId);
    }
    const alive: string[] = [];
    const dead: string[] = [];
    for (const nodeId of ids) {
      const hash = await redis.hgetall(keys.fogNode(nodeId));
      if (Object.keys(hash).length > 0) {
        let taskIds: string[] = [];
        try {
          const parsed: unknown = JSON.parse(hash.inFlightTaskIds ?? '[]');
          if (Array.isArray(parsed)) taskIds = parsed.filter((t): t is string => typeof t === 'string');
        } catch {
          // a malformed list is treated as unknown
        }
        fogSeen.set(nodeId, { tier: hash.tier ?? null, lastSeen: Number(hash.lastSeen) || null, inFlightTaskIds: taskIds, state: hash.state ?? 'up' });
      }
      const state = Object.keys(hash).length === 0 ? 'gone' : (hash.state ?? 'up');
      (state === 'up' ? alive : dead).push(nodeId);
      if (state === 'up' && isLeader()) {
        const stream = await streamState(nodeId);
        if (stream.lastType !== 'FogNodeJoined' && (await stillLeader())) {
          const next = await appendNodeEvent(
            deps.db,
            stream,
            {
              type: 'FogNodeJoined',
              data: { nodeId, tier: hash.tier ?? '', slots: Number(hash.slots) || 0, version: hash.version ?? '', zone: hash.zone || null, labels: labelsOf(hash.labels), at: new Date().toISOString() },
            },
            `coordinator:${id}`,
          );
          if (next) logger.info({ nodeId, tier: hash.tier }, 'fog node joined');
          if (next) streams.set(nodeId, next);
          else streams.delete(nodeId);
        }
      }
    }
    if (!isLeader()) return;
    for (const nodeId of dead) {
      const stream = await streamState(nodeId);
      if (stream.lastType === 'FogNodeJoined') {
        if (!(await stillLeader())) return;
        const seen = fogSeen.get(nodeId);
        const next = await appendNodeEvent(
          deps.db,
          stream,
          {
            type: 'FogNodeLost',
            data: {
              nodeId,
              tier: seen?.tier ?? null,
              lastSeen: seen?.lastSeen ? new Date(seen.lastSeen).toISOString() : null,
              reason: seen?.state === 'stopped' ? 'stopped' : 'heartbeat-expired',
              inFlightTaskIds: seen?.state === 'stopped' ? [] : (seen?.inFlightTaskIds ?? []),
              at: new Date().toISOString(),
            },
          },
          `coordinator:${id}`,
        );
        if (!next) {
          streams.delete(nodeId); // another replica recorded something first: decide again next round
          continue;
        }
        streams.set(nodeId, next);
        logger.warn({ nodeId, inFlight: seen?.inFlightTaskIds.length ?? 0, reason: seen?.state === 'stopped' ? 'stopped' : 'heartbeat-expired' }, 'fog node lost');
      }
      // Only after the event is durable: a failed append leaves the node in the set for the next round.
      if ((await fencedRun('fogReap', [keys.fogNodes, keys.fogNode(nodeId)], [nodeId])) === 1) {
        fogSeen.delete(nodeId);
        streams.delete(nodeId);
      }
    }
  };

  // --- loops ---------------------------------------------------------------------

  const leaseLoop = async () => {
    while (!abort.signal.aborted) {
      await leaseRound();
      await sleep(renewEveryMs, abort.signal);
    }
  };

  let progress: LoopProgress = UNTRACKED;
  const workLoop = async () => {
    while (!abort.signal.aborted) {
      const started = performance.now();
      try {
        await brokerRound();
        await fogRound();
        if (lastRoundError) logger.info('coordinator round succeeded again');
        lastRoundError = undefined;
      } catch (error) {
        const message = (error as Error).message;
        if (message !== lastRoundError) logger.warn({ err: message }, 'coordinator round failed; retrying');
        lastRoundError = message;
      }
      // After a failed round (Redis not connected yet, say) try again soon rather than a whole interval later.
      const period = lastRoundError ? Math.min(deps.intervalMs, 1000) : deps.intervalMs;
      const wait = Math.max(0, period - (performance.now() - started));
      progress.beat(wait);
      if (!wakeRequested) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          void sleep(wait, abort.signal).then(resolve);
        });
      }
      wake = undefined;
      wakeRequested = false;
    }
  };

  return {
    name: 'coordinator',
    id,
    isLeader,
    trackedNodes: () => ({ seen: fogSeen.size, streams: streams.size }),
    async start() {
      redis = createRedis(deps.redisUrl, { logger, name: `fogsched-${id}` });
      scripts = fenced(redis);
      // /healthz: each round of the work loop beats (a failed one too: Redis down is /readyz's business).
      progress = processHealth.loop('coordinator', { intervalMs: deps.intervalMs });
      loops = Promise.all([leaseLoop(), workLoop()]);
      const client = redis;
      // Every replica answers this from Redis on scrape (not only the leader), cached and within a timeout.
      const live = cachedSource('fogsched_fog_nodes_live', async () => {
        const view = await readClusterView(client, keys, { brokers: deps.brokers, staleAfterMs: 2 * deps.intervalMs });
        if (view.redis !== 'ok') throw new Error(view.error);
        const count = new Map<string, number>((deps.tiers ?? []).map((t) => [t.name, 0]));
        for (const n of view.fogNodes) {
          if (n.state !== 'up' || !n.tier) continue;
          for (const tier of servedTiers(n.tier, deps.tiers)) count.set(tier, (count.get(tier) ?? 0) + 1);
        }
        return [...count].map(([tier, value]) => ({ labels: { tier }, value }));
      });
      registerScrapeGaugeVec('fogsched_fog_nodes_live', 'Live fog nodes (heartbeat in Redis, state up) that serve each tier, their own or a lighter one; read from Redis by the coordinator', ['tier'], live);
      logger.info({ brokers: deps.brokers.map((b) => b.node), intervalMs: deps.intervalMs, leaseMs: deps.leaseMs }, 'coordinator started');
    },
    stop() {
      return (stopped ??= (async () => {
        abort.abort();
        requestWake();
        await loops;
        if (redis && scripts && token && (deps.releaseLeaseOnStop ?? true)) {
          await scripts.run('releaseLease', [keys.coordinatorLease], [token]).catch(() => {});
        }
        token = undefined;
        redis?.disconnect();
        progress.dispose();
      })());
    },
  };
}

/** The `labels` field of a fog node's hash (JSON); {} when absent or malformed. */
function labelsOf(value: string | undefined): Record<string, string> {
  try {
    const parsed: unknown = JSON.parse(value ?? '{}');
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return {};
    return Object.fromEntries(Object.entries(parsed).filter((e): e is [string, string] => typeof e[1] === 'string'));
  } catch {
    return {};
  }
}

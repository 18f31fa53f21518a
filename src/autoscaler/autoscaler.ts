import { performance } from 'node:perf_hooks';
import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import { createBrokerClient, declareTopology, type BrokerChannel, type BrokerConnection, type Topology, type TopologyNames } from '../broker/index.js';
import { PRIORITIES } from '../domain/index.js';
import type { AutoscaleTier } from '../infra/config.js';
import type { Logger } from '../infra/logger.js';
import { processHealth, UNTRACKED, type LoopProgress } from '../infra/health.js';
import { sleep } from '../infra/role.js';
import { keepLease, releaseLease, sessionSettings, tryAcquireLease, type LeaseSpec, type LeaseTerm } from '../outbox/relay-lease.js';
import type { Database } from '../store/index.js';
import type { ScaleBackend } from './backend.js';
import { decideScale, type ScaleDecision, type ScalePolicy, type TierMeasurement } from './decide.js';
import { appendTierScaled, readTierStreamState, type TierStreamState } from './events.js';

/** Row of `relay_lease` the autoscaler replicas share: one of them scales. */
export const AUTOSCALER_LEASE_NAME = 'autoscaler';

export interface AutoscalerOptions {
  readonly db: Kysely<Database>;
  /** For the lease's own connection (renewals never queue behind the measurements). */
  readonly databaseUrl: string;
  readonly amqpUrl: string;
  readonly topology: Topology;
  readonly names: TopologyNames;
  readonly tiers: readonly AutoscaleTier[];
  /** The policy of every tier, without its min and max. */
  readonly policy: Omit<ScalePolicy, 'min' | 'max'>;
  readonly backend: ScaleBackend;
  readonly intervalMs: number;
  readonly leaseMs: number;
  /** This replica, unique per process; the `actor` of its events. */
  readonly holder: string;
  readonly logger: Logger;
  /** The clock of decisions and event times (default Date.now). */
  readonly now?: () => number;
}

export interface Autoscaler {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** This replica holds the lease now. */
  leading(): boolean;
}

interface TierRow {
  tier: string;
  queued: string;
  running: string;
  oldest_ms: number | null;
  avg_ms: number | null;
}

/**
 * The autoscaler role: every `intervalMs` the replica holding the `autoscaler` lease (table
 * relay_lease, the relay's leadership mechanism: acquire, renew every third, give up when a
 * renewal is late) measures each tier (ready messages in its task queues from the broker's
 * queue.declare-ok counts; queued and running tasks and their waits from task_current), asks
 * decideScale, and for a change first appends `FogTierScaled` to the tier's stream at the
 * version it read (a stale leader's append fails and it does nothing), then sets the replicas
 * through the backend. A backend call that fails is retried by the next round, which reads the
 * replicas again; the event said what was decided and why.
 */
export function createAutoscaler(options: AutoscalerOptions): Autoscaler {
  const { logger, backend } = options;
  const now = options.now ?? Date.now;
  const spec: LeaseSpec = { name: AUTOSCALER_LEASE_NAME, holder: options.holder, leaseMs: options.leaseMs };
  const abort = new AbortController();
  const broker = createBrokerClient({ urls: options.amqpUrl, name: 'fogsched-autoscaler', logger });
  const streams = new Map<string, TierStreamState>();
  let leaseDb: pg.Client | undefined;
  let term: LeaseTerm | undefined;
  let connection: BrokerConnection | undefined;
  let channel: BrokerChannel | undefined;
  let loop: Promise<void> | undefined;
  let stopping: Promise<void> | undefined;

  const closeClient = async (c: pg.Client | undefined) => {
    if (c) await c.end().catch(() => {});
  };

  const holdsLease = async (): Promise<boolean> => {
    if (term?.holds()) return true;
    if (term) {
      logger.warn({ reason: term.reason() }, 'autoscaler lost its lease');
      term = undefined;
      streams.clear();
    }
    if (!leaseDb) {
      const c = new pg.Client({ connectionString: options.databaseUrl, connectionTimeoutMillis: 5000, application_name: 'fogsched-autoscaler-lease', keepAlive: true });
      c.on('error', (error) => logger.warn({ err: error.message }, 'autoscaler lease connection lost'));
      try {
        await c.connect();
        await c.query(sessionSettings(options.leaseMs));
      } catch (error) {
        await closeClient(c);
        throw error;
      }
      leaseDb = c;
    }
    const db = leaseDb;
    const sentAt = performance.now();
    const epoch = await tryAcquireLease(db, spec);
    if (epoch === undefined) return false;
    term = keepLease({ db, spec, epoch, sentAt, logger });
    logger.info({ epoch }, 'autoscaler is the scaling replica');
    return true;
  };

  const openChannel = async (): Promise<BrokerChannel | undefined> => {
    if (channel?.isOpen()) return channel;
    if (!connection?.isOpen()) {
      await connection?.close();
      connection = await broker.connect(abort.signal);
      if (!connection) return undefined;
      const declaring = await connection.channel('autoscaler-declare');
      await declareTopology(declaring.raw, options.topology);
      await declaring.close();
    }
    channel = await connection.channel('autoscaler-depth');
    return channel;
  };

  const measureDepth = async (tier: string): Promise<number> => {
    const ch = await openChannel();
    if (!ch) throw new Error('stopped');
    let depth = 0;
    for (const priority of PRIORITIES) depth += (await ch.raw.checkQueue(options.names.taskQueue(tier, priority))).messageCount;
    return depth;
  };

  const measureTasks = async (): Promise<Map<string, TierRow>> => {
    // FILTER aggregates and interval arithmetic: beyond what the builder says. Waiting means due
    // and not started: `queued`, and a `scheduled` or `retrying` task once its time has come (the
    // read model changes its state only when it starts).
    const result = await sql<TierRow>`
      WITH t AS (
        SELECT tier, state, now() - coalesce(available_at, submitted_at) AS waited
          FROM task_current
         WHERE state IN ('queued', 'scheduled', 'retrying', 'running') AND tier = ANY(${options.tiers.map((t) => t.tier)}::text[]))
      SELECT tier,
             count(*) FILTER (WHERE state <> 'running' AND waited >= interval '0') AS queued,
             count(*) FILTER (WHERE state = 'running') AS running,
             (extract(epoch FROM max(waited) FILTER (WHERE state <> 'running' AND waited >= interval '0')) * 1000)::float8 AS oldest_ms,
             (extract(epoch FROM avg(waited) FILTER (WHERE state <> 'running' AND waited >= interval '0')) * 1000)::float8 AS avg_ms
        FROM t
       GROUP BY tier`.execute(options.db);
    return new Map(result.rows.map((r) => [r.tier, r]));
  };

  const record = async (tier: AutoscaleTier, decision: ScaleDecision, m: TierMeasurement): Promise<boolean> => {
    const state = streams.get(tier.tier) ?? (await readTierStreamState(options.db, tier.tier));
    if (!term?.holds()) return false;
    const next = await appendTierScaled(
      options.db,
      state,
      {
        type: 'FogTierScaled',
        data: {
          tier: tier.tier,
          from: decision.from,
          to: decision.to,
          trigger: decision.trigger,
          reason: decision.reason,
          ...m,
          min: tier.min,
          max: tier.max,
          backend: backend.name,
          at: new Date(now()).toISOString(),
        },
      },
      options.holder,
    );
    if (next) streams.set(tier.tier, next);
    else streams.delete(tier.tier);
    return next !== null;
  };

  const round = async () => {
    if (!(await holdsLease())) return;
    const tasks = await measureTasks();
    for (const tier of options.tiers) {
      if (abort.signal.aborted || !term?.holds()) return;
      const row = tasks.get(tier.tier);
      const clamp = (ms: number | null | undefined) => (ms === null || ms === undefined ? null : Math.max(0, Math.round(ms)));
      const m: TierMeasurement = {
        depth: await measureDepth(tier.tier),
        queued: Number(row?.queued ?? 0),
        running: Number(row?.running ?? 0),
        oldestWaitMs: clamp(row?.oldest_ms),
        avgWaitMs: clamp(row?.avg_ms),
      };
      const replicas = await backend.replicas(tier.tier);
      let state = streams.get(tier.tier);
      if (!state) {
        state = await readTierStreamState(options.db, tier.tier);
        streams.set(tier.tier, state);
      }
      const decision = decideScale(replicas, m, state, { ...options.policy, min: tier.min, max: tier.max }, now());
      if (!decision) continue;
      if (!(await record(tier, decision, m))) {
        logger.warn({ tier: tier.tier }, 'autoscaler decision not recorded (another replica wrote first, or the lease ended): not carried out');
        continue;
      }
      logger.info({ tier: tier.tier, from: decision.from, to: decision.to, trigger: decision.trigger, reason: decision.reason }, 'tier scaled');
      try {
        await backend.scale(tier.tier, decision.to);
      } catch (error) {
        logger.error({ err: error, tier: tier.tier, to: decision.to }, 'autoscaler could not set the replicas; the next round tries again');
      }
    }
  };

  let progress: LoopProgress = UNTRACKED;
  const run = async () => {
    let failures = 0;
    while (!abort.signal.aborted) {
      try {
        await round();
        failures = 0;
      } catch (error) {
        failures++;
        if (failures === 1 || failures % 10 === 0) logger.warn({ err: error instanceof Error ? error.message : String(error), failures }, 'autoscaler round failed; retrying');
        if (!channel?.isOpen()) channel = undefined;
        if (leaseDb && failures > 1) {
          // The lease connection may be the broken part: start over with a new one.
          term?.end('ended');
          term = undefined;
          await closeClient(leaseDb);
          leaseDb = undefined;
        }
      }
      progress.beat(options.intervalMs);
      await sleep(options.intervalMs, abort.signal);
    }
  };

  return {
    start() {
      // /healthz: each round beats, whether it scaled, held or failed on a dependency.
      if (!loop) progress = processHealth.loop('autoscaler', { intervalMs: options.intervalMs });
      loop ??= run();
      logger.info({ tiers: options.tiers, backend: backend.name, intervalMs: options.intervalMs, policy: options.policy }, 'autoscaler started');
      return Promise.resolve();
    },
    leading: () => term?.holds() ?? false,
    stop() {
      stopping ??= (async () => {
        abort.abort();
        await loop;
        progress.dispose();
        const t = term;
        term = undefined;
        if (t && leaseDb) {
          t.end('ended');
          if (await t.quiet(1000)) await releaseLease(leaseDb, spec, t.epoch).catch(() => {});
        }
        await backend.close();
        await channel?.close();
        await connection?.close();
        await closeClient(leaseDb);
        leaseDb = undefined;
      })();
      return stopping;
    },
  };
}

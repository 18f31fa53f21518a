import pg from 'pg';
import type { RabbitCluster } from './rabbit-cluster.js';
import type { OwnPostgres, OwnRedis } from './services.js';
import type { Supervisor } from './system.js';
import { between, pickOne, sleep, type Random } from './util.js';

/**
 * The nemesis: one fault at a time, on a seeded schedule, each healed before the next
 * (so a recovery can be told apart from the next fault's effect).
 */

export const FAULT_KINDS = ['kill-role', 'restart-role', 'pause-role', 'kill-broker', 'redis-down', 'postgres-restart', 'table-lock', 'partition-broker'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export const FAULT_DESCRIPTIONS: Record<FaultKind, string> = {
  'kill-role': 'SIGKILL a fogsched process (a role picked at random, then one of its processes); the supervisor restarts it',
  'restart-role': 'SIGTERM a fogsched process (a graceful stop, as a rolling update does); the supervisor starts it again',
  'pause-role': 'SIGSTOP a fogsched process for a while, then SIGCONT',
  'kill-broker': 'SIGKILL a RabbitMQ node, restart it a few seconds later',
  'redis-down': 'kill Redis (everything in it is lost), start it empty later',
  'postgres-restart': '`pg_ctl stop -m immediate` (in-flight transactions die), start again',
  'table-lock': 'hold LOCK TABLE task_current IN EXCLUSIVE MODE past the statement timeout',
  'partition-broker': 'cut a RabbitMQ node off the network (its link down), heal it later',
};

export interface FaultRecord {
  readonly kind: FaultKind;
  readonly target: string;
  /** ms since epoch */
  readonly startedAt: number;
  readonly healedAt: number;
  /** How the time went (e.g. how long a restart took). */
  readonly note?: string;
  readonly error?: string;
}

export interface NemesisOptions {
  readonly random: Random;
  readonly durationMs: number;
  readonly kinds: readonly FaultKind[];
  /** Shorter holds (quick mode). */
  readonly quick: boolean;
  readonly supervisor: Supervisor;
  readonly cluster: RabbitCluster;
  readonly brokers: number;
  readonly postgres: OwnPostgres;
  readonly redis: OwnRedis;
  readonly databaseUrl: string;
  readonly statementTimeoutMs: number;
  readonly signal?: AbortSignal;
  readonly log?: (line: string) => void;
  /**
   * Resolves once tasks complete again after `since` (or `maxWaitMs` passed). The next fault
   * waits for it, so each recovery can be measured on its own. Default: no wait.
   */
  readonly awaitProgress?: (since: number, maxWaitMs: number) => Promise<boolean>;
}

/** How long each kind holds its fault (ms): [min, max]. */
function holdRange(kind: FaultKind, quick: boolean, statementTimeoutMs: number): [number, number] {
  switch (kind) {
    case 'kill-role':
    case 'restart-role':
      return [0, 0];
    case 'pause-role':
      return quick ? [3000, 5000] : [3000, 10_000];
    case 'kill-broker':
      return quick ? [1000, 3000] : [3000, 10_000];
    case 'redis-down':
      return quick ? [8000, 8000] : [30_000, 30_000];
    case 'postgres-restart':
      return quick ? [1000, 3000] : [2000, 8000];
    case 'table-lock':
      return [statementTimeoutMs + 2000, statementTimeoutMs + 2000];
    case 'partition-broker':
      return quick ? [6000, 8000] : [8000, 20_000];
  }
}

/** Longest the nemesis waits for tasks to complete again before the next fault. */
export const PROGRESS_WAIT_MS = { quick: 10_000, full: 30_000 } as const;

/**
 * Runs faults until `durationMs` has passed: first every kind once in a seeded order (this
 * round is always completed, even past the duration), then seeded picks (process kills,
 * restarts and pauses twice as often as the rest). After each fault is healed, the next waits until tasks
 * complete again (at most PROGRESS_WAIT_MS) and a seeded gap of 1.5–3.5 s. Returns what it did.
 */
export async function runNemesis(opts: NemesisOptions): Promise<FaultRecord[]> {
  const log = opts.log ?? (() => {});
  const { random } = opts;
  const records: FaultRecord[] = [];
  const t0 = Date.now();
  const firstRound = [...opts.kinds];
  for (let i = firstRound.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [firstRound[i], firstRound[j]] = [firstRound[j] as FaultKind, firstRound[i] as FaultKind];
  }
  const weightedKinds = opts.kinds.flatMap((k) => (k === 'kill-role' || k === 'restart-role' || k === 'pause-role' ? [k, k] : [k]));
  while ((firstRound.length > 0 || Date.now() - t0 < opts.durationMs) && !opts.signal?.aborted) {
    const kind = firstRound.shift() ?? pickOne(random, weightedKinds);
    const [lo, hi] = holdRange(kind, opts.quick, opts.statementTimeoutMs);
    const holdMs = between(random, lo, hi);
    const gapMs = between(random, 1500, 3500);
    const record = await inject(kind, holdMs, opts);
    records.push(record);
    const progressed = await opts.awaitProgress?.(record.healedAt, opts.quick ? PROGRESS_WAIT_MS.quick : PROGRESS_WAIT_MS.full);
    log(
      `fault ${kind} on ${record.target}: ${((record.healedAt - record.startedAt) / 1000).toFixed(1)} s${record.note ? ` (${record.note})` : ''}${record.error ? ` (error: ${record.error})` : ''}` +
        (progressed === false ? '; no task completed since it was healed' : ''),
    );
    await sleep(gapMs);
  }
  return records;
}

async function inject(kind: FaultKind, holdMs: number, opts: NemesisOptions): Promise<FaultRecord> {
  const { random } = opts;
  const startedAt = Date.now();
  let target = '';
  let note = '';
  const done = (error?: unknown): FaultRecord => ({ kind, target, startedAt, healedAt: Date.now(), ...(note ? { note } : {}), ...(error ? { error: (error as Error).message ?? JSON.stringify(error) } : {}) });
  /** Runs a healing step and notes how long it took. */
  const timed = async (what: string, step: () => Promise<void>) => {
    const t = Date.now();
    await step();
    note += `${note ? ', ' : ''}${what} ${((Date.now() - t) / 1000).toFixed(1)} s`;
  };
  try {
    switch (kind) {
      case 'kill-role':
      case 'restart-role':
      case 'pause-role': {
        // A role first, then one of its processes: fog nodes (four processes) are not hit
        // four times as often as the single-purpose roles.
        const live = opts.supervisor.processes.filter((p) => p.pid() !== null);
        const role = pickOne(random, [...new Set(live.map((p) => p.spec.role))].sort());
        const victim = pickOne(random, live.filter((p) => p.spec.role === role));
        target = victim.spec.name;
        if (kind === 'kill-role') {
          victim.signal('SIGKILL');
          return done();
        }
        if (kind === 'restart-role') {
          const exits = victim.exits.length;
          victim.signal('SIGTERM');
          // Held until it has stopped (its graceful stop is part of the fault); the supervisor starts it again.
          await timed('graceful stop', async () => {
            const deadline = Date.now() + 30_000;
            while (victim.exits.length === exits && Date.now() < deadline) await sleep(100);
          });
          return done();
        }
        victim.signal('SIGSTOP');
        try {
          await sleep(holdMs);
        } finally {
          victim.signal('SIGCONT');
        }
        return done();
      }
      case 'kill-broker':
      case 'partition-broker': {
        const i = between(random, 0, opts.brokers - 1);
        target = opts.cluster.nodeNames[i] as string;
        if (kind === 'kill-broker') {
          await opts.cluster.kill(i);
          await sleep(holdMs);
          note = `down ${(holdMs / 1000).toFixed(1)} s`;
          await timed('restart', () => opts.cluster.restart(i));
        } else {
          await opts.cluster.isolate(i);
          try {
            await sleep(holdMs);
          } finally {
            await opts.cluster.heal(i);
          }
        }
        return done();
      }
      case 'redis-down':
        target = 'redis';
        await opts.redis.kill();
        await sleep(holdMs);
        note = `down ${(holdMs / 1000).toFixed(1)} s`;
        await timed('start', () => opts.redis.start());
        return done();
      case 'postgres-restart':
        target = 'postgresql';
        await timed('stop', () => opts.postgres.stopImmediate());
        await sleep(holdMs);
        note += `, down ${(holdMs / 1000).toFixed(1)} s`;
        await timed('start', () => opts.postgres.start());
        return done();
      case 'table-lock': {
        target = 'task_current';
        const client = new pg.Client({ connectionString: opts.databaseUrl });
        client.on('error', () => {});
        await timed('connect', async () => {
          await client.connect();
        });
        try {
          await client.query('BEGIN');
          await client.query('SET LOCAL statement_timeout = 0');
          await timed('lock', () => client.query('LOCK TABLE task_current IN EXCLUSIVE MODE').then(() => undefined));
          await sleep(holdMs);
          note += `, held ${(holdMs / 1000).toFixed(1)} s`;
          await client.query('COMMIT');
        } finally {
          await client.end().catch(() => {});
        }
        return done();
      }
    }
  } catch (error) {
    return done(error);
  }
}

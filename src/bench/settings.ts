/** Sizes and durations of one bench run (full or quick). */
/** Events of each finished task the bench seeds: TaskSubmitted (which queues it), TaskStarted, TaskSucceeded. */
export const SEEDED_EVENTS_PER_TASK = 3;

export interface Settings {
  readonly quick: boolean;
  /** Repeats of fogsched's scenarios. */
  readonly repeat: number;
  /** Repeats of the peers' scenarios (at most `repeat`): the first `peerRepeat` repeats run them. */
  readonly peerRepeat: number;
  readonly submitSeconds: number;
  readonly singleClients: number;
  readonly batchClients: number;
  readonly batchSize: number;
  readonly drainN: number;
  /** Tasks of the overlap scenarios (submitted in batches of batchSize while the workers run). */
  readonly overlapN: number;
  readonly latencyRate: number;
  readonly latencySeconds: number;
  readonly relayM: number;
  readonly rebuildTasks: number;
  /** Finished tasks (4 events each) in the log before drain-long-log starts. */
  readonly longLogTasks: number;
  readonly concurrency: number;
  /** Children of the fan-out/fan-in scenario (plus one fan-in task that depends on all of them). */
  readonly fanInChildren: number;
  /** A peer's wait ends at this limit (its run is cut short). */
  readonly timeoutMs: number;
  /**
   * A fogsched wait ends at this limit, as an error. Longer than the peers' limit in the quick
   * run: the quick run asserts nothing about speed, so a loaded CI machine must not fail it.
   */
  readonly ownTimeoutMs: number;
  /**
   * A peer's wait is also cut short once it has run this long and the rate so far would take it
   * past `timeoutMs`: such a run ends the same way, only sooner.
   */
  readonly earlyCutMs: number;
}

export function settingsFor(quick: boolean, repeat?: number, peerRepeat?: number): Settings {
  const repeats = repeat ?? (quick ? 1 : 3);
  return {
    quick,
    repeat: repeats,
    // One repeat of each of the 5 peer variants already takes ~5 minutes (their fixed-length
    // scenarios alone are 5 × 40 s); three would put a full run past 15 minutes on 2 cores.
    peerRepeat: Math.min(repeats, peerRepeat ?? 1),
    submitSeconds: quick ? 3 : 10,
    singleClients: 50,
    batchClients: 4,
    batchSize: 500,
    drainN: quick ? 3_000 : 20_000,
    overlapN: quick ? 2_000 : 10_000,
    latencyRate: 200,
    latencySeconds: quick ? 5 : 20,
    relayM: quick ? 5_000 : 50_000,
    // 3 events per task (SEEDED_EVENTS_PER_TASK): 1,000,002 events in the full run.
    rebuildTasks: quick ? 13_334 : 333_334,
    // 2,000,001 earlier events in the full run.
    longLogTasks: quick ? 16_667 : 666_667,
    concurrency: 50,
    // The full run is issue 20's scale requirement: 10,000 children (MAX_DEPENDENCIES).
    fanInChildren: quick ? 1_000 : 10_000,
    timeoutMs: quick ? 4_000 : 120_000,
    ownTimeoutMs: 120_000,
    earlyCutMs: quick ? 2_000 : 20_000,
  };
}

export const SCENARIOS = ['submit-single', 'submit-batch', 'drain', 'drain-two-ingest', 'overlap', 'overlap-split', 'drain-long-log', 'latency', 'relay', 'rebuild', 'memory', 'fan-in'] as const;
export type Scenario = (typeof SCENARIOS)[number];
export const PEERS = ['graphile-worker', 'pg-boss', 'bullmq'] as const;
export type Peer = (typeof PEERS)[number];

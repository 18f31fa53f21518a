/** Sizes and durations of one bench run (full or quick). */
export interface Settings {
  readonly quick: boolean;
  readonly repeat: number;
  readonly submitSeconds: number;
  readonly singleClients: number;
  readonly batchClients: number;
  readonly batchSize: number;
  readonly drainN: number;
  readonly latencyRate: number;
  readonly latencySeconds: number;
  readonly relayM: number;
  readonly rebuildTasks: number;
  /** Finished tasks (4 events each) in the log before drain-long-log starts. */
  readonly longLogTasks: number;
  readonly concurrency: number;
  readonly timeoutMs: number;
}

export function settingsFor(quick: boolean, repeat?: number): Settings {
  return {
    quick,
    repeat: repeat ?? (quick ? 1 : 3),
    submitSeconds: quick ? 3 : 10,
    singleClients: 50,
    batchClients: 4,
    batchSize: 500,
    drainN: quick ? 3_000 : 20_000,
    latencyRate: 200,
    latencySeconds: quick ? 5 : 20,
    relayM: quick ? 5_000 : 50_000,
    // 4 events per task: 1,000,000 events in the full run.
    rebuildTasks: quick ? 10_000 : 250_000,
    // 2,000,000 earlier events in the full run.
    longLogTasks: quick ? 12_500 : 500_000,
    concurrency: 50,
    timeoutMs: quick ? 4_000 : 120_000,
  };
}

export const SCENARIOS = ['submit-single', 'submit-batch', 'drain', 'drain-long-log', 'latency', 'relay', 'rebuild', 'memory'] as const;
export type Scenario = (typeof SCENARIOS)[number];
export const PEERS = ['graphile-worker', 'pg-boss', 'bullmq'] as const;
export type Peer = (typeof PEERS)[number];

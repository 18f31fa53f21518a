import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The process's Prometheus metrics (prom-client): one registry, served by the ops server
 * (`/metrics` on OPS_PORT) and by the api on its own port. Names are stable and listed in
 * docs/metrics.md; every label set is bounded (no task ids; tenants only from METRICS_TENANTS,
 * task types only those METRICS_TASK_TYPES lists, the rest `other`).
 *
 * A metric is registered when a role first uses it, so a fog-node process does not export an
 * outbox gauge of 0 it knows nothing about.
 */
export const registry = new Registry();

let defaultsOn = false;
/** Node.js process metrics (`process_*`, `nodejs_*`); once per process. */
export function enableDefaultMetrics(): void {
  if (defaultsOn) return;
  defaultsOn = true;
  collectDefaultMetrics({ register: registry });
}

// ---------------------------------------------------------------------------------------------
// Bounded labels

export interface MetricsSettings {
  /** METRICS_TENANTS: tenants that get their own `tenant` label; every other tenant is `other`. */
  readonly tenants: readonly string[];
  /**
   * METRICS_TASK_TYPES: task types that get their own `type` label; every other type is `other`.
   * An allow-list, not "the first N seen": the metrics port has no credentials, and a type name
   * is chosen by whoever submits, so it must not show one tenant's names to anyone who scrapes.
   */
  readonly taskTypes: readonly string[];
}

/** The fog node's built-in task types: labelled unless METRICS_TASK_TYPES says otherwise. */
export const BUILTIN_TASK_TYPES = ['noop', 'sleep', 'fail', 'flaky', 'echo', 'checksum', 'crash', 'spin'] as const;
let tenants: ReadonlySet<string> = new Set();
let taskTypes: ReadonlySet<string> = new Set(BUILTIN_TASK_TYPES);

/** Applies METRICS_TENANTS and METRICS_TASK_TYPES (cli/start calls it once, before the roles start). */
export function configureMetrics(settings: MetricsSettings): void {
  tenants = new Set(settings.tenants);
  taskTypes = new Set(settings.taskTypes);
}

/** `tenant` if METRICS_TENANTS lists it, else `other`. */
export function tenantLabel(tenant: string): string {
  return tenants.has(tenant) ? tenant : 'other';
}

/** `type` if METRICS_TASK_TYPES lists it, else `other`. */
export function typeLabel(type: string): string {
  return taskTypes.has(type) ? type : 'other';
}

/** Parses a comma-separated list of names (METRICS_TENANTS, METRICS_TASK_TYPES): blanks and repeats dropped. */
export function parseNameList(text: string): string[] {
  return [...new Set(text.split(',').map((t) => t.trim()).filter(Boolean))];
}

// ---------------------------------------------------------------------------------------------
// Metrics, each created (and registered) on first use

function lazy<T>(make: () => T): () => T {
  let value: T | undefined;
  return () => (value ??= make());
}

/** Seconds: from a millisecond run to a ten-minute queue wait. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

const tasksSubmitted = lazy(() => new Counter({ name: 'fogsched_tasks_submitted_total', help: 'Tasks submitted (committed), by tier and priority', labelNames: ['tier', 'priority'] as const, registers: [registry] }));
const tasksFinished = lazy(
  () =>
    new Counter({
      name: 'fogsched_tasks_finished_total',
      help: 'Tasks that reached a terminal state, by type (types listed in METRICS_TASK_TYPES, else other), tier and outcome (succeeded, failed, dead-lettered, cancelled)',
      labelNames: ['type', 'tier', 'outcome'] as const,
      registers: [registry],
    }),
);
const queueWait = lazy(() => new Histogram({ name: 'fogsched_task_queue_wait_seconds', help: 'From the moment an attempt was due to its start on a fog node, by tier', labelNames: ['tier'] as const, buckets: DURATION_BUCKETS, registers: [registry] }));
const runTime = lazy(() => new Histogram({ name: 'fogsched_task_run_seconds', help: "An attempt's run on its fog node, start to result, by tier", labelNames: ['tier'] as const, buckets: DURATION_BUCKETS, registers: [registry] }));
const relayPublished = lazy(() => new Counter({ name: 'fogsched_relay_published_total', help: 'Outbox rows the relay published (confirmed by the broker) and marked published', registers: [registry] }));
const relayRefused = lazy(() => new Counter({ name: 'fogsched_relay_refused_total', help: 'Outbox rows the broker refused (nack, unroutable); they stay due and are retried with backoff', registers: [registry] }));
const leaderSources = new Set<() => boolean>();
const relayLeader = lazy(
  () =>
    new Gauge({
      name: 'fogsched_relay_leader',
      help: '1 while this process\'s relay holds the publishing lease, else 0',
      registers: [registry],
      collect() {
        this.set([...leaderSources].filter((leading) => leading()).length);
      },
    }),
);
const ingestBatch = lazy(() => new Histogram({ name: 'fogsched_ingest_batch_records', help: 'Result records applied per ingest transaction', buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500], registers: [registry] }));
const httpDuration = lazy(
  () =>
    new Histogram({
      name: 'fogsched_http_request_duration_seconds',
      help: 'API requests by matched route pattern (never the raw URL; unmatched paths are "unmatched"), method and status',
      labelNames: ['route', 'method', 'status'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
);
const rateLimited = lazy(() => new Counter({ name: 'fogsched_rate_limited_total', help: 'Submits refused by a per-tenant limit (429), by tenant (METRICS_TENANTS, else other) and limit', labelNames: ['tenant', 'limit'] as const, registers: [registry] }));

const TERMINAL_OUTCOMES: Readonly<Record<string, string>> = { TaskSucceeded: 'succeeded', TaskFailed: 'failed', TaskDeadLettered: 'dead-lettered', TaskCancelled: 'cancelled' };

/** What recordTaskEvents needs of an event and of the task's state after it (a structural slice of the domain's types). */
export interface TaskEventForMetrics {
  readonly event: { readonly type: string; readonly data: object };
  readonly state: {
    readonly spec: { readonly type: string; readonly tier: string; readonly priority: string } | null;
    readonly availableAt: string | null;
    readonly startedAt: string | null;
  };
}

/**
 * Counts committed task events: submits, terminal outcomes, queue waits (due → started) and runs.
 * Call it after the transaction that appended them committed.
 */
export function recordTaskEvents(applied: readonly TaskEventForMetrics[]): void {
  for (const { event, state } of applied) {
    const tier = state.spec?.tier ?? 'unknown';
    if (event.type === 'TaskSubmitted') {
      tasksSubmitted().inc({ tier, priority: state.spec?.priority ?? 'unknown' });
      continue;
    }
    const outcome = TERMINAL_OUTCOMES[event.type];
    if (outcome) tasksFinished().inc({ type: typeLabel(state.spec?.type ?? 'unknown'), tier, outcome });
    const data = event.data as { at?: unknown; reportedAt?: unknown; durationMs?: unknown };
    if (event.type === 'TaskStarted') {
      // The node's clock at the start against the due time the scheduler wrote: skew is clamped at 0.
      const seconds = secondsBetween(state.availableAt, data.at);
      if (seconds !== undefined) queueWait().observe({ tier }, seconds);
    } else if (event.type === 'TaskSucceeded' && typeof data.durationMs === 'number') {
      runTime().observe({ tier }, Math.max(0, data.durationMs) / 1000); // measured on the node
    } else if (event.type === 'TaskAttemptFailed') {
      const seconds = secondsBetween(state.startedAt, data.reportedAt ?? data.at);
      if (seconds !== undefined) runTime().observe({ tier }, seconds);
    }
  }
}

function secondsBetween(from: unknown, to: unknown): number | undefined {
  if (typeof from !== 'string' || typeof to !== 'string') return undefined;
  const ms = Date.parse(to) - Date.parse(from);
  return Number.isFinite(ms) ? Math.max(0, ms) / 1000 : undefined;
}

export function recordRelayPublished(rows: number): void {
  if (rows > 0) relayPublished().inc(rows);
}
export function recordRelayRefused(rows: number): void {
  if (rows > 0) relayRefused().inc(rows);
}
/** Registers a relay's metrics (they show at 0 from its start) and its leadership; the returned function removes the latter. */
export function registerRelayMetrics(leading: () => boolean): () => void {
  relayPublished();
  relayRefused();
  relayLeader();
  leaderSources.add(leading);
  return () => leaderSources.delete(leading);
}

export function recordIngestBatch(records: number): void {
  ingestBatch().observe(records);
}

export function recordHttpRequest(route: string, method: string, status: number, seconds: number): void {
  httpDuration().observe({ route, method: HTTP_METHODS.has(method) ? method : 'other', status: String(status) }, seconds);
}
const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** Registers the api's metrics, so they are listed (without series) before the first request or refusal. */
export function registerApiMetrics(): void {
  httpDuration();
  rateLimited();
}

/** `limit`: `rate`, `burst` or `active`. */
export function recordRateLimited(tenant: string, limit: string): void {
  rateLimited().inc({ tenant: tenantLabel(tenant), limit });
}

// ---------------------------------------------------------------------------------------------
// Gauges read on scrape

/** A fog node's slots, read on each scrape. */
export interface SlotSource {
  readonly tier: string;
  slots(): { busy: number; free: number };
}
const slotSources = new Set<SlotSource>();
const fogNodeSlots = lazy(
  () =>
    new Gauge({
      name: 'fogsched_fog_node_slots',
      help: "This process's fog nodes' task slots by tier and state (busy: running or buffered, free)",
      labelNames: ['tier', 'state'] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of slotSources) {
          const { busy, free } = s.slots();
          this.inc({ tier: s.tier, state: 'busy' }, busy);
          this.inc({ tier: s.tier, state: 'free' }, free);
        }
      },
    }),
);
const fogNodes = lazy(
  () =>
    new Gauge({
      name: 'fogsched_fog_nodes',
      help: 'Fog nodes running in this process, by tier',
      labelNames: ['tier'] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of slotSources) this.inc({ tier: s.tier });
      },
    }),
);

/** Registers a fog node's slots; the returned function removes them (on stop). */
export function registerFogNodeSlots(source: SlotSource): () => void {
  fogNodeSlots();
  fogNodes();
  slotSources.add(source);
  return () => slotSources.delete(source);
}

/**
 * A value read from a database or Redis on scrape, cached for `ttlMs`. A scrape waits at most
 * `timeoutMs` for a fresh value, then answers with the last one it has (or none): a slow or down
 * dependency never holds a scrape. A failure counts in `fogsched_metrics_collect_errors_total`.
 */
export function cachedSource<T>(source: string, read: () => Promise<T>, options: { ttlMs?: number; timeoutMs?: number } = {}): () => Promise<T | undefined> {
  const ttlMs = options.ttlMs ?? 5000;
  const timeoutMs = options.timeoutMs ?? 1000;
  let value: T | undefined;
  let at = -Infinity;
  let inFlight: Promise<void> | undefined;
  return async () => {
    if (performance.now() - at < ttlMs) return value;
    inFlight ??= read()
      .then((v) => {
        value = v;
        at = performance.now();
      })
      .catch(() => {
        collectErrors().inc({ source });
        value = undefined; // do not keep showing a figure we can no longer read
        at = performance.now();
      })
      .finally(() => {
        inFlight = undefined;
      });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)));
    const r = await Promise.race([inFlight.then(() => 'done' as const), timedOut]);
    clearTimeout(timer);
    if (r === 'timeout') collectErrors().inc({ source });
    return value;
  };
}
const collectErrors = lazy(() => new Counter({ name: 'fogsched_metrics_collect_errors_total', help: 'Scrape-time reads (database, Redis) that failed or timed out, by source', labelNames: ['source'] as const, registers: [registry] }));

/** A gauge without labels whose value is read on scrape (see cachedSource). Registered once per name; later calls add nothing. */
export function registerScrapeGauge(name: string, help: string, read: () => Promise<number | undefined>): void {
  if (registry.getSingleMetric(name)) return;
  new Gauge({
    name,
    help,
    registers: [registry],
    async collect() {
      const v = await read();
      this.reset();
      if (v !== undefined) this.set(v);
    },
  });
}

/** A gauge with labels whose values are read on scrape; each read replaces every series. */
export function registerScrapeGaugeVec(name: string, help: string, labelNames: readonly string[], read: () => Promise<readonly { labels: Record<string, string>; value: number }[] | undefined>): void {
  if (registry.getSingleMetric(name)) return;
  new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    async collect() {
      const rows = await read();
      this.reset();
      for (const r of rows ?? []) this.set(r.labels, r.value);
    },
  });
}

/** The text exposition of every metric of the process. */
export async function metricsText(): Promise<{ contentType: string; body: string }> {
  return { contentType: registry.contentType, body: await registry.metrics() };
}

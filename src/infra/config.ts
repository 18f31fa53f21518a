import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { ConfigError } from './errors.js';
import { LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_PLACEMENT_LABELS, ZONE_PATTERN } from '../domain/policy.js';

/** INGEST_LANES's maximum; ingest looks for lane queues up to it. */
export const MAX_INGEST_LANES = 64;

const Int = (min: number, def: number, description: string) =>
  Type.Integer({ minimum: min, default: def, description });

/**
 * Every setting fogsched reads, with its environment variable and default.
 * Units are in the names. This is the only place that reads `process.env`.
 */
export const ConfigSchema = Type.Object({
  DATABASE_URL: Type.String({ default: 'postgres://root@127.0.0.1:5432/fogsched', description: 'PostgreSQL; the database is created if missing' }),
  AMQP_URL: Type.String({ default: 'amqp://guest:guest@127.0.0.1:5672', description: 'RabbitMQ; a comma-separated list for a cluster (the vhost is the URL path)' }),
  DATABASE_PASSWORD_FILE: Type.String({ default: '', description: 'file holding the PostgreSQL password (a Docker secret); put into DATABASE_URL' }),
  AMQP_PASSWORD_FILE: Type.String({ default: '', description: 'file holding the RabbitMQ password (a Docker secret); put into every AMQP_URL' }),
  REDIS_URL: Type.String({ default: 'redis://127.0.0.1:6379' }),
  API_KEYS: Type.String({
    default: '',
    description:
      'API keys, comma-separated, each `key` (tenant default, operator), `tenant:key` (operator) or `tenant:role:key` (role submitter, operator or auditor); with no key and no JWT setting /v1 is open',
  }),
  API_KEYS_FILE: Type.String({ default: '', description: 'file with more API keys, one per line (a Docker secret)' }),
  JWT_SECRET: Type.String({ default: '', description: 'HS256 secret of JWT bearer tokens (at least 32 characters); may be set beside JWT_JWKS_URL' }),
  JWT_SECRET_FILE: Type.String({ default: '', description: 'file holding JWT_SECRET (a Docker secret)' }),
  JWT_JWKS_URL: Type.String({ default: '', description: 'JWKS of an OIDC provider: JWT bearer tokens signed RS256 or ES256 by one of its keys; needs JWT_ISSUER and JWT_AUDIENCE' }),
  JWT_ISSUER: Type.String({ default: '', description: 'the `iss` every JWT must carry (required with JWT_JWKS_URL)' }),
  JWT_AUDIENCE: Type.String({ default: '', description: 'comma-separated; a JWT must name one of them in `aud` (required with JWT_JWKS_URL)' }),
  JWT_TENANT_CLAIM: Type.String({ default: 'tenant', description: 'claim holding the tenant (a dotted path reaches into objects)' }),
  JWT_ROLE_CLAIM: Type.String({ default: 'role', description: 'claim holding the role: submitter, operator or auditor (a string, or an array with exactly one of them)' }),
  TENANT_SUBMIT_RATE: Type.Number({ minimum: 0, default: 0, description: 'tasks per second each tenant may submit (each task of a batch counts); 0 means unlimited' }),
  TENANT_SUBMIT_BURST: Int(0, 0, 'tasks a tenant may submit at once above the rate (token bucket size); 0 means twice TENANT_SUBMIT_RATE'),
  TENANT_MAX_ACTIVE_TASKS: Int(0, 0, 'scheduled + queued + running + retrying tasks a tenant may have; a submit past it is refused; 0 means unlimited'),
  TENANT_ACTIVE_REFRESH_MS: Int(100, 2000, 'the shared active-task counter of a tenant is re-counted from PostgreSQL this often (how soon finished tasks free the cap)'),
  HOST: Type.String({ default: '127.0.0.1', description: 'address the API listens on' }),
  PORT: Int(0, 8080, 'port the API listens on'),
  // --- operations (issue 17): health, readiness and Prometheus metrics of every role ---
  OPS_PORT: Int(0, 9464, 'port of the ops server (/healthz, /readyz, /metrics) on HOST, one per process; 0 picks a free port and logs it'),
  METRICS_TENANTS: Type.String({ default: '', description: 'comma-separated tenants that get their own tenant label in metrics; every other tenant is counted as other' }),
  METRICS_TASK_TYPES: Type.String({ default: 'noop,sleep,fail,flaky,echo,checksum,crash,spin', description: 'comma-separated task types that get their own type label in metrics (default: the built-in types); every other type is counted as other' }),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), { default: 'info' }),
  AMQP_PREFIX: Type.String({ default: '', description: 'prefix for every exchange and queue name (isolates test runs and tenants of one vhost)' }),
  REDIS_PREFIX: Type.String({ default: '' }),
  TIERS: Type.String({ default: 'light:0.5:512,medium:0.75:768,heavy:1:1024', description: 'name:maxCpu:maxMemoryMb, lightest first' }),
  TASK_QUEUE_MAX_LENGTH: Int(1, 10000, 'x-max-length of each task queue'),
  TASK_DELIVERY_LIMIT: Int(1, 3, 'x-delivery-limit of each task queue'),
  METRICS_QUEUE_MAX_LENGTH: Int(1, 100000, 'x-max-length of metrics.node'),
  DEFAULT_MAX_ATTEMPTS: Int(1, 3, 'attempts a task gets when it does not say'),
  RETRY_BASE_MS: Int(0, 1000, 'first retry delay'),
  RETRY_FACTOR: Type.Number({ minimum: 1, default: 2 }),
  RETRY_MAX_MS: Int(0, 300000, 'retry delay cap'),
  PG_POOL_MAX: Int(1, 10, 'connections per process'),
  PG_CONNECT_TIMEOUT_MS: Int(100, 3000, 'give up connecting to PostgreSQL after this'),
  PG_STATEMENT_TIMEOUT_MS: Int(0, 15000, 'statement_timeout of every session'),
  SUBMIT_MAX_BATCH: Int(1, 500, 'most submits the group commit puts in one transaction'),
  SUBMIT_QUEUE_MAX: Int(1, 10000, 'submits waiting for the group commit (tasks of batches in flight count too); past it a submit is 503 with Retry-After'),
  API_BODY_LIMIT_BYTES: Int(1024, 4194304, 'largest request body the API reads (413 above it)'),
  MAX_PAYLOAD_BYTES: Int(2, 262144, "largest task payload (or schedule template payload) as JSON (413 above it)"),
  API_REQUEST_TIMEOUT_MS: Int(0, 30000, 'a request must arrive whole within this (408); 0 = no limit'),
  API_CONNECTION_TIMEOUT_MS: Int(0, 120000, 'an idle socket is closed after this; keep it above API_KEEP_ALIVE_TIMEOUT_MS; 0 = never'),
  API_KEEP_ALIVE_TIMEOUT_MS: Int(1, 72000, 'an idle keep-alive connection is closed after this (above a load balancer idle timeout of 60 s)'),
  API_MAX_REQUESTS_PER_SOCKET: Int(0, 0, 'requests served on one connection before it is closed; 0 = no limit'),
  SSE_MAX_CONNECTIONS_PER_TENANT: Int(1, 20, 'open server-sent event streams (GET /v1/events, /v1/tasks/:id/events) one tenant may hold on one api process; 429 TOO_MANY_STREAMS past it'),
  SSE_HEARTBEAT_MS: Int(100, 15000, 'a `: hb` comment line on every event stream this often'),
  SSE_STALL_TIMEOUT_MS: Int(100, 30000, 'an event-stream client that takes nothing from its full write buffer for this long is dropped (event: dropped)'),
  SSE_MAX_BUFFER_BYTES: Int(1024, 1048576, "an event-stream client whose socket write buffer holds more than this is dropped (event: dropped)"),
  SSE_POLL_MS: Int(50, 1000, 'event streams look at the log this often even without a notification (the safe horizon can move without one)'),
  TENANT_MAX_SCHEDULES: Int(1, 1000, 'schedules one tenant may have (not deleted); counted in PostgreSQL; 409 above it'),
  SCHEDULE_MIN_INTERVAL_MS: Int(0, 1000, 'a cron whose runs come closer than this is refused (400)'),
  RELAY_BATCH_SIZE: Int(1, 500, 'outbox rows claimed per round'),
  RELAY_POLL_INTERVAL_MS: Int(10, 1000, 'poll period besides LISTEN/NOTIFY'),
  RELAY_RETRY_MAX_MS: Int(10, 30000, 'cap of the relay backoff when the broker fails'),
  // --- relay leadership lease (issue 15.6) ---
  RELAY_LEASE_MS: Int(1000, 5000, 'lease of the publishing relay (table relay_lease), renewed every third of it: a leader that cannot renew within it stops publishing, a standby takes over once it expired; also the statement_timeout of relay sessions'),
  INGEST_BATCH_SIZE: Int(1, 500, 'messages per ingest transaction'),
  INGEST_FLUSH_MS: Int(0, 5, 'wait this long for a batch to fill'),
  INGEST_LANES: Type.Integer({ minimum: 0, maximum: MAX_INGEST_LANES, default: 4, description: "result lanes: quorum queues results.lane.<i>, one active consumer each, chosen by a hash of the task id; an ingest process applies its lanes in parallel and ingest replicas share them. Every role must have the same value; 0 = the one results queue" }),
  // --- ingest error handling (issue 15): transient database errors are retried, never dead-lettered ---
  INGEST_RETRY_MAX_MS: Int(10, 10000, 'cap of the ingest backoff (exponential, jittered) between tries of a batch after a transient database error'),
  INGEST_UNKNOWN_ERROR_LIMIT: Int(1, 5, 'consecutive failures of a batch on an unclassified error before ingest isolates its messages like a permanent error'),
  METRICS_RETENTION_HOURS: Type.Number({ minimum: 0, default: 24, description: 'node_metrics rows older than this are deleted' }),
  SCHEDULER_POLL_INTERVAL_MS: Int(10, 1000, 'longest the scheduler sleeps between looks for due schedules'),
  SCHEDULER_MISFIRE_GRACE_MS: Int(0, 60000, 'a run later than this is missed (the catch-up policy decides)'),
  FOG_NODE_ID: Type.String({ default: '' , description: 'defaults to <hostname>-<pid>' }),
  FOG_NODE_TIER: Type.String({ default: 'light' }),
  FOG_NODE_SLOTS: Int(0, 0, 'tasks a fog node runs at once; 0 derives it from the tier memory (maxMemoryMb / 64, e.g. light 8, heavy 16)'),
  FOG_NODE_PREFETCH: Int(0, 0, 'unacked deliveries per queue; 0 means the slot count'),
  FOG_NODE_HANDLERS: Type.String({ default: '', description: 'path of a module whose exports are extra handlers' }),
  FOG_NODE_GRACE_MS: Int(0, 10000, 'how long SIGTERM waits for running tasks'),
  FOG_NODE_RESULT_FLUSH_MS: Int(0, 2, 'result records are batched for this long'),
  FOG_NODE_METRICS_INTERVAL_MS: Int(100, 5000, 'metric sample period'),
  FOG_NODE_AGING_MS: Int(0, 2000, 'a lower-priority task waiting longer than this goes first'),
  FOG_NODE_WORKER_MEMORY_MB: Int(16, 256, 'heap limit of a worker thread whose task message has no memoryMb (older versions); a task runs with its resources.memoryMb'),
  PROGRESS_MIN_INTERVAL_MS: Int(0, 1000, 'a fog node sends at most one TaskProgressed per running task per this many ms (the last report is always sent)'),
  COORDINATOR_INTERVAL_MS: Int(100, 30000, 'the coordinator probes every broker and refreshes its heartbeat key this often'),
  COORDINATOR_LEASE_MS: Int(300, 15000, 'leader lease of the coordinator (SET NX PX), renewed every third of it'),
  COORDINATOR_BROKERS: Type.String({ default: '', description: 'node=amqp-url,... brokers the coordinator probes; empty means AMQP_URL with names rabbit@<host>' }),
  BROKER_HEARTBEAT_TTL_MS: Int(100, 90000, 'TTL of rabbitmq:node:{node}:heartbeat; a member whose key expired leaves the cluster set'),
  FOG_HEARTBEAT_INTERVAL_MS: Int(100, 10000, 'a fog node refreshes fog:node:{id} this often'),
  FOG_HEARTBEAT_TTL_MS: Int(100, 30000, 'TTL of fog:node:{id}; the coordinator reaps a node whose hash expired'),

  // --- tracing (issue 17, docs/tracing.md): the standard OpenTelemetry variables. These decide
  // whether `start` runs the SDK at all; the SDK reads the others (protocol, headers, sampler,
  // OTEL_BSP_*) from the environment itself.
  OTEL_TRACES_EXPORTER: Type.String({ default: '', description: 'otlp, console, zipkin or none; empty with no OTLP endpoint set: tracing off (no SDK loaded)' }),
  OTEL_EXPORTER_OTLP_ENDPOINT: Type.String({ default: '', description: 'OTLP collector base URL (e.g. http://tempo:4318); set: tracing on (OTLP)' }),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: Type.String({ default: '', description: 'OTLP traces URL (full, e.g. http://jaeger:4318/v1/traces); set: tracing on (OTLP)' }),
  OTEL_SDK_DISABLED: Type.String({ default: '', description: 'true: tracing off whatever else is set' }),
  OTEL_SERVICE_NAME: Type.String({ default: '', description: 'service.name of the spans; empty: fogsched-<roles> (fogsched when every role runs)' }),
  OTEL_RESOURCE_ATTRIBUTES: Type.String({ default: '', description: 'key=value,... resource attributes of the spans' }),

  // --- fog node: outputs (issue 15) ---
  // A fog node checks each handler output before it publishes it: an output PostgreSQL's jsonb
  // cannot store (U+0000, not JSON) or larger than this is reported as failed `output-not-storable`.
  // At most 64 MiB, so a result message always stays below RabbitMQ's max_message_size.
  FOG_NODE_MAX_OUTPUT_BYTES: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, default: 1024 * 1024, description: 'largest handler output (its JSON, in bytes) a fog node reports' }),

  // --- placement by zone and labels (issue 20, docs/deploy.md) ---
  FOG_NODE_ZONE: Type.String({ default: '', description: "the fog node's zone (site), e.g. site-a; it consumes its zone's queues besides its tier's; empty: none" }),
  FOG_NODE_LABELS: Type.String({ default: '', description: "the fog node's labels, key=value,... (e.g. gpu=true,camera=yes); it consumes the label classes whose labels it all carries" }),
  FOG_ZONES: Type.String({ default: '', description: 'zones whose queues the topology (and `topology export`) declares up front, comma-separated; others are declared when first used' }),
  FOG_NODE_PLACEMENT_RESCAN_MS: Int(100, 10000, 'a fog node looks for new placement classes in Redis (fog:placement-classes) this often'),

  // --- autoscaler role (issue 17.5; src/autoscaler/) ---
  AUTOSCALE_TIERS: Type.String({ default: 'light:1:4,medium:0:2,heavy:0:1', description: 'tier:min:max fog-node replicas the autoscaler keeps per tier; tiers not listed are left alone' }),
  AUTOSCALER_BACKEND: Type.Union([Type.Literal('swarm'), Type.Literal('local')], { default: 'local', description: 'swarm: update the replicas of the Swarm services <stack>_fog-<tier> over the Docker socket; local: start and stop fog-node child processes on this machine' }),
  AUTOSCALER_INTERVAL_MS: Int(100, 5000, 'the autoscaler measures and decides this often'),
  AUTOSCALER_LEASE_MS: Int(1000, 10000, 'leader lease of the autoscaler (row autoscaler of relay_lease): one replica scales, the others stand by'),
  AUTOSCALE_UP_DEPTH: Int(1, 10, 'scale up when the ready messages of a tier exceed this many per replica'),
  AUTOSCALE_UP_WAIT_MS: Int(1, 30000, 'scale up when the oldest queued task of a tier has waited longer than this'),
  AUTOSCALE_DOWN_DEPTH: Int(0, 0, 'scale down only when, with one replica fewer, the ready messages per replica would be at most this (below AUTOSCALE_UP_DEPTH: the hysteresis band)'),
  AUTOSCALE_DOWN_WAIT_MS: Int(0, 1000, 'scale down only when the oldest queued task has waited at most this (below AUTOSCALE_UP_WAIT_MS)'),
  AUTOSCALE_UP_COOLDOWN_MS: Int(0, 30000, 'least time between two scale-ups of a tier'),
  AUTOSCALE_DOWN_COOLDOWN_MS: Int(0, 120000, 'least time from any scaling of a tier to its next scale-down'),
  AUTOSCALER_SWARM_STACK: Type.String({ default: 'fogsched', description: 'swarm backend: the stack name; the services are <stack>_fog-<tier>' }),
  AUTOSCALER_DOCKER_SOCKET: Type.String({ default: '/var/run/docker.sock', description: 'swarm backend: the Docker Engine API socket (mount it into the autoscaler container, on a manager node)' }),

  // Running lease and retention (scheduler role; src/schedules/lease.ts, retention.ts).
  RUNNING_LEASE_MS: Int(1, 1_800_000, 'a running task without timeoutMs whose result has not come this long after its start is given up (lease-expired) and retried'),
  RUNNING_LEASE_GRACE_MS: Int(0, 30_000, 'a running task with timeoutMs is given up (lease-expired) this long after its timeout, a task of a lost node (node-lost) this long after the loss'),
  OUTBOX_RETENTION_DAYS: Type.Number({ exclusiveMinimum: 0, default: 7, description: 'published outbox rows older than this are deleted' }),
  INBOX_RETENTION_DAYS: Type.Number({
    exclusiveMinimum: 0,
    default: 7,
    description: "ingest's applied message ids older than this are deleted; keep it above the longest a message can wait to be redelivered",
  }),
  PLACEMENT_MAX_CLASSES: Int(1, 200, 'placement classes (zone, labels, fallback delay) in use at most; each has broker queues nothing deletes, so a submit naming a new class past it is 422 PLACEMENT_CLASS_LIMIT'),
  IDEMPOTENCY_KEY_TTL_HOURS: Type.Number({ exclusiveMinimum: 0, default: 24, description: 'an Idempotency-Key older than this names a new task; deleted after it' }),
});

export type Config = Readonly<Static<typeof ConfigSchema>> & { readonly fogNodeId: string };

/**
 * Parses the environment once; throws ConfigError naming the first bad variable.
 * `DATABASE_PASSWORD_FILE` / `AMQP_PASSWORD_FILE` name secret files (Docker secrets)
 * whose content becomes the password of `DATABASE_URL` / each `AMQP_URL`.
 */
export function loadConfig(
  env: Record<string, string | undefined> = process.env,
  readSecret: (path: string) => string = (path) => readFileSync(path, 'utf8'),
): Config {
  const raw: Record<string, unknown> = {};
  for (const key of Object.keys(ConfigSchema.properties)) {
    const value = env[key];
    if (value !== undefined && value !== '') raw[key] = value;
  }
  const withDefaults = Value.Default(ConfigSchema, Value.Convert(ConfigSchema, raw));
  const error = Value.Errors(ConfigSchema, withDefaults).First();
  if (error) {
    const name = error.path.replace(/^\//, '');
    throw new ConfigError(`invalid configuration: ${name}=${JSON.stringify(env[name])} ${error.message}`);
  }
  const config = injectSecrets(withDefaults as Static<typeof ConfigSchema>, readSecret);
  for (const [name, url] of [['DATABASE_URL', config.DATABASE_URL], ...config.AMQP_URL.split(',').map((u) => ['AMQP_URL', u.trim()]), ['REDIS_URL', config.REDIS_URL]] as const) {
    try {
      new URL(url);
    } catch {
      throw new ConfigError(`invalid configuration: ${name}=${JSON.stringify(url)} is not a URL`);
    }
  }
  parseTiers(config.TIERS);
  parseZoneList('FOG_ZONES', config.FOG_ZONES);
  if (config.FOG_NODE_ZONE) parseZoneList('FOG_NODE_ZONE', config.FOG_NODE_ZONE);
  parseLabels(config.FOG_NODE_LABELS);
  parseBrokers(config.COORDINATOR_BROKERS, config.AMQP_URL);
  parseApiKeys(config.API_KEYS);
  jwtSettings(config);
  return Object.freeze({ ...config, fogNodeId: config.FOG_NODE_ID || `${hostname()}-${process.pid}` });
}

function injectSecrets(config: Static<typeof ConfigSchema>, readSecret: (path: string) => string): Static<typeof ConfigSchema> {
  const read = (name: string, path: string): string => {
    try {
      return readSecret(path).replace(/\r?\n$/, '');
    } catch (error) {
      throw new ConfigError(`invalid configuration: ${name}=${JSON.stringify(path)} cannot be read (${(error as { code?: string }).code ?? (error as Error).message})`);
    }
  };
  const withPassword = (name: string, url: string, password: string): string => {
    try {
      const u = new URL(url);
      u.password = encodeURIComponent(password);
      return u.toString();
    } catch {
      throw new ConfigError(`invalid configuration: ${name}=${JSON.stringify(url)} is not a URL`);
    }
  };
  let { DATABASE_URL, AMQP_URL } = config;
  if (config.DATABASE_PASSWORD_FILE) DATABASE_URL = withPassword('DATABASE_URL', DATABASE_URL, read('DATABASE_PASSWORD_FILE', config.DATABASE_PASSWORD_FILE));
  if (config.AMQP_PASSWORD_FILE) {
    const password = read('AMQP_PASSWORD_FILE', config.AMQP_PASSWORD_FILE);
    AMQP_URL = AMQP_URL.split(',').map((u) => withPassword('AMQP_URL', u.trim(), password)).join(',');
  }
  let { API_KEYS } = config;
  if (config.API_KEYS_FILE) {
    const lines = read('API_KEYS_FILE', config.API_KEYS_FILE).split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    API_KEYS = [API_KEYS, ...lines].filter(Boolean).join(',');
  }
  let { JWT_SECRET } = config;
  if (config.JWT_SECRET_FILE) JWT_SECRET = read('JWT_SECRET_FILE', config.JWT_SECRET_FILE);
  return { ...config, DATABASE_URL, AMQP_URL, API_KEYS, JWT_SECRET };
}

/** What a credential may do; the routes each declare the role they need (src/api/auth.ts). */
export const API_ROLES = ['submitter', 'operator', 'auditor'] as const;
export type ApiRole = (typeof API_ROLES)[number];

/** A tenant name: also a Redis key part and a log field, so a short plain word. */
export const TENANT_PATTERN = /^[\w.-]{1,100}$/;

/**
 * Names no credential may carry: `system` is what fog-node and autoscaler events record as
 * their tenant, so a tenant of that name must not exist.
 */
export const RESERVED_TENANTS: ReadonlySet<string> = new Set(['system']);

export interface ApiKey {
  readonly tenant: string;
  readonly role: ApiRole;
  readonly key: string;
}

/** A key in this shape is taken for a JWT on the wire (src/api/auth.ts), so none may look like one. */
export const JWT_SHAPE = /^eyJ[\w-]*\.[\w-]*\.[\w-]*$/;

/**
 * API keys, comma-separated: `key` (tenant `default`, operator), `tenant:key` (operator) or
 * `tenant:role:key`. An entry is read as `tenant:role:key` only when its second field is exactly
 * `submitter`, `operator` or `auditor`; otherwise everything after the first colon is the key
 * (so a key may contain colons, but may not start with a role name and a colon). A key shorter
 * than 16 characters, one shaped like a JWT, or one listed twice is refused.
 */
export function parseApiKeys(value: string): ApiKey[] {
  const fail = (detail: string) => new ConfigError(`invalid configuration: API_KEYS ${detail}`);
  const keys = value
    .split(',')
    .map((entry) => entry.trim())
    .filter(Boolean)
    .map((entry): ApiKey => {
      const colon = entry.indexOf(':');
      let tenant = 'default';
      let role: ApiRole = 'operator';
      let key = entry;
      if (colon > 0) {
        tenant = entry.slice(0, colon);
        key = entry.slice(colon + 1);
        const second = key.indexOf(':');
        const named = second > 0 ? key.slice(0, second) : '';
        if ((API_ROLES as readonly string[]).includes(named)) {
          role = named as ApiRole;
          key = key.slice(second + 1);
        }
      }
      if (key.length < 16) throw fail(`has a key of ${key.length} characters (tenant ${tenant}); use at least 16`);
      if (!TENANT_PATTERN.test(tenant)) throw fail(`tenant ${JSON.stringify(tenant)} must be letters, digits, '.', '_' or '-'`);
      if (RESERVED_TENANTS.has(tenant)) throw fail(`tenant ${JSON.stringify(tenant)} is reserved for fogsched's own events`);
      if (JWT_SHAPE.test(key)) throw fail(`has a key shaped like a JWT (tenant ${tenant}); such a bearer value is verified as a JWT, never as a key`);
      return { tenant, role, key };
    });
  const seen = new Set<string>();
  for (const k of keys) {
    if (seen.has(k.key)) throw fail(`lists one key twice (tenant ${k.tenant}); a key must name one tenant and role`);
    seen.add(k.key);
  }
  return keys;
}

export interface JwtSettings {
  /** HS256 tokens are checked with `secret`, RS256/ES256 ones with a key of the JWKS at `jwksUrl`; one or both are set. */
  readonly secret: string | null;
  readonly jwksUrl: string | null;
  readonly issuer: string | null;
  readonly audience: readonly string[];
  readonly tenantClaim: string;
  readonly roleClaim: string;
}

/** The JWT settings, or null when JWT bearer tokens are off (neither JWT_SECRET nor JWT_JWKS_URL). */
export function jwtSettings(config: Pick<Config, 'JWT_SECRET' | 'JWT_JWKS_URL' | 'JWT_ISSUER' | 'JWT_AUDIENCE' | 'JWT_TENANT_CLAIM' | 'JWT_ROLE_CLAIM'>): JwtSettings | null {
  const fail = (detail: string) => new ConfigError(`invalid configuration: ${detail}`);
  const secret = config.JWT_SECRET || null;
  const jwksUrl = config.JWT_JWKS_URL || null;
  const audience = config.JWT_AUDIENCE.split(',').map((a) => a.trim()).filter(Boolean);
  if (!secret && !jwksUrl) {
    if (config.JWT_ISSUER || audience.length > 0) throw fail('JWT_ISSUER/JWT_AUDIENCE are set but neither JWT_SECRET(_FILE) nor JWT_JWKS_URL is');
    return null;
  }
  if (secret && secret.length < 32) throw fail(`JWT_SECRET has ${secret.length} characters; HS256 needs at least 32`);
  if (jwksUrl) {
    let url: URL;
    try {
      url = new URL(jwksUrl);
    } catch {
      throw fail(`JWT_JWKS_URL=${JSON.stringify(jwksUrl)} is not a URL`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw fail(`JWT_JWKS_URL=${JSON.stringify(jwksUrl)} must be http(s)`);
    // A provider's keys sign tokens for all its clients: without both checks any of them would do.
    if (!config.JWT_ISSUER || audience.length === 0) throw fail('JWT_JWKS_URL needs JWT_ISSUER and JWT_AUDIENCE');
  }
  for (const name of ['JWT_TENANT_CLAIM', 'JWT_ROLE_CLAIM'] as const) {
    if (!/^[^.\s]+(\.[^.\s]+)*$/.test(config[name])) throw fail(`${name}=${JSON.stringify(config[name])} must be a claim name or a dotted path`);
  }
  return Object.freeze({ secret, jwksUrl, issuer: config.JWT_ISSUER || null, audience: Object.freeze(audience), tenantClaim: config.JWT_TENANT_CLAIM, roleClaim: config.JWT_ROLE_CLAIM });
}

export interface TierSpec {
  readonly name: string;
  readonly maxCpu: number;
  readonly maxMemoryMb: number;
}

/** `light:0.5:512,...` → tier specs, lightest first. */
export function parseTiers(text: string): readonly TierSpec[] {
  const tiers = text.split(',').map((part) => {
    const [name, cpu, mem] = part.trim().split(':');
    const maxCpu = Number(cpu);
    const maxMemoryMb = Number(mem);
    if (!name || !/^[a-z][a-z0-9-]*$/.test(name) || !(maxCpu > 0) || !(maxMemoryMb > 0)) {
      throw new ConfigError(`invalid configuration: TIERS=${JSON.stringify(text)} must be name:maxCpu:maxMemoryMb,...`);
    }
    return Object.freeze({ name, maxCpu, maxMemoryMb });
  });
  return Object.freeze(tiers.sort((a, b) => a.maxCpu - b.maxCpu || a.maxMemoryMb - b.maxMemoryMb));
}

/** `site-a,site-b` → zone names (FOG_ZONES; FOG_NODE_ZONE is a list of one); throws naming `name` when one is not a zone name. */
export function parseZoneList(name: string, text: string): readonly string[] {
  const zones = text.split(',').map((z) => z.trim()).filter(Boolean);
  for (const zone of zones) {
    if (!ZONE_PATTERN.test(zone)) throw new ConfigError(`invalid configuration: ${name}=${JSON.stringify(text)}: ${JSON.stringify(zone)} must match ${ZONE_PATTERN.source}`);
  }
  if (name === 'FOG_NODE_ZONE' && zones.length > 1) throw new ConfigError(`invalid configuration: FOG_NODE_ZONE=${JSON.stringify(text)} names one zone`);
  return Object.freeze([...new Set(zones)]);
}

/** `gpu=true,camera=yes` → labels (FOG_NODE_LABELS); throws naming the variable on a bad pair, a repeated key or too many. */
export function parseLabels(text: string): Readonly<Record<string, string>> {
  const labels: Record<string, string> = {};
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq).trim();
    const value = eq < 0 ? '' : part.slice(eq + 1).trim();
    if (eq < 0 || !LABEL_KEY_PATTERN.test(key) || !LABEL_VALUE_PATTERN.test(value)) {
      throw new ConfigError(
        `invalid configuration: FOG_NODE_LABELS=${JSON.stringify(text)}: ${JSON.stringify(part)} must be key=value (key ${LABEL_KEY_PATTERN.source}, value ${LABEL_VALUE_PATTERN.source})`,
      );
    }
    if (Object.hasOwn(labels, key)) throw new ConfigError(`invalid configuration: FOG_NODE_LABELS=${JSON.stringify(text)} repeats the key ${key}`);
    labels[key] = value;
  }
  if (Object.keys(labels).length > MAX_PLACEMENT_LABELS) throw new ConfigError(`invalid configuration: FOG_NODE_LABELS has more than ${MAX_PLACEMENT_LABELS} labels`);
  return Object.freeze(Object.fromEntries(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
}

export interface BrokerSpec {
  /** Erlang node name, as in `rabbitmq:node:{node}:heartbeat`. */
  readonly node: string;
  readonly url: string;
}

/**
 * `rabbit@a=amqp://...,rabbit@b=amqp://...` → broker specs. Empty text means the
 * AMQP_URL list, each named `rabbit@<host>` (`rabbit@<host>-<port>` when hosts repeat).
 */
export function parseBrokers(text: string, amqpUrl: string): readonly BrokerSpec[] {
  const fail = (detail: string) => new ConfigError(`invalid configuration: COORDINATOR_BROKERS=${JSON.stringify(text)} ${detail}`);
  const entries = text.split(',').map((p) => p.trim()).filter(Boolean);
  let brokers: BrokerSpec[];
  if (entries.length > 0) {
    brokers = entries.map((entry) => {
      const eq = entry.indexOf('=');
      const node = entry.slice(0, eq).trim();
      const url = entry.slice(eq + 1).trim();
      if (eq <= 0 || !/^[^\s=]+$/.test(node)) throw fail('must be node=amqp-url,...');
      try {
        new URL(url);
      } catch {
        throw fail(`has ${JSON.stringify(url)}, not a URL`);
      }
      return Object.freeze({ node, url });
    });
  } else {
    const urls = amqpUrl.split(',').map((u) => u.trim()).filter(Boolean).map((u) => new URL(u));
    const hosts = urls.map((u) => u.hostname);
    brokers = urls.map((u) => {
      const unique = hosts.filter((h) => h === u.hostname).length === 1;
      return Object.freeze({ node: unique ? `rabbit@${u.hostname}` : `rabbit@${u.hostname}-${u.port || 5672}`, url: u.toString() });
    });
  }
  if (new Set(brokers.map((b) => b.node)).size !== brokers.length) throw fail('names a node twice');
  return Object.freeze(brokers);
}

/** Fog-node replicas the autoscaler keeps for one tier. */
export interface AutoscaleTier {
  readonly tier: string;
  readonly min: number;
  readonly max: number;
}

/** `light:1:4,medium:0:2` → per-tier limits; every tier must be one of TIERS, each once, 0 <= min <= max. */
export function parseAutoscaleTiers(text: string, tiers: readonly TierSpec[]): readonly AutoscaleTier[] {
  const fail = (detail: string) => new ConfigError(`invalid configuration: AUTOSCALE_TIERS=${JSON.stringify(text)} ${detail}`);
  const entries = text.split(',').map((p) => p.trim()).filter(Boolean);
  if (entries.length === 0) throw fail('must be tier:min:max,... (e.g. light:1:4,medium:0:2)');
  const seen = new Set<string>();
  return Object.freeze(
    entries.map((entry) => {
      const parts = entry.split(':');
      const [tier, minText, maxText] = parts;
      if (parts.length !== 3 || !tier || !/^\d+$/.test(minText ?? '') || !/^\d+$/.test(maxText ?? '')) throw fail(`has ${JSON.stringify(entry)}: each entry must be tier:min:max with whole numbers`);
      const min = Number(minText);
      const max = Number(maxText);
      if (!tiers.some((t) => t.name === tier)) throw fail(`names tier ${tier}; TIERS has ${tiers.map((t) => t.name).join(', ')}`);
      if (seen.has(tier)) throw fail(`names tier ${tier} twice`);
      if (max < 1 || min > max) throw fail(`has ${JSON.stringify(entry)}: need 0 <= min <= max and max >= 1`);
      seen.add(tier);
      return Object.freeze({ tier, min, max });
    }),
  );
}

/** Checked when the autoscaler role starts (other roles do not care). The hysteresis band must be a band: the scale-down marks below the scale-up marks. */
export function checkAutoscaleThresholds(config: Pick<Static<typeof ConfigSchema>, 'AUTOSCALE_UP_DEPTH' | 'AUTOSCALE_DOWN_DEPTH' | 'AUTOSCALE_UP_WAIT_MS' | 'AUTOSCALE_DOWN_WAIT_MS'>): void {
  if (config.AUTOSCALE_DOWN_DEPTH >= config.AUTOSCALE_UP_DEPTH) {
    throw new ConfigError(`invalid configuration: AUTOSCALE_DOWN_DEPTH=${config.AUTOSCALE_DOWN_DEPTH} must be below AUTOSCALE_UP_DEPTH=${config.AUTOSCALE_UP_DEPTH}`);
  }
  if (config.AUTOSCALE_DOWN_WAIT_MS >= config.AUTOSCALE_UP_WAIT_MS) {
    throw new ConfigError(`invalid configuration: AUTOSCALE_DOWN_WAIT_MS=${config.AUTOSCALE_DOWN_WAIT_MS} must be below AUTOSCALE_UP_WAIT_MS=${config.AUTOSCALE_UP_WAIT_MS}`);
  }
}

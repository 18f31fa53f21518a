import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { ConfigError } from './errors.js';

/**
 * Every setting fogsched reads, with its environment variable and default.
 * Units are in the names. This is the only place that reads `process.env`.
 */
const Int = (min: number, def: number, description: string) =>
  Type.Integer({ minimum: min, default: def, description });

export const ConfigSchema = Type.Object({
  DATABASE_URL: Type.String({ default: 'postgres://root@127.0.0.1:5432/fogsched', description: 'PostgreSQL; the database is created if missing' }),
  AMQP_URL: Type.String({ default: 'amqp://guest:guest@127.0.0.1:5672', description: 'RabbitMQ; a comma-separated list for a cluster (the vhost is the URL path)' }),
  DATABASE_PASSWORD_FILE: Type.String({ default: '', description: 'file holding the PostgreSQL password (a Docker secret); put into DATABASE_URL' }),
  AMQP_PASSWORD_FILE: Type.String({ default: '', description: 'file holding the RabbitMQ password (a Docker secret); put into every AMQP_URL' }),
  REDIS_URL: Type.String({ default: 'redis://127.0.0.1:6379' }),
  API_KEYS: Type.String({
    default: '',
    description: 'API keys, comma-separated, each `key` (tenant default) or `tenant:key`; with none (and no API_KEYS_FILE) /v1 needs no key',
  }),
  API_KEYS_FILE: Type.String({ default: '', description: 'file with more API keys, one per line (a Docker secret)' }),
  HOST: Type.String({ default: '127.0.0.1', description: 'address the API listens on' }),
  PORT: Int(0, 8080, 'port the API listens on'),
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
  RELAY_BATCH_SIZE: Int(1, 500, 'outbox rows claimed per round'),
  RELAY_POLL_INTERVAL_MS: Int(10, 1000, 'poll period besides LISTEN/NOTIFY'),
  RELAY_RETRY_MAX_MS: Int(10, 30000, 'cap of the relay backoff when the broker fails'),
  INGEST_BATCH_SIZE: Int(1, 500, 'messages per ingest transaction'),
  INGEST_FLUSH_MS: Int(0, 5, 'wait this long for a batch to fill'),
  METRICS_RETENTION_HOURS: Type.Number({ minimum: 0, default: 24, description: 'node_metrics rows older than this are deleted' }),
  SCHEDULER_POLL_INTERVAL_MS: Int(10, 1000, 'longest the scheduler sleeps between looks for due schedules'),
  SCHEDULER_MISFIRE_GRACE_MS: Int(0, 60000, 'a run later than this is missed (the catch-up policy decides)'),
  FOG_NODE_ID: Type.String({ default: '' , description: 'defaults to <hostname>-<pid>' }),
  FOG_NODE_TIER: Type.String({ default: 'light' }),
  FOG_NODE_SLOTS: Int(1, 32, 'tasks a fog node runs at once'),
  FOG_NODE_PREFETCH: Int(0, 0, 'unacked deliveries per queue; 0 means the slot count'),
  FOG_NODE_HANDLERS: Type.String({ default: '', description: 'path of a module whose exports are extra handlers' }),
  FOG_NODE_GRACE_MS: Int(0, 10000, 'how long SIGTERM waits for running tasks'),
  FOG_NODE_RESULT_FLUSH_MS: Int(0, 2, 'result records are batched for this long'),
  FOG_NODE_METRICS_INTERVAL_MS: Int(100, 5000, 'metric sample period'),
  FOG_NODE_AGING_MS: Int(0, 2000, 'a lower-priority task waiting longer than this goes first'),
  FOG_NODE_WORKER_MEMORY_MB: Int(16, 256, 'heap limit of a worker thread'),
  COORDINATOR_INTERVAL_MS: Int(100, 30000, 'the coordinator probes every broker and refreshes its heartbeat key this often'),
  COORDINATOR_LEASE_MS: Int(300, 15000, 'leader lease of the coordinator (SET NX PX), renewed every third of it'),
  COORDINATOR_BROKERS: Type.String({ default: '', description: 'node=amqp-url,... brokers the coordinator probes; empty means AMQP_URL with names rabbit@<host>' }),
  BROKER_HEARTBEAT_TTL_MS: Int(100, 90000, 'TTL of rabbitmq:node:{node}:heartbeat; a member whose key expired leaves the cluster set'),
  FOG_HEARTBEAT_INTERVAL_MS: Int(100, 10000, 'a fog node refreshes fog:node:{id} this often'),
  FOG_HEARTBEAT_TTL_MS: Int(100, 30000, 'TTL of fog:node:{id}; the coordinator reaps a node whose hash expired'),

  // Running lease and retention (scheduler role; src/schedules/lease.ts, retention.ts).
  RUNNING_LEASE_MS: Int(1, 1_800_000, 'a running task without timeoutMs whose result has not come this long after its start is given up (lease-expired) and retried'),
  RUNNING_LEASE_GRACE_MS: Int(0, 30_000, 'a running task with timeoutMs is given up (lease-expired) this long after its timeout, a task of a lost node (node-lost) this long after the loss'),
  OUTBOX_RETENTION_DAYS: Type.Number({ exclusiveMinimum: 0, default: 7, description: 'published outbox rows older than this are deleted' }),
  INBOX_RETENTION_DAYS: Type.Number({
    exclusiveMinimum: 0,
    default: 7,
    description: "ingest's applied message ids older than this are deleted; keep it above the longest a message can wait to be redelivered",
  }),
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
  parseBrokers(config.COORDINATOR_BROKERS, config.AMQP_URL);
  parseApiKeys(config.API_KEYS);
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
  return { ...config, DATABASE_URL, AMQP_URL, API_KEYS };
}

export interface ApiKey {
  readonly tenant: string;
  readonly key: string;
}

/** `key` or `tenant:key`, comma-separated; a key shorter than 16 characters is refused. */
export function parseApiKeys(value: string): ApiKey[] {
  return value
    .split(',')
    .map((entry) => entry.trim())
    .filter(Boolean)
    .map((entry) => {
      const colon = entry.indexOf(':');
      const tenant = colon > 0 ? entry.slice(0, colon) : 'default';
      const key = colon > 0 ? entry.slice(colon + 1) : entry;
      if (key.length < 16) throw new ConfigError(`invalid configuration: API_KEYS has a key of ${key.length} characters (tenant ${tenant}); use at least 16`);
      if (!/^[\w.-]{1,100}$/.test(tenant)) throw new ConfigError(`invalid configuration: API_KEYS tenant ${JSON.stringify(tenant)} must be letters, digits, '.', '_' or '-'`);
      return { tenant, key };
    });
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

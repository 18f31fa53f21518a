import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
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
  REDIS_URL: Type.String({ default: 'redis://127.0.0.1:6379' }),
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
});

export type Config = Readonly<Static<typeof ConfigSchema>> & { readonly fogNodeId: string };

/** Parses the environment once; throws ConfigError naming the first bad variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
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
  const config = withDefaults as Static<typeof ConfigSchema>;
  for (const [name, url] of [['DATABASE_URL', config.DATABASE_URL], ...config.AMQP_URL.split(',').map((u) => ['AMQP_URL', u.trim()]), ['REDIS_URL', config.REDIS_URL]] as const) {
    try {
      new URL(url);
    } catch {
      throw new ConfigError(`invalid configuration: ${name}=${JSON.stringify(url)} is not a URL`);
    }
  }
  parseTiers(config.TIERS);
  return Object.freeze({ ...config, fogNodeId: config.FOG_NODE_ID || `${hostname()}-${process.pid}` });
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

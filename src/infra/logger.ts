import { AsyncLocalStorage } from 'node:async_hooks';
import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/** Fields every log line written inside `withLogFields` carries (a task's `task_id`, `trace_id`). */
export interface LogFields {
  readonly trace_id?: string;
  readonly task_id?: string;
}

const logFields = new AsyncLocalStorage<LogFields>();

/** Runs `fn` so that every log line it writes (in any role's logger) carries `fields`. */
export function withLogFields<T>(fields: LogFields, fn: () => T): T {
  return logFields.run(fields, fn);
}

/**
 * The root logger; roles take children (`logger.child({ role: 'relay' })`). Secrets are
 * redacted: credentials and cookies in request headers (a JWT travels in `Authorization`).
 */
export function createLogger(level: string, base: Record<string, unknown> = {}, destination?: DestinationStream): Logger {
  const options: LoggerOptions = {
    level,
    base: { pid: process.pid, ...base },
    // A new object each line: pino merges the line's own fields into what the mixin returns.
    mixin: () => {
      const fields = logFields.getStore();
      return fields ? { ...fields } : {};
    },
    redact: {
      paths: [
        'req.headers.authorization',
        'req.headers["x-api-key"]',
        'req.headers.cookie',
        'res.headers["set-cookie"]',
        '*.password',
        'config.DATABASE_URL',
        'config.AMQP_URL',
      ],
      censor: '[redacted]',
    },
  };
  return destination ? pino(options, destination) : pino(options);
}

/** A URL fit for a log line or an error message: its password replaced. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(invalid url)';
  }
}

import { pino, type Logger } from 'pino';

export type { Logger };

/** The root logger; roles take children (`logger.child({ role: 'relay' })`). Secrets are redacted. */
export function createLogger(level: string, base: Record<string, unknown> = {}): Logger {
  return pino({
    level,
    base: { pid: process.pid, ...base },
    redact: { paths: ['req.headers.authorization', 'req.headers["x-api-key"]', '*.password', 'config.DATABASE_URL', 'config.AMQP_URL'], censor: '[redacted]' },
  });
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

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from './logger.js';
import { processHealth, type HealthTracker } from './health.js';
import { enableDefaultMetrics, metricsText } from './metrics.js';

/**
 * The ops port of a process (OPS_PORT, default 9464): `/healthz`, `/readyz` and `/metrics` for
 * every role the process runs, on plain node:http (a fog-node process loads no web framework).
 * Meant for Prometheus and the container health check, not for clients: it takes no credentials
 * and shows no error text (names and ok only, like the api's public `/readyz`).
 *
 * | path | 200 | 503 |
 * |---|---|---|
 * | `/healthz` | every loop made progress within its interval (see health.ts) | a loop stalled |
 * | `/readyz` | every critical dependency answers (non-critical ones failing: `degraded`) | a critical one does not |
 * | `/metrics` | Prometheus text format | — |
 */

/** A dependency a role needs; each role adds its own (PostgreSQL, the broker, Redis). */
export interface ReadinessCheck {
  readonly name: string;
  /** Critical checks make /readyz fail; the others only report `degraded`. */
  readonly critical: boolean;
  check(): Promise<void>;
}

const checks = new Set<ReadinessCheck>();

/** Adds a check to the process's `/readyz`; the returned function removes it (on the role's stop). */
export function addReadinessCheck(check: ReadinessCheck): () => void {
  checks.add(check);
  return () => checks.delete(check);
}

/** How long one readiness check may take before it counts as failed. */
const CHECK_TIMEOUT_MS = 2000;

export interface ReadinessResult {
  readonly status: 'ready' | 'degraded' | 'unavailable';
  readonly checks: Record<string, { ok: boolean; critical: boolean }>;
}

/** Runs every registered check (in parallel, each within CHECK_TIMEOUT_MS); a failure's text goes to the log once per change. */
export async function readiness(logger: Logger, failing: Set<string>): Promise<ReadinessResult> {
  const list = [...checks];
  const names = uniqueNames(list.map((c) => c.name));
  const results = await Promise.all(
    list.map(async (c, i) => {
      const name = names[i] as string;
      try {
        await withTimeout(c.check(), CHECK_TIMEOUT_MS);
        if (failing.delete(name)) logger.info({ check: name }, 'readiness check ok again');
        return [name, { ok: true, critical: c.critical }] as const;
      } catch (error) {
        if (!failing.has(name)) logger.warn({ check: name, err: error instanceof Error ? error.message : String(error) }, 'readiness check failed');
        failing.add(name);
        return [name, { ok: false, critical: c.critical }] as const;
      }
    }),
  );
  const down = results.some(([, r]) => !r.ok && r.critical);
  const degraded = results.some(([, r]) => !r.ok);
  const byName: Record<string, { ok: boolean; critical: boolean }> = {};
  for (const [name, r] of results) byName[name] = r;
  return { status: down ? 'unavailable' : degraded ? 'degraded' : 'ready', checks: byName };
}

function uniqueNames(names: readonly string[]): string[] {
  const seen = new Map<string, number>();
  return names.map((n) => {
    const k = (seen.get(n) ?? 0) + 1;
    seen.set(n, k);
    return k === 1 ? n : `${n}#${k}`;
  });
}

export interface OpsServer {
  /** The port it listens on (the one picked when OPS_PORT is 0); null when it could not listen. */
  readonly port: number | null;
  close(): Promise<void>;
}

export interface OpsServerOptions {
  readonly host: string;
  /** 0 picks a free port (logged). */
  readonly port: number;
  readonly logger: Logger;
  readonly health?: HealthTracker;
}

/**
 * Starts the process's ops server. A port already taken is logged as an error and the process
 * runs on without it (its container health check then fails, which is what should happen).
 */
export async function startOpsServer(options: OpsServerOptions): Promise<OpsServer> {
  const logger = options.logger.child({ component: 'ops' });
  const health = options.health ?? processHealth;
  const failing = new Set<string>();
  enableDefaultMetrics();
  const server = http.createServer((req, res) => {
    void handle(req, res).catch((error: unknown) => {
      logger.error({ err: error }, 'ops request failed');
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    });
  });
  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    switch (path) {
      case '/healthz': {
        const s = health.status();
        json(res, s.healthy ? 200 : 503, { status: s.healthy ? 'ok' : 'stalled', loops: s.loops });
        return;
      }
      case '/readyz': {
        const r = await readiness(logger, failing);
        json(res, r.status === 'unavailable' ? 503 : 200, r);
        return;
      }
      case '/metrics': {
        const m = await metricsText();
        res.writeHead(200, { 'content-type': m.contentType }).end(m.body);
        return;
      }
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: /healthz, /readyz, /metrics\n');
    }
  };
  // Prometheus keeps connections open; an idle one may go, a request gets 10 s.
  server.requestTimeout = 10_000;
  server.keepAliveTimeout = 65_000;
  const port = await new Promise<number | null>((resolve) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      logger.error({ err: error.message, code: error.code, port: options.port }, 'ops server cannot listen: /healthz, /readyz and /metrics are not served');
      resolve(null);
    });
    server.listen(options.port, options.host, () => resolve((server.address() as AddressInfo).port));
  });
  if (port !== null) logger.info({ opsPort: port, url: `http://${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}/metrics` }, 'ops server listening');
  server.unref(); // the roles keep the process alive, not the ops port
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        if (port === null) return resolve();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }).end(JSON.stringify(body));
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

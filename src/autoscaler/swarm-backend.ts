import http from 'node:http';
import type { ScaleBackend } from './backend.js';

export interface SwarmBackendOptions {
  /** The Docker Engine API socket (a manager node's /var/run/docker.sock). */
  readonly socketPath: string;
  /** Stack name: the tier's service is `<stack>_fog-<tier>`. */
  readonly stack: string;
  /** One API call gives up after this (default 10 s). */
  readonly timeoutMs?: number;
}

/** The Docker API answered with an error (its `message` kept), or not at all. */
export class DockerApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'DockerApiError';
  }
}

interface ServiceInspect {
  readonly ID: string;
  readonly Version: { readonly Index: number };
  readonly Spec: { readonly Mode?: { readonly Replicated?: { readonly Replicas?: number } } } & Record<string, unknown>;
}

/** One request to the Docker Engine API over its unix socket; the parsed JSON answer. */
export function dockerRequest(socketPath: string, method: 'GET' | 'POST', path: string, body: unknown, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        socketPath,
        method,
        path,
        // The Host header is required by HTTP/1.1; the daemon ignores its value.
        headers: { Host: 'docker', Accept: 'application/json', ...(payload === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) }) },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown = undefined;
          try {
            json = text ? JSON.parse(text) : undefined;
          } catch {
            json = undefined;
          }
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) return resolve(json);
          const message = (json as { message?: unknown } | undefined)?.message;
          reject(new DockerApiError(status, `Docker API ${method} ${path}: ${status} ${typeof message === 'string' ? message : text.slice(0, 200)}`));
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new DockerApiError(0, `Docker API ${method} ${path}: no answer within ${timeoutMs} ms`)));
    req.on('error', (error) => reject(error instanceof DockerApiError ? error : new DockerApiError(0, `Docker API ${method} ${path}: ${error.message}`)));
    req.end(payload);
  });
}

/**
 * The tier's fog nodes as a Swarm service, `<stack>_fog-<tier>` (deploy/swarm/stack.yml), scaled
 * through the Docker Engine API like `docker service scale`: inspect the service, then update
 * its spec with the new replica count at the version index just read (the daemon refuses an
 * update of a spec that changed in between; the next round reads it again). Paths carry no API
 * version prefix, so the daemon's own version is used (new daemons refuse old prefixes).
 * The autoscaler must run on a manager node with the socket mounted.
 */
export function createSwarmBackend(options: SwarmBackendOptions): ScaleBackend {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const serviceName = (tier: string) => `${options.stack}_fog-${tier}`;
  const inspect = async (tier: string): Promise<ServiceInspect> => {
    const service = (await dockerRequest(options.socketPath, 'GET', `/services/${encodeURIComponent(serviceName(tier))}`, undefined, timeoutMs)) as ServiceInspect;
    if (!service.Spec.Mode?.Replicated) throw new DockerApiError(0, `service ${serviceName(tier)} is not in replicated mode: the autoscaler cannot set its replicas`);
    return service;
  };
  return {
    name: 'swarm',
    async replicas(tier) {
      return (await inspect(tier)).Spec.Mode?.Replicated?.Replicas ?? 0;
    },
    async scale(tier, to) {
      const service = await inspect(tier);
      const spec = { ...service.Spec, Mode: { ...service.Spec.Mode, Replicated: { ...service.Spec.Mode?.Replicated, Replicas: to } } };
      await dockerRequest(options.socketPath, 'POST', `/services/${encodeURIComponent(service.ID)}/update?version=${service.Version.Index}`, spec, timeoutMs);
    },
    close: () => Promise.resolve(),
  };
}

import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createSwarmBackend, DockerApiError } from '../../src/autoscaler/swarm-backend.js';

/**
 * A stand-in for the Docker Engine API on a unix socket: it answers the two calls of
 * `docker service scale` (inspect, update) the way the daemon documents them. This is the
 * Docker API's contract, not a mock of a fogsched service: the test checks the requests we
 * build (method, path, version index, the spec we send back).
 */
interface Seen {
  method: string;
  url: string;
  host: string | undefined;
  contentType: string | undefined;
  body: unknown;
}

let dir: string;
let server: http.Server;
let seen: Seen[];
let version: number;
let spec: Record<string, unknown>;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'docker-api-'));
  seen = [];
  version = 41;
  spec = {
    Name: 'fogsched_fog-light',
    Labels: { 'com.docker.stack.namespace': 'fogsched' },
    TaskTemplate: { ContainerSpec: { Image: 'fogsched/fogsched:0.1.0', Env: ['FOG_NODE_TIER=light'] } },
    Mode: { Replicated: { Replicas: 2 } },
  };
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString();
      seen.push({ method: req.method ?? '', url: req.url ?? '', host: req.headers.host, contentType: req.headers['content-type'], body: text ? JSON.parse(text) : undefined });
      const reply = (status: number, body: unknown) => {
        res.writeHead(status, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      if (req.method === 'GET' && req.url === '/services/fogsched_fog-light') return reply(200, { ID: 'svc123', Version: { Index: version }, Spec: spec });
      if (req.method === 'GET' && req.url === '/services/fogsched_fog-global') return reply(200, { ID: 'svc9', Version: { Index: 1 }, Spec: { Mode: { Global: {} } } });
      if (req.method === 'POST' && req.url?.startsWith('/services/svc123/update')) {
        if (req.url !== `/services/svc123/update?version=${version}`) return reply(500, { message: 'rpc error: code = Unknown desc = update out of sequence' });
        spec = JSON.parse(text) as Record<string, unknown>;
        version++;
        return reply(200, { Warnings: [] });
      }
      reply(404, { message: `service ${req.url?.split('/')[2]} not found` });
    });
  });
  await new Promise<void>((resolve) => server.listen(join(dir, 'docker.sock'), resolve));
});

afterEach(async () => {
  await new Promise((resolve) => server.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

describe('swarm backend (Docker Engine API over a unix socket)', () => {
  it('reads the replicas of <stack>_fog-<tier>', async () => {
    const backend = createSwarmBackend({ socketPath: join(dir, 'docker.sock'), stack: 'fogsched' });
    expect(await backend.replicas('light')).toBe(2);
    expect(seen).toEqual([{ method: 'GET', url: '/services/fogsched_fog-light', host: 'docker', contentType: undefined, body: undefined }]);
  });

  it('updates the service with the version index it read, changing only the replica count', async () => {
    const backend = createSwarmBackend({ socketPath: join(dir, 'docker.sock'), stack: 'fogsched' });
    const before = structuredClone(spec);
    await backend.scale('light', 4);
    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual(['GET /services/fogsched_fog-light', 'POST /services/svc123/update?version=41']);
    expect(seen[1]?.contentType).toBe('application/json');
    expect(seen[1]?.body).toEqual({ ...before, Mode: { Replicated: { Replicas: 4 } } });
    expect(await backend.replicas('light')).toBe(4);
  });

  it('fails with the daemon message for an unknown service or a service not in replicated mode', async () => {
    const backend = createSwarmBackend({ socketPath: join(dir, 'docker.sock'), stack: 'other' });
    await expect(backend.replicas('light')).rejects.toThrow(new DockerApiError(404, 'Docker API GET /services/other_fog-light: 404 service other_fog-light not found'));
    const global = createSwarmBackend({ socketPath: join(dir, 'docker.sock'), stack: 'fogsched' });
    await expect(global.scale('global', 1)).rejects.toThrow(/not in replicated mode/);
  });

  it('fails clearly when the socket is not there', async () => {
    const backend = createSwarmBackend({ socketPath: join(dir, 'missing.sock'), stack: 'fogsched' });
    await expect(backend.replicas('light')).rejects.toThrow(/Docker API GET \/services\/fogsched_fog-light: connect ENOENT/);
  });
});

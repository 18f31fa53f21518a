import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ApiKey } from '../infra/config.js';
import { problem, sendProblem } from './errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The caller's tenant: from its API key, or `default` when the API runs without keys. */
    tenant: string;
  }
}

/**
 * API-key authentication for /v1: `Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys are
 * compared as SHA-256 digests in constant time. With no keys configured every caller is tenant
 * `default` (local use); the API logs a warning at start.
 */
export function apiKeyHook(keys: readonly ApiKey[]) {
  const digests = keys.map((k) => ({ tenant: k.tenant, digest: sha256(k.key) }));
  return async function authenticate(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    request.tenant = 'default';
    if (digests.length === 0 || !request.url.startsWith('/v1/')) return;
    const presented = keyOf(request);
    if (!presented) return unauthorized(reply, 'this API needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`');
    const digest = sha256(presented);
    // Every key is compared, so the time taken does not tell which one nearly matched.
    let tenant: string | null = null;
    for (const k of digests) if (timingSafeEqual(k.digest, digest) && tenant === null) tenant = k.tenant;
    if (tenant === null) return unauthorized(reply, 'the API key is not valid');
    request.tenant = tenant;
  };
}

function keyOf(request: FastifyRequest): string | null {
  const header = request.headers.authorization;
  if (typeof header === 'string') {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (match) return match[1] as string;
  }
  const key = request.headers['x-api-key'];
  return typeof key === 'string' && key.length > 0 ? key : null;
}

function unauthorized(reply: FastifyReply, detail: string): FastifyReply {
  reply.header('www-authenticate', 'Bearer realm="fogsched"');
  return sendProblem(reply, problem(401, 'UNAUTHORIZED', detail));
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

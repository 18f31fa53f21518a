import type { FastifyRequest } from 'fastify';
import type { Caller } from '../tasks/index.js';

/**
 * Who is calling: the tenant of the request's API key (`default` without keys); `X-Actor` names
 * the person or system for the audit trail.
 */
export function callerOf(request: FastifyRequest): Caller {
  const actor = request.headers['x-actor'];
  return { tenant: request.tenant, actor: typeof actor === 'string' && actor.length > 0 ? actor.slice(0, 200) : 'api', traceId: request.id };
}

import type { FastifyRequest } from 'fastify';
import type { Caller } from '../tasks/index.js';

/**
 * Who is calling. Until API keys land every request is tenant `default`;
 * `X-Actor` names the person or system for the audit trail.
 */
export function callerOf(request: FastifyRequest): Caller {
  const actor = request.headers['x-actor'];
  return { tenant: 'default', actor: typeof actor === 'string' && actor.length > 0 ? actor.slice(0, 200) : 'api', traceId: request.id };
}

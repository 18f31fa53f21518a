import type { FastifyRequest } from 'fastify';
import type { Caller } from '../tasks/index.js';
import { cutText } from './input.js';
import { requestTraceContext } from './request-trace.js';
import { traceMetadata } from '../infra/tracing.js';

/**
 * Who is calling: tenant and actor come from the request's credential (src/api/auth.ts). `X-Actor`
 * cannot change either; it is kept as `onBehalfOf` in the event metadata (the person or system a
 * shared credential acted for, as the caller claims it).
 */
export function callerOf(request: FastifyRequest): Caller {
  const claimed = request.headers['x-actor'];
  const onBehalfOf = typeof claimed === 'string' && claimed.length > 0 ? cutText(claimed, 200) : undefined;
  return {
    tenant: request.principal?.tenant ?? request.tenant,
    actor: request.principal?.actor ?? 'anonymous',
    ...traceMetadata(requestTraceContext(request)),
    ...(onBehalfOf ? { onBehalfOf } : {}),
  };
}

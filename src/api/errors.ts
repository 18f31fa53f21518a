import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { FogschedError } from '../domain/index.js';
import { isConnectionError } from '../infra/postgres.js';

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

export interface ProblemBody {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  instance?: string;
  errors?: { path: string; message: string }[];
  [extra: string]: unknown;
}

export function problem(status: number, code: string, detail: string, extra: Record<string, unknown> = {}): ProblemBody {
  return { type: `urn:fogsched:error:${code.toLowerCase().replace(/_/g, '-')}`, title: TITLES[status] ?? 'Error', status, detail, code, ...extra };
}

export function sendProblem(reply: FastifyReply, body: ProblemBody): FastifyReply {
  return reply.code(body.status).type('application/problem+json').send(body);
}

/**
 * The only place that writes application/problem+json. Known errors keep their
 * status and message; anything else is logged and answered as a bare 500.
 */
export function errorHandler(error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const instance = request.url;
  if (error.validation) {
    const errors = error.validation.map((v) => ({
      path: `${error.validationContext ?? 'body'}${v.instancePath || ''}${v.keyword === 'additionalProperties' ? `/${String((v.params as { additionalProperty?: string }).additionalProperty)}` : ''}`,
      message: v.keyword === 'additionalProperties' ? 'is not a known field' : (v.message ?? 'is invalid'),
    }));
    const detail = errors.map((e) => `${e.path} ${e.message}`).join('; ');
    return sendProblem(reply, problem(400, 'VALIDATION_FAILED', detail, { instance, errors }));
  }
  if (error instanceof FogschedError) {
    if (error.status >= 500) request.log.warn({ err: error }, 'request failed');
    return sendProblem(reply, problem(error.status, error.code, error.message, { instance, ...(error.details ?? {}) }));
  }
  if (isConnectionError(error) || (error as { code?: string }).code === '57014') {
    request.log.warn({ err: error }, 'postgresql unavailable');
    return sendProblem(reply, problem(503, 'SERVICE_UNAVAILABLE', 'postgresql is unavailable; retry later', { instance }));
  }
  const status = error.statusCode ?? 500;
  if (status >= 400 && status < 500) {
    return sendProblem(reply, problem(status, error.code ?? 'BAD_REQUEST', error.message, { instance }));
  }
  request.log.error({ err: error }, 'unhandled error');
  return sendProblem(reply, problem(500, 'INTERNAL', 'internal error; see the server log for request ' + request.id, { instance }));
}

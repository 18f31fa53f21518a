import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyBaseLogger, FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { FogschedError } from '../domain/index.js';
import { isConnectionError } from '../infra/postgres.js';
import { TITLES } from './schemas.js';

export interface ProblemBody {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  instance?: string;
  errors?: { path: string; message: string; code?: string }[];
  [extra: string]: unknown;
}

/**
 * Fastify's own request errors whose code we pass on as it is (each listed in docs/errors.md).
 * Any other 4xx Fastify raises is answered as BAD_REQUEST with its status, so a client never
 * meets a code the documentation does not list.
 */
const FASTIFY_CODES = new Set([
  'FST_ERR_BAD_URL',
  'FST_ERR_CTP_BODY_TOO_LARGE',
  'FST_ERR_CTP_INVALID_MEDIA_TYPE',
  'FST_ERR_CTP_INVALID_CONTENT_LENGTH',
  'FST_ERR_CTP_EMPTY_JSON_BODY',
  'FST_ERR_CTP_INVALID_JSON_BODY',
]);

export function problem(status: number, code: string, detail: string, extra: Record<string, unknown> = {}): ProblemBody {
  return { type: `urn:fogsched:error:${code.toLowerCase().replace(/_/g, '-')}`, title: TITLES[status] ?? STATUS_CODES[status] ?? 'Error', status, detail, code, ...extra };
}

export function sendProblem(reply: FastifyReply, body: ProblemBody): FastifyReply {
  // A problem that says when to come back says it in the header too (RFC 9110 Retry-After).
  if (typeof body.retryAfterSeconds === 'number') reply.header('retry-after', String(body.retryAfterSeconds));
  return reply.code(body.status).type('application/problem+json').send(body);
}

/**
 * The only place that writes application/problem+json. Known errors keep their
 * status and message; anything else is logged and answered as a bare 500.
 * Also Fastify's `frameworkErrors` handler (a bad percent-escape in the URL).
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
  if (error.code === '40P01' || error.code === '40001' || error.code === '55P03') {
    // A deadlock, serialization failure or lock timeout against a concurrent write (an ingest
    // batch releasing the same workflow, say): nothing was written; the same request may succeed now.
    request.log.warn({ err: error }, 'request lost a lock conflict');
    reply.header('retry-after', '1');
    return sendProblem(reply, problem(503, 'SERVICE_UNAVAILABLE', 'a concurrent write conflicted with this request; nothing was written, retry', { instance }));
  }
  if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    // An id of more than 100 characters is no id: the same answer as any other malformed one.
    const errors = [{ path: 'params', message: 'is longer than 100 characters' }];
    return sendProblem(reply, problem(400, 'VALIDATION_FAILED', 'params is longer than 100 characters', { instance, errors }));
  }
  const status = error.statusCode ?? 500;
  if (status >= 400 && status < 500) {
    const code = error.code && FASTIFY_CODES.has(error.code) ? error.code : 'BAD_REQUEST';
    return sendProblem(reply, problem(status, code, error.message, { instance }));
  }
  request.log.error({ err: error }, 'unhandled error');
  return sendProblem(reply, problem(500, 'INTERNAL', 'internal error; see the server log for request ' + request.id, { instance }));
}

/** 404 for a path (or method) no route has. */
export function notFoundHandler(request: FastifyRequest, reply: FastifyReply): FastifyReply {
  return sendProblem(reply, problem(404, 'ROUTE_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`));
}

/**
 * Fastify's `clientErrorHandler`: the request could not be parsed as HTTP (a NUL byte or other
 * bad character in a header, headers over 16 KiB, a request that took longer than
 * requestTimeout), so no route ran. Answered on the raw socket, still as a problem, then closed.
 */
export function clientErrorHandler(this: { log: FastifyBaseLogger }, error: Error & { code?: string }, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, code, detail] =
    error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'REQUEST_TIMEOUT', 'the request was not received in time']
      : error.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'HEADERS_TOO_LARGE', 'the request headers are over 16 KiB']
        : [400, 'BAD_REQUEST', `the request is not valid HTTP (${error.code ?? 'parse error'})`];
  this.log.debug({ err: error.message, code: error.code }, 'client error');
  if (socket.writable) {
    const body = JSON.stringify(problem(status, code, detail));
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nContent-Type: application/problem+json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(error);
}

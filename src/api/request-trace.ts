import type { IncomingMessage } from 'node:http';
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Bindings, ChildLoggerOptions } from 'pino';
import { ATTR, childContext, parseTraceparent, SpanKind, SpanStatusCode, spanTraceContext, startSpan, type Span, type TraceContext } from '../infra/tracing.js';

/**
 * The trace of each HTTP request: the caller's W3C `traceparent` continued, or a new trace.
 * With tracing on, a SERVER span (`POST /v1/tasks`) covers the request and what it writes
 * carries that span's context; with tracing off the context is random (a 128-bit trace id),
 * so trace ids never repeat across replicas or restarts.
 */
interface RequestTrace {
  readonly context: TraceContext;
  readonly span: Span | undefined;
}

const traces = new WeakMap<IncomingMessage, RequestTrace>();

/** Fastify's `genReqId`: starts the request's trace; the request id is its span id (unique, 16 hex digits). */
export function startRequestTrace(req: IncomingMessage): string {
  const incoming = parseTraceparent(req.headers.traceparent);
  const span = startSpan(`HTTP ${req.method ?? ''}`, {
    kind: SpanKind.SERVER,
    ...(incoming ? { parent: incoming } : {}),
    attributes: { [ATTR.role]: 'api', 'http.request.method': req.method ?? '', 'url.path': (req.url ?? '').split('?')[0] ?? '' },
  });
  const context = span ? spanTraceContext(span) : childContext(incoming);
  traces.set(req, { context, span });
  return context.spanId;
}

/** Fastify's `childLoggerFactory`: every log line of a request carries its `trace_id`. */
export function requestLogger(this: FastifyInstance, logger: FastifyBaseLogger, bindings: Bindings, opts: ChildLoggerOptions, req: IncomingMessage): FastifyBaseLogger {
  const t = traces.get(req);
  return logger.child(t ? { ...bindings, trace_id: t.context.traceId } : bindings, opts);
}

/** The trace context of a request (what its events and outbox rows carry). */
export function requestTraceContext(request: FastifyRequest): TraceContext {
  let t = traces.get(request.raw);
  if (!t) {
    // Not started by genReqId (a request built some other way): a trace of its own.
    t = { context: childContext(parseTraceparent(request.headers.traceparent)), span: undefined };
    traces.set(request.raw, t);
  }
  return t.context;
}

/** The task a request is about: on its span and on its remaining log lines (the access log's `request completed`). */
export function noteTask(request: FastifyRequest, reply: FastifyReply, taskId: string): void {
  traces.get(request.raw)?.span?.setAttribute(ATTR.taskId, taskId);
  request.log = request.log.child({ task_id: taskId });
  reply.log = reply.log.child({ task_id: taskId });
}

const TASK_ROUTE = /^\/v1\/tasks\/:id(\/|$)/;

/** Names each request's span by its route, notes the task of /v1/tasks/:id routes, ends the span with the status. */
export function registerRequestTracing(app: FastifyInstance): void {
  app.addHook('onRequest', async (request, reply) => {
    const route = request.routeOptions.url;
    const id = (request.params as { id?: unknown } | undefined)?.id;
    if (route && TASK_ROUTE.test(route) && typeof id === 'string') noteTask(request, reply, id);
    const span = traces.get(request.raw)?.span;
    if (span && route) {
      span.updateName(`${request.method} ${route}`);
      span.setAttribute('http.route', route);
    }
  });
  app.addHook('onResponse', async (request, reply) => {
    const span = traces.get(request.raw)?.span;
    if (!span) return;
    span.setAttribute('http.response.status_code', reply.statusCode);
    if (reply.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    span.end();
  });
  app.addHook('onRequestAbort', async (request) => {
    const span = traces.get(request.raw)?.span;
    if (!span) return;
    span.setStatus({ code: SpanStatusCode.ERROR, message: 'client aborted' });
    span.end();
  });
}

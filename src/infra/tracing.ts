import { randomFillSync } from 'node:crypto';
import { context, SpanKind, SpanStatusCode, trace, TraceFlags, type Attributes, type Context, type Span, type SpanContext } from '@opentelemetry/api';
import type { Logger } from './logger.js';

/**
 * Tracing: a task's W3C trace context travels with it through every process boundary (event
 * metadata, the outbox row's headers, AMQP headers, result records), whether tracing is on or
 * not, so every event and log line of a task carries its trace id. When tracing is on (an
 * exporter is configured by the standard OTEL_* variables, see `tracingWanted`), each role
 * also records a span there: `http` (api), `relay publish`, `fog-node run`, `ingest apply`.
 * When it is off no SDK is loaded and `startSpan` returns undefined at once.
 *
 * Only manual spans: no auto-instrumentation is registered (so nothing has to be loaded before
 * other modules, and the spans of a task are the few named here, not one per SQL statement).
 */

export { SpanKind, SpanStatusCode, type Span };

/** The parts of a W3C `traceparent` header fogsched uses. */
export interface TraceContext {
  /** 32 lowercase hex digits, not all zero. */
  readonly traceId: string;
  /** 16 lowercase hex digits, not all zero. */
  readonly spanId: string;
  readonly sampled: boolean;
}

/** Attribute names of fogsched's spans. */
export const ATTR = Object.freeze({
  role: 'fogsched.role',
  taskId: 'fogsched.task.id',
  attempt: 'fogsched.task.attempt',
  tier: 'fogsched.task.tier',
  taskType: 'fogsched.task.type',
  nodeId: 'fogsched.node.id',
  record: 'fogsched.result.kind',
});

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ZERO_TRACE = '0'.repeat(32);
const ZERO_SPAN = '0'.repeat(16);

/**
 * Reads a `traceparent` (W3C Trace Context level 1); undefined for anything invalid: version
 * ff, an all-zero id, uppercase hex, extra fields on version 00 (a later version may add some).
 */
export function parseTraceparent(value: unknown): TraceContext | undefined {
  if (typeof value !== 'string' || value.length > 512) return undefined;
  const m = TRACEPARENT.exec(value.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags, rest] = m as unknown as [string, string, string, string, string, string | undefined];
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (traceId === ZERO_TRACE || spanId === ZERO_SPAN) return undefined;
  return { traceId, spanId, sampled: (parseInt(flags, 16) & 1) === 1 };
}

/** The `traceparent` of a context (version 00). */
export function formatTraceparent(c: TraceContext): string {
  return `00-${c.traceId}-${c.spanId}-${c.sampled ? '01' : '00'}`;
}

// Random bytes are drawn 4 KiB at a time: one call to the CSPRNG per 170 requests, not per request.
const pool = Buffer.alloc(24 * 170);
let poolAt = pool.length;

/** Random ids, as the W3C spec asks: 128 bits of trace id, 64 of span id (never all zero). */
function randomIds(): { traceId: string; spanId: string } {
  if (poolAt === pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const b = pool.toString('hex', poolAt, poolAt + 24);
  poolAt += 24;
  const traceId = b.slice(0, 32);
  const spanId = b.slice(32);
  return { traceId: traceId === ZERO_TRACE ? `${traceId.slice(0, 31)}1` : traceId, spanId: spanId === ZERO_SPAN ? `${spanId.slice(0, 15)}1` : spanId };
}

/**
 * A context for work that records no span of its own: the parent's trace (or a new random one)
 * with a new span id. A new trace is sampled only when this process records spans.
 */
export function childContext(parent?: TraceContext): TraceContext {
  const ids = randomIds();
  return parent ? { traceId: parent.traceId, spanId: ids.spanId, sampled: parent.sampled } : { ...ids, sampled: enabled };
}

/**
 * The context of work that starts a trace outside any request (a schedule firing, a task
 * written before tracing existed): with tracing on, a span of `name` (ended at once) is its root.
 */
export function newTrace(name: string, attributes?: Attributes): TraceContext {
  const span = startSpan(name, { kind: SpanKind.INTERNAL, ...(attributes ? { attributes } : {}) });
  if (!span) return childContext();
  span.end();
  return spanTraceContext(span);
}

/** The event metadata fields of a trace context (`traceId` is what the audit views read). */
export function traceMetadata(c: TraceContext | undefined): { traceId?: string; traceparent?: string } {
  return c ? { traceId: c.traceId, traceparent: formatTraceparent(c) } : {};
}

// --- the SDK -------------------------------------------------------------------------

let enabled = false;
let tracer = trace.getTracer('fogsched');

/** Whether this process records spans (startTracing started the SDK). */
export function tracingEnabled(): boolean {
  return enabled;
}

/** The OTEL_* settings that decide whether tracing is on (the SDK reads the rest itself). */
export interface TracingSettings {
  readonly OTEL_SDK_DISABLED: string;
  readonly OTEL_TRACES_EXPORTER: string;
  readonly OTEL_EXPORTER_OTLP_ENDPOINT: string;
  readonly OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: string;
  readonly OTEL_SERVICE_NAME: string;
  readonly OTEL_RESOURCE_ATTRIBUTES: string;
}

/**
 * On when an exporter is configured: OTEL_TRACES_EXPORTER names one (other than `none`), or an
 * OTLP endpoint is set (the SDK's default exporter is OTLP). OTEL_SDK_DISABLED=true turns it off.
 */
export function tracingWanted(s: TracingSettings): boolean {
  if (s.OTEL_SDK_DISABLED.trim().toLowerCase() === 'true') return false;
  const exporters = s.OTEL_TRACES_EXPORTER.split(',').map((e) => e.trim()).filter(Boolean);
  if (exporters.includes('none')) return false;
  return exporters.length > 0 || s.OTEL_EXPORTER_OTLP_ENDPOINT.trim() !== '' || s.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.trim() !== '';
}

/**
 * Starts the OpenTelemetry Node SDK when `tracingWanted`, exporting traces only (metrics are
 * Prometheus', logs pino's on stdout); returns its shutdown, which flushes the spans not yet
 * exported. The SDK is imported only then: a process without tracing never loads it.
 * `serviceName` applies unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one.
 */
export async function startTracing(s: TracingSettings, opts: { serviceName: string; logger: Logger }): Promise<() => Promise<void>> {
  if (!tracingWanted(s) || enabled) return async () => {};
  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const named = s.OTEL_SERVICE_NAME.trim() !== '' || /(^|,)\s*service\.name\s*=/.test(s.OTEL_RESOURCE_ATTRIBUTES);
  const sdk = new NodeSDK({
    ...(named ? {} : { serviceName: opts.serviceName }),
    instrumentations: [],
    metricReaders: [],
    logRecordProcessors: [],
  });
  sdk.start();
  enabled = true;
  tracer = trace.getTracer('fogsched');
  opts.logger.info({ exporter: s.OTEL_TRACES_EXPORTER || 'otlp' }, 'tracing on');
  let stopped: Promise<void> | undefined;
  return () =>
    (stopped ??= (async () => {
      enabled = false;
      await sdk.shutdown().catch((error: unknown) => opts.logger.warn({ err: (error as Error).message }, 'tracing shutdown failed'));
    })());
}

export interface SpanOptions {
  readonly kind: SpanKind;
  /** The parent, as a `traceparent` string or context; none: the span starts a new trace. */
  readonly parent?: string | TraceContext;
  readonly attributes?: Attributes;
}

/** Starts a span when tracing is on; undefined (at no cost) when it is off. */
export function startSpan(name: string, opts: SpanOptions): Span | undefined {
  if (!enabled) return undefined;
  const parent = typeof opts.parent === 'string' ? parseTraceparent(opts.parent) : opts.parent;
  return tracer.startSpan(name, { kind: opts.kind, ...(opts.attributes ? { attributes: opts.attributes } : {}) }, parentContext(parent));
}

function parentContext(parent: TraceContext | undefined): Context {
  if (!parent) return context.active();
  const sc: SpanContext = { traceId: parent.traceId, spanId: parent.spanId, traceFlags: parent.sampled ? TraceFlags.SAMPLED : TraceFlags.NONE, isRemote: true };
  return trace.setSpanContext(context.active(), sc);
}

/** A span's own context, to hand on as the parent of what it causes. */
export function spanTraceContext(span: Span): TraceContext {
  const sc = span.spanContext();
  return { traceId: sc.traceId, spanId: sc.spanId, sampled: (sc.traceFlags & 1) === 1 };
}

/** Runs `fn` with `span` as the active span (so spans a handler starts with @opentelemetry/api are its children). */
export function withActiveSpan<T>(span: Span | undefined, fn: () => T): T {
  return span ? context.with(trace.setSpan(context.active(), span), fn) : fn();
}

/** Ends a span with an error status. */
export function failSpan(span: Span | undefined, message: string): void {
  if (!span) return;
  span.setStatus({ code: SpanStatusCode.ERROR, message });
  span.end();
}

import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { childContext, formatTraceparent, newTrace, parseTraceparent, startSpan, SpanKind, traceMetadata, tracingEnabled, tracingWanted, type TracingSettings } from '../../src/infra/tracing.js';
import { resultCommands } from '../../src/ingest/ingest.js';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';

describe('parseTraceparent / formatTraceparent (W3C Trace Context)', () => {
  it('reads a valid header, sampled or not', () => {
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-01`)).toEqual({ traceId: TRACE, spanId: SPAN, sampled: true });
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-00`)).toEqual({ traceId: TRACE, spanId: SPAN, sampled: false });
    // Other flag bits do not make it unsampled.
    expect(parseTraceparent(`00-${TRACE}-${SPAN}-03`)?.sampled).toBe(true);
  });

  it('accepts a later version with more fields, as the spec asks', () => {
    expect(parseTraceparent(`01-${TRACE}-${SPAN}-01-what-comes-next`)).toEqual({ traceId: TRACE, spanId: SPAN, sampled: true });
  });

  it.each([
    ['not a string', 42],
    ['empty', ''],
    ['version ff', `ff-${TRACE}-${SPAN}-01`],
    ['extra fields on version 00', `00-${TRACE}-${SPAN}-01-x`],
    ['all-zero trace id', `00-${'0'.repeat(32)}-${SPAN}-01`],
    ['all-zero span id', `00-${TRACE}-${'0'.repeat(16)}-01`],
    ['uppercase hex', `00-${TRACE.toUpperCase()}-${SPAN}-01`],
    ['short trace id', `00-${TRACE.slice(1)}-${SPAN}-01`],
    ['too long', `01-${TRACE}-${SPAN}-01-${'x'.repeat(600)}`],
  ])('refuses %s', (_, value) => {
    expect(parseTraceparent(value)).toBeUndefined();
  });

  it('round-trips every valid context', () => {
    const hex = (n: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${n}}$`)).filter((s) => /[1-9a-f]/.test(s));
    fc.assert(
      fc.property(hex(32), hex(16), fc.boolean(), (traceId, spanId, sampled) => {
        expect(parseTraceparent(formatTraceparent({ traceId, spanId, sampled }))).toEqual({ traceId, spanId, sampled });
      }),
    );
  });
});

describe('contexts without the SDK (tracing off)', () => {
  it('records nothing: no span, a new trace is not sampled', () => {
    expect(tracingEnabled()).toBe(false);
    expect(startSpan('x', { kind: SpanKind.INTERNAL })).toBeUndefined();
    expect(newTrace('x').sampled).toBe(false);
  });

  it('a child keeps the trace and the sampled flag, with a new span id', () => {
    const parent = { traceId: TRACE, spanId: SPAN, sampled: true };
    const child = childContext(parent);
    expect(child.traceId).toBe(TRACE);
    expect(child.sampled).toBe(true);
    expect(child.spanId).toMatch(/^[0-9a-f]{16}$/);
    expect(child.spanId).not.toBe(SPAN);
  });

  it('new traces are random 128-bit ids that do not repeat', () => {
    const ids = Array.from({ length: 1000 }, () => childContext().traceId);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(new Set(ids).size).toBe(1000);
  });

  it('traceMetadata gives the event metadata fields, nothing for no context', () => {
    expect(traceMetadata({ traceId: TRACE, spanId: SPAN, sampled: true })).toEqual({ traceId: TRACE, traceparent: `00-${TRACE}-${SPAN}-01` });
    expect(traceMetadata(undefined)).toEqual({});
  });
});

describe('tracingWanted (the standard OTEL_* variables)', () => {
  const none: TracingSettings = { OTEL_SDK_DISABLED: '', OTEL_TRACES_EXPORTER: '', OTEL_EXPORTER_OTLP_ENDPOINT: '', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '', OTEL_SERVICE_NAME: '', OTEL_RESOURCE_ATTRIBUTES: '' };
  it('is off unless an exporter or an OTLP endpoint is set', () => {
    expect(tracingWanted(none)).toBe(false);
    expect(tracingWanted({ ...none, OTEL_SERVICE_NAME: 'api' })).toBe(false);
    expect(tracingWanted({ ...none, OTEL_TRACES_EXPORTER: 'otlp' })).toBe(true);
    expect(tracingWanted({ ...none, OTEL_TRACES_EXPORTER: 'console' })).toBe(true);
    expect(tracingWanted({ ...none, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://tempo:4318' })).toBe(true);
    expect(tracingWanted({ ...none, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://jaeger:4318/v1/traces' })).toBe(true);
  });
  it('is off with OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true, whatever else is set', () => {
    expect(tracingWanted({ ...none, OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://tempo:4318' })).toBe(false);
    expect(tracingWanted({ ...none, OTEL_SDK_DISABLED: 'TRUE', OTEL_TRACES_EXPORTER: 'otlp' })).toBe(false);
  });
});

describe('result records carry their trace into the result events', () => {
  const backoff = { baseMs: 1000, factor: 2, maxMs: 60_000 };
  const taskId = '01a21e31-a4be-7207-9e82-378ba88c53f0';
  it('each command gets the trace id and traceparent of its record; a record without one gets none (the task write fills it in)', () => {
    const items = resultCommands(
      {
        nodeId: 'n1',
        tier: 'light',
        records: [
          { kind: 'started', taskId, attempt: 1, at: '2026-01-01T00:00:00.000Z', traceparent: `00-${TRACE}-${SPAN}-01` },
          { kind: 'succeeded', taskId, attempt: 1, startedAt: '2026-01-01T00:00:00.000Z', at: '2026-01-01T00:00:01.000Z', durationMs: 1000, output: null, traceparent: 'garbage' },
        ],
      },
      { backoff, now: '2026-01-01T00:00:02.000Z' },
    );
    expect(items[0]?.metadata).toEqual({ actor: 'node:n1', traceId: TRACE, traceparent: `00-${TRACE}-${SPAN}-01` });
    expect(items[1]?.metadata).toEqual({ actor: 'node:n1' });
  });
});

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, freePort, postJson, spawnFogsched, waitReady, type Spawned } from '../helpers/processes.js';

// Runs the BUILT CLI (bin/fogsched.js → dist/): `npm run build` first.

interface ReceivedSpan {
  readonly service: string;
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string;
  readonly name: string;
  readonly kind: number;
  readonly attributes: Record<string, string | number | boolean>;
}

const receivers: http.Server[] = [];

afterEach(async () => {
  await dropE2eEnvs();
  for (const r of receivers.splice(0)) await new Promise<void>((resolve) => r.close(() => resolve()));
});

/** OTLP/JSON ids are hex; some encoders write base64: either way, lowercase hex. */
function hexId(value: unknown): string {
  if (typeof value !== 'string' || value === '') return '';
  return /^[0-9a-f]+$/i.test(value) && (value.length === 32 || value.length === 16) ? value.toLowerCase() : Buffer.from(value, 'base64').toString('hex');
}

function attributeValue(v: Record<string, unknown>): string | number | boolean {
  if ('stringValue' in v) return v.stringValue as string;
  if ('intValue' in v) return Number(v.intValue);
  if ('doubleValue' in v) return Number(v.doubleValue);
  if ('boolValue' in v) return Boolean(v.boolValue);
  return JSON.stringify(v);
}

/** A small OTLP/HTTP receiver (JSON encoding) on loopback: collects every span exported to it. */
async function otlpReceiver(): Promise<{ endpoint: string; spans: ReceivedSpan[] }> {
  const spans: ReceivedSpan[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url === '/v1/traces') {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        for (const rs of body.resourceSpans ?? []) {
          const resource = Object.fromEntries((rs.resource?.attributes ?? []).map((a: { key: string; value: Record<string, unknown> }) => [a.key, attributeValue(a.value)]));
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              spans.push({
                service: String(resource['service.name']),
                traceId: hexId(s.traceId),
                spanId: hexId(s.spanId),
                parentSpanId: hexId(s.parentSpanId),
                name: s.name,
                kind: s.kind,
                attributes: Object.fromEntries((s.attributes ?? []).map((a: { key: string; value: Record<string, unknown> }) => [a.key, attributeValue(a.value)])),
              });
            }
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  receivers.push(server);
  return { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans };
}

const OTLP_SERVER = 2;
const OTLP_PRODUCER = 4;
const OTLP_CONSUMER = 5;

describe('tracing across processes', () => {
  it('one trace shows api → relay → fog node → ingest, each role in its own process, parents and attributes right', async () => {
    const t = await e2eEnv('trace');
    const otlp = await otlpReceiver();
    const key = 'acme:operator:trace-test-key-0123456789';
    const env = {
      ...t.env,
      API_KEYS: key,
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      LOG_LEVEL: 'info',
    };
    const api = spawnFogsched(['start', '--roles', 'api'], env);
    await waitReady(t.port, api);
    const others: Spawned[] = ['relay', 'ingest', 'fog-node'].map((role) => spawnFogsched(['start', '--roles', role, '--no-migrate'], { ...env, FOG_NODE_ID: 'traced-node' }));

    // The caller's own trace: the api's span continues it.
    const callerTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const callerSpan = '00f067aa0ba902b7';
    const auth = { authorization: `Bearer ${key.split(':')[2]}` };
    const submitted = await postJson(`${t.base}/v1/tasks`, { type: 'noop' }, { ...auth, traceparent: `00-${callerTrace}-${callerSpan}-01` });
    expect(submitted.status).toBe(202);
    const taskId = submitted.body.id as string;
    // Polled in the database: the api's access log (kept to its last 20,000 characters) is checked below.
    await eventually(async () => (await t.count(`SELECT count(*) AS n FROM task_current WHERE task_id = $1 AND state = 'succeeded'`, [taskId])) === 1, { timeoutMs: 60_000 });

    const named = (name: string) => otlp.spans.filter((s) => s.traceId === callerTrace && s.name === name);
    // Spans are exported in batches every 100 ms: wait for the two ingest spans (started, succeeded).
    await eventually(() => named('POST /v1/tasks').length === 1 && named('relay publish').length === 1 && named('fog-node run').length === 1 && named('ingest apply').length >= 2, {
      timeoutMs: 30_000,
      message: `spans so far: ${JSON.stringify(otlp.spans.map((s) => [s.service, s.name, s.traceId]))}`,
    });
    const [httpSpan] = named('POST /v1/tasks');
    const [publish] = named('relay publish');
    const [run] = named('fog-node run');
    const applies = named('ingest apply');

    expect(httpSpan).toMatchObject({ service: 'fogsched-api', kind: OTLP_SERVER, parentSpanId: callerSpan });
    expect(httpSpan?.attributes).toMatchObject({ 'fogsched.task.id': taskId, 'http.route': '/v1/tasks', 'http.response.status_code': 202 });
    expect(publish).toMatchObject({ service: 'fogsched-relay', kind: OTLP_PRODUCER, parentSpanId: httpSpan?.spanId });
    expect(publish?.attributes).toMatchObject({ 'fogsched.task.id': taskId, 'fogsched.task.attempt': 1, 'fogsched.task.tier': 'light' });
    expect(run).toMatchObject({ service: 'fogsched-fog-node', kind: OTLP_CONSUMER, parentSpanId: publish?.spanId });
    expect(run?.attributes).toMatchObject({ 'fogsched.task.id': taskId, 'fogsched.task.attempt': 1, 'fogsched.task.tier': 'light', 'fogsched.node.id': 'traced-node' });
    expect(new Set(applies.map((a) => a.attributes['fogsched.result.kind']))).toEqual(new Set(['started', 'succeeded']));
    for (const apply of applies) {
      expect(apply).toMatchObject({ service: 'fogsched-ingest', kind: OTLP_CONSUMER, parentSpanId: run?.spanId });
      expect(apply.attributes).toMatchObject({ 'fogsched.task.id': taskId, 'fogsched.task.attempt': 1, 'fogsched.task.tier': 'light', 'fogsched.node.id': 'traced-node' });
    }

    // Every event of the task carries the trace id; the history shows it.
    const metadata = await t.q<{ type: string; trace_id: string; traceparent: string }>(
      `SELECT type, metadata->>'traceId' AS trace_id, metadata->>'traceparent' AS traceparent FROM events WHERE stream_id = $1 ORDER BY stream_version`,
      [taskId],
    );
    expect(metadata.map((m) => m.type)).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskSucceeded']);
    for (const m of metadata) expect(m.trace_id).toBe(callerTrace);
    expect(metadata[0]?.traceparent).toBe(`00-${callerTrace}-${httpSpan?.spanId}-01`);
    // The result events carry the context of their ingest span (retries they cause continue from it).
    expect(applies.map((a) => `00-${callerTrace}-${a.spanId}-01`)).toContain(metadata[2]?.traceparent);
    const history = (await (await fetch(`${t.base}/v1/tasks/${taskId}/history`, { headers: auth })).json()) as { events: { traceId: string }[] };
    expect(history.events.map((e) => e.traceId)).toEqual([callerTrace, callerTrace, callerTrace]);

    // Access logs are on, carry the trace and task ids, and never the credential.
    await eventually(() => api.output().includes('request completed'));
    const completed = api
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{') && l.includes('"request completed"'))
      .map((l) => JSON.parse(l));
    const submitLog = completed.find((l) => l.task_id === taskId && l.res?.statusCode === 202);
    expect(submitLog, api.output()).toMatchObject({ trace_id: callerTrace, task_id: taskId });
    expect(api.output()).not.toContain(key.split(':')[2]);

    for (const p of [...others, api]) expect(await p.kill('SIGTERM')).toBe(0);
  });

  it('with tracing off, the trace id of each request is new and random: none repeats across two api processes', async () => {
    const t = await e2eEnv('traceoff');
    const first = spawnFogsched(['start', '--roles', 'api'], t.env);
    await waitReady(t.port, first);
    const port2 = await freePort();
    const second = spawnFogsched(['start', '--roles', 'api', '--no-migrate'], { ...t.env, PORT: String(port2) });
    await waitReady(port2, second);
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      for (const port of [t.port, port2]) {
        const res = await postJson(`http://127.0.0.1:${port}/v1/tasks`, { type: 'noop' });
        expect(res.status).toBe(202);
        ids.push(res.body.id as string);
      }
    }
    const rows = await t.q<{ stream_id: string; trace_id: string | null; traceparent: string | null }>(
      `SELECT stream_id, metadata->>'traceId' AS trace_id, metadata->>'traceparent' AS traceparent FROM events WHERE stream_id = ANY($1::text[])`,
      [ids],
    );
    expect(rows).toHaveLength(20); // the TaskSubmitted of each (which also queues it)
    for (const r of rows) {
      expect(r.trace_id).toMatch(/^[0-9a-f]{32}$/);
      expect(r.traceparent).toBe(`00-${r.trace_id}-${r.traceparent?.slice(36, 52)}-00`); // not sampled: nothing recorded it
    }
    const perTask = new Map<string, Set<string>>();
    for (const r of rows) perTask.set(r.stream_id, (perTask.get(r.stream_id) ?? new Set()).add(r.trace_id as string));
    for (const traces of perTask.values()) expect(traces.size).toBe(1); // one trace per task
    expect(new Set(rows.map((r) => r.trace_id)).size).toBe(20); // none shared between requests or processes
    for (const p of [first, second]) expect(await p.kill('SIGTERM')).toBe(0);
  });
});

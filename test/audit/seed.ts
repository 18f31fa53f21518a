import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import type { TaskSpec } from '../../src/domain/index.js';
import { appendEvents, type EventMetadata, type Executor, type NewEvent } from '../../src/store/index.js';

/**
 * A small, fixed history for the audit views: every time is `t0` plus a number of seconds,
 * so durations are exact and absolute times follow from `t0`. `t0` is three hours before
 * the test runs (to the minute), so "in the last 24 hours" and "older than an hour" hold.
 *
 * | task | type | story |
 * |---|---|---|
 * | succeeded | thumbnail | edge-1 runs it first time (queued 0 s, started 5 s, done 35 s) |
 * | retried | report | fails on edge-1 (upstream timeout), retry on edge-7 succeeds (170 s) |
 * | exhausted | report | fails three times (out of paper): max-attempts at 260 s |
 * | cancelled | thumbnail | alice cancels it while queued (400 s) |
 * | deadLettered | transcode | started twice on edge-1, dead-lettered by the broker (delivery-limit, 700 s) |
 * | requeued | transcode | fails non-retryable (bad codec, 820 s); bob requeues it at 3600 s: open again |
 * | inFlight | thumbnail | started on edge-7 (1010 s), edge-7 lost (1100 s), redelivered to edge-1, done 1140 s |
 * | open | report | submitted at 3600 s (two hours before the test), still queued |
 * | fresh | thumbnail | submitted five minutes before the test, running on edge-1 |
 * | legacy | legacy-import | 2023, schema v1 shapes: resources.memory, error as a string; failed |
 */
export const TASK_IDS = {
  succeeded: '00000000-0000-4000-8000-000000000001',
  retried: '00000000-0000-4000-8000-000000000002',
  exhausted: '00000000-0000-4000-8000-000000000003',
  cancelled: '00000000-0000-4000-8000-000000000004',
  deadLettered: '00000000-0000-4000-8000-000000000005',
  requeued: '00000000-0000-4000-8000-000000000006',
  inFlight: '00000000-0000-4000-8000-000000000007',
  open: '00000000-0000-4000-8000-000000000008',
  fresh: '00000000-0000-4000-8000-000000000009',
  legacy: '00000000-0000-4000-8000-000000000010',
} as const;

export type SeededTask = keyof typeof TASK_IDS;

/** Seconds after t0 of the fresh task's submit: five minutes (or a little more) before now. */
export const FRESH_SUBMIT_S = 3 * 3600 - 5 * 60;

export const LEGACY_SUBMITTED_AT = '2023-03-01T10:00:00.000Z';

export interface Seed {
  readonly t0: Date;
  /** The time `seconds` after t0. */
  at(seconds: number): Date;
}

interface Step {
  readonly task: Exclude<SeededTask, 'legacy'>;
  readonly s: number;
  readonly type: string;
  readonly data: Record<string, unknown>;
  readonly metadata: EventMetadata;
}

const api = (trace: string): EventMetadata => ({ tenant: 'acme', actor: 'api-key:ops', traceId: trace });
const node = (id: string): EventMetadata => ({ actor: `node:${id}` });

function spec(task: SeededTask, type: string, tier: string, overrides: Partial<TaskSpec> = {}): TaskSpec {
  return {
    taskId: TASK_IDS[task],
    tenant: 'acme',
    type,
    payload: { seed: task },
    priority: 'normal',
    resources: { cpu: 1, memoryMb: 256 },
    tier,
    maxAttempts: 3,
    timeoutMs: 60_000,
    notBefore: null,
    deadline: null,
    idempotencyKey: null,
    retry: null,
    ...overrides,
  };
}

/** Appends the seed history (one transaction) and returns its clock. */
export async function seedAuditHistory(db: Executor, now: Date = new Date()): Promise<Seed> {
  const t0 = new Date(Math.floor(now.getTime() / 60_000) * 60_000 - 3 * 3600_000);
  const at = (seconds: number) => new Date(t0.getTime() + seconds * 1000);
  const iso = (seconds: number) => at(seconds).toISOString();

  const steps: Step[] = [];
  const submit = (task: Exclude<SeededTask, 'legacy'>, s: number, type: string, tier: string, trace: string) => {
    steps.push({ task, s, type: 'TaskSubmitted', data: { task: spec(task, type, tier), at: iso(s) }, metadata: api(trace) });
    steps.push({ task, s, type: 'TaskQueued', data: { attempt: 1, tier, priority: 'normal', availableAt: iso(s), at: iso(s) }, metadata: api(trace) });
  };
  const step = (task: Exclude<SeededTask, 'legacy'>, s: number, type: string, data: Record<string, unknown>, metadata: EventMetadata) =>
    steps.push({ task, s, type, data: { ...data, at: iso(s) }, metadata });
  const started = (task: Exclude<SeededTask, 'legacy'>, s: number, attempt: number, nodeId: string) =>
    step(task, s, 'TaskStarted', { attempt, nodeId }, node(nodeId));
  const succeeded = (task: Exclude<SeededTask, 'legacy'>, s: number, attempt: number, nodeId: string, durationMs: number) =>
    step(task, s, 'TaskSucceeded', { attempt, nodeId, output: { ok: true }, durationMs }, node(nodeId));
  const attemptFailed = (task: Exclude<SeededTask, 'legacy'>, s: number, attempt: number, nodeId: string, message: string, code: string, retryable: boolean) =>
    step(task, s, 'TaskAttemptFailed', { attempt, nodeId, error: { message, code, retryable } }, node(nodeId));
  const retry = (task: Exclude<SeededTask, 'legacy'>, s: number, nextAttempt: number, nodeId: string, delayMs: number) =>
    step(task, s, 'TaskRetryScheduled', { attempt: nextAttempt, delayMs, availableAt: iso(s + delayMs / 1000) }, node(nodeId));

  submit('succeeded', 0, 'thumbnail', 'light', 'trace-a');
  started('succeeded', 5, 1, 'edge-1');
  succeeded('succeeded', 35, 1, 'edge-1', 29_800);

  submit('retried', 60, 'report', 'medium', 'trace-b');
  started('retried', 70, 1, 'edge-1');
  attemptFailed('retried', 80, 1, 'edge-1', 'upstream timeout', 'handler_error', true);
  retry('retried', 80, 2, 'edge-1', 20_000);
  started('retried', 110, 2, 'edge-7');
  succeeded('retried', 170, 2, 'edge-7', 59_900);

  submit('exhausted', 200, 'report', 'medium', 'trace-c');
  started('exhausted', 210, 1, 'edge-1');
  attemptFailed('exhausted', 215, 1, 'edge-1', 'out of paper', 'handler_error', true);
  retry('exhausted', 215, 2, 'edge-1', 5_000);
  started('exhausted', 230, 2, 'edge-7');
  attemptFailed('exhausted', 235, 2, 'edge-7', 'out of paper', 'handler_error', true);
  retry('exhausted', 235, 3, 'edge-7', 10_000);
  started('exhausted', 250, 3, 'edge-1');
  attemptFailed('exhausted', 260, 3, 'edge-1', 'out of paper', 'handler_error', true);
  step('exhausted', 260, 'TaskFailed', { attempt: 3, reason: 'max-attempts', error: { message: 'out of paper', code: 'handler_error', retryable: true } }, node('edge-1'));

  submit('cancelled', 300, 'thumbnail', 'light', 'trace-d');
  step('cancelled', 400, 'TaskCancelled', { actor: 'alice', reason: 'wrong input' }, { tenant: 'acme', actor: 'alice', traceId: 'trace-cancel-d' });

  submit('deadLettered', 500, 'transcode', 'heavy', 'trace-e');
  started('deadLettered', 505, 1, 'edge-1');
  started('deadLettered', 600, 1, 'edge-1'); // the handler crashed its worker: redelivered
  step('deadLettered', 700, 'TaskDeadLettered', { attempt: 1, reason: 'delivery-limit', queue: 'tasks.heavy.normal' }, { actor: 'broker' });

  submit('requeued', 800, 'transcode', 'heavy', 'trace-f');
  started('requeued', 810, 1, 'edge-1');
  attemptFailed('requeued', 820, 1, 'edge-1', 'bad codec', 'unsupported_codec', false);
  step('requeued', 820, 'TaskFailed', { attempt: 1, reason: 'non-retryable', error: { message: 'bad codec', code: 'unsupported_codec', retryable: false } }, node('edge-1'));
  step('requeued', 3600, 'TaskRequeued', { actor: 'bob', attempt: 2 }, { tenant: 'acme', actor: 'bob', traceId: 'trace-requeue-f' });

  submit('inFlight', 1000, 'thumbnail', 'light', 'trace-g');
  started('inFlight', 1010, 1, 'edge-7');
  started('inFlight', 1130, 1, 'edge-1');
  succeeded('inFlight', 1140, 1, 'edge-1', 9_700);

  submit('open', 3600, 'report', 'medium', 'trace-h');

  submit('fresh', FRESH_SUBMIT_S, 'thumbnail', 'light', 'trace-i');
  started('fresh', FRESH_SUBMIT_S + 2, 1, 'edge-1');

  // In time order across streams, as the log would have them; versions per stream.
  const ordered = steps.map((st, i) => ({ st, i })).sort((a, b) => a.st.s - b.st.s || a.i - b.i);
  const versions = new Map<string, number>();
  const taskEvents: NewEvent[] = ordered.map(({ st }) => {
    const id = TASK_IDS[st.task];
    const version = (versions.get(id) ?? 0) + 1;
    versions.set(id, version);
    return { streamId: id, streamType: 'task', streamVersion: version, eventId: randomUUID(), type: st.type, data: st.data, metadata: st.metadata };
  });

  const coordinator: EventMetadata = { tenant: 'system', actor: 'coordinator-1' };
  const nodeEvents: NewEvent[] = [
    {
      streamId: 'node:edge-1', streamType: 'node', streamVersion: 1, eventId: randomUUID(), type: 'FogNodeJoined',
      data: { nodeId: 'edge-1', tier: 'light', slots: 8, version: '0.1.0', at: iso(-60) }, metadata: coordinator,
    },
    {
      streamId: 'node:edge-7', streamType: 'node', streamVersion: 1, eventId: randomUUID(), type: 'FogNodeJoined',
      data: { nodeId: 'edge-7', tier: 'medium', slots: 4, version: '0.1.0', at: iso(100) }, metadata: coordinator,
    },
    {
      streamId: 'node:edge-7', streamType: 'node', streamVersion: 2, eventId: randomUUID(), type: 'FogNodeLost',
      data: { nodeId: 'edge-7', tier: 'medium', lastSeen: iso(1080), reason: 'heartbeat-expired', inFlightTaskIds: [TASK_IDS.inFlight], at: iso(1100) },
      metadata: coordinator,
    },
    {
      streamId: 'autoscale:light', streamType: 'autoscale', streamVersion: 1, eventId: randomUUID(), type: 'FogTierScaled',
      data: {
        tier: 'light', from: 1, to: 3, trigger: 'backlog',
        reason: 'backlog: more than 10 ready per replica on 1 (depth 25, queued 27, running 2, oldest wait 4.0 s, average wait 2.0 s)',
        depth: 25, queued: 27, running: 2, oldestWaitMs: 4000, avgWaitMs: 2000, min: 1, max: 4, backend: 'swarm', at: iso(200),
      },
      metadata: { tenant: 'system', actor: 'autoscaler-1' },
    },
    {
      streamId: 'message:m-1', streamType: 'message', streamVersion: 1, eventId: randomUUID(), type: 'MessageDeadLettered',
      data: { messageId: 'm-1', exchange: 'results', routingKey: 'task.succeeded.edge-9', headers: {}, body: 'not json', at: iso(900) },
      metadata: { actor: 'ingest' },
    },
    {
      streamId: 'message:m-2', streamType: 'message', streamVersion: 1, eventId: randomUUID(), type: 'ResultRecordSetAside',
      data: {
        messageId: 'm-2', nodeId: 'edge-9', recordIndex: 3, taskId: '00000000-0000-4000-8000-0000000000ff', kind: 'started', attempt: 1,
        reportedAt: iso(950), error: 'value too long for type character varying(200)', errorCode: '22001', at: iso(951),
      },
      metadata: { actor: 'ingest' },
    },
  ];

  await db.transaction().execute(async (trx) => {
    await insertLegacyTask(trx);
    await appendEvents(trx, [...taskEvents, ...nodeEvents]);
  });
  return { t0, at };
}

/**
 * A task from 2023, stored at schema version 1 (plain INSERT: appendEvents stores the current
 * version): TaskSubmitted with `resources.memory`, TaskAttemptFailed with `error` as the message
 * string and `retryable` beside it.
 */
async function insertLegacyTask(db: Executor): Promise<void> {
  const id = TASK_IDS.legacy;
  const t = (s: number) => new Date(Date.parse(LEGACY_SUBMITTED_AT) + s * 1000).toISOString();
  const task = {
    taskId: id, tenant: 'acme', type: 'legacy-import', payload: {}, priority: 'normal', resources: { cpu: 1, memory: 512 },
    tier: 'light', maxAttempts: 1, timeoutMs: null, notBefore: null,
  };
  const events: [string, Record<string, unknown>, EventMetadata][] = [
    ['TaskSubmitted', { task, at: t(0) }, { tenant: 'acme', actor: 'api' }],
    ['TaskQueued', { attempt: 1, tier: 'light', priority: 'normal', availableAt: t(0), at: t(0) }, { tenant: 'acme', actor: 'api' }],
    ['TaskStarted', { attempt: 1, nodeId: 'edge-old', at: t(2) }, node('edge-old')],
    ['TaskAttemptFailed', { attempt: 1, nodeId: 'edge-old', error: 'disk full', retryable: false, at: t(3) }, node('edge-old')],
    ['TaskFailed', { attempt: 1, reason: 'non-retryable', error: null, at: t(3) }, node('edge-old')],
  ];
  for (const [i, [type, data, metadata]] of events.entries()) {
    await sql`
      INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, schema_version, data, metadata)
      VALUES (${id}, 'task', ${i + 1}, ${randomUUID()}, ${type}, 1, ${JSON.stringify(data)}::jsonb, ${JSON.stringify(metadata)}::jsonb)`.execute(db);
  }
}

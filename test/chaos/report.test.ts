import { describe, expect, it } from 'vitest';
import type { LoggedEvent } from '../../src/chaos/checker.js';
import type { FaultRecord } from '../../src/chaos/nemesis.js';
import { formatReport, recoveries, throughput } from '../../src/chaos/report.js';

const T0 = Date.parse('2026-11-27T12:00:00.000Z');
const iso = (ms: number) => new Date(T0 + ms).toISOString();

/** A task due at `dueMs` that succeeded at `doneMs` (only what the figures read). */
function task(dueMs: number, doneMs: number): LoggedEvent[] {
  return [
    { position: 0, version: 1, type: 'TaskQueued', data: { attempt: 1, tier: 'light', priority: 'normal', availableAt: iso(dueMs), at: iso(dueMs) }, recordedAt: T0 + dueMs },
    { position: 0, version: 2, type: 'TaskSucceeded', data: { attempt: 1, nodeId: 'n', output: null, durationMs: 1, at: iso(doneMs) }, recordedAt: T0 + doneMs },
  ];
}

const fault = (kind: FaultRecord['kind'], fromMs: number, toMs: number): FaultRecord => ({ kind, target: 'x', startedAt: T0 + fromMs, healedAt: T0 + toMs });

// One task due every 100 ms for 40 s, each done 200 ms later, except: those due in [10 s, 18 s)
// all end at 18 s (nothing completes from 10.2 s to 18 s: a stall), and none ends in
// [26 s, 27 s) (one quiet second: noise).
const tasks = new Map<string, LoggedEvent[]>();
for (let due = 0; due < 40_000; due += 100) {
  let done = due + 200;
  if (due >= 10_000 && due < 18_000) done = 18_000;
  if (done >= 26_000 && done < 27_000) done = 27_000;
  tasks.set(`t${due}`, task(due, done));
}

describe('chaos report figures', () => {
  it('measures a recovery from the fault to the end of the stall it caused, and none where nothing stalled', () => {
    const faults = [fault('postgres-restart', 10_000, 12_000), fault('kill-role', 25_000, 25_000)];
    const r = recoveries(tasks, faults, T0 + 40_000);
    expect(r.map((x) => [x.fault.kind, x.recoveryMs, x.clipped])).toEqual([
      ['postgres-restart', 8000, false],
      ['kill-role', 0, false],
    ]);
  });

  it('gives a stall to the fault that began last before it, and marks a recovery cut short by the next fault', () => {
    const faults = [fault('redis-down', 2000, 9000), fault('table-lock', 10_500, 16_000)];
    const r = recoveries(tasks, faults, T0 + 40_000);
    expect(r.map((x) => [x.fault.kind, x.recoveryMs, x.clipped])).toEqual([
      ['redis-down', 0, false],
      ['table-lock', 7500, false],
    ]);
    const overlapping = recoveries(tasks, [fault('postgres-restart', 10_000, 12_000), fault('kill-role', 14_000, 14_000)], T0 + 40_000);
    expect(overlapping.map((x) => [x.fault.kind, x.recoveryMs, x.clipped])).toEqual([
      ['postgres-restart', 4000, true],
      ['kill-role', 0, false],
    ]);
  });

  it('reports the throughput dip in 5 s windows', () => {
    const t = throughput(tasks, [fault('postgres-restart', 10_000, 12_000)], T0, T0 + 40_000);
    expect(t?.medianPerS).toBe(10);
    // [10 s, 15 s) holds only the two tasks due at 9.8 s and 9.9 s.
    expect(t?.worstPerS).toBe(0.4);
    expect(t?.worstDuring).toBe('postgres-restart');
    expect(t?.dip).toBeCloseTo(0.96);
  });

  it('ends with the summary line', () => {
    const text = formatReport({
      tasks,
      faults: [fault('postgres-restart', 10_000, 12_000)],
      skippedFaults: [{ kind: 'partition-broker', why: 'no network namespaces here' }],
      violations: [{ rule: 'not-terminal', taskId: 't0', detail: 'state running' }],
      recoveries: recoveries(tasks, [fault('postgres-restart', 10_000, 12_000)], T0 + 40_000),
      throughput: null,
      phaseStart: T0,
      recoveryBoundS: 60,
      recoveredInMs: null,
      client: { answers: { '202': 3 }, submits: 3, accepted: 3, rejected: 0, unknown: 0, cancels: 0 },
      observedStarts: 0,
      duplicateRuns: 0,
      deadLetteredMessages: 0,
    });
    expect(text).toContain('postgres-restart   1  longest recovery 8.0 s');
    expect(text).toContain('partition-broker   0  skipped: no network namespaces here');
    expect(text).toContain('v2 TaskSucceeded (attempt 1, node n)');
    expect(text.trim().split('\n').pop()).toBe(`chaos: ${tasks.size} tasks, 1 faults, 1 violations`);
  });
});

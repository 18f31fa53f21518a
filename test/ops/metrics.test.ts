import { describe, expect, it } from 'vitest';
import { BUILTIN_TASK_TYPES, cachedSource, configureMetrics, parseNameList, recordRateLimited, recordTaskEvents, registry, tenantLabel, typeLabel } from '../../src/infra/metrics.js';

describe('metric labels stay bounded', () => {
  it('names a task type only when METRICS_TASK_TYPES lists it (the built-in types by default)', () => {
    configureMetrics({ tenants: [], taskTypes: ['t1', 'email.send'] });
    expect(['t1', 'email.send', 'beta-secret-project', 'noop'].map(typeLabel)).toEqual(['t1', 'email.send', 'other', 'other']);
    configureMetrics({ tenants: [], taskTypes: BUILTIN_TASK_TYPES });
    expect(typeLabel('noop')).toBe('noop');
  });

  it('names a tenant only when METRICS_TENANTS lists it', async () => {
    configureMetrics({ tenants: parseNameList(' acme, ,globex,acme'), taskTypes: [] });
    expect(parseNameList(' acme, ,globex,acme')).toEqual(['acme', 'globex']);
    expect(tenantLabel('acme')).toBe('acme');
    expect(tenantLabel('initech')).toBe('other');
    recordRateLimited('acme', 'rate');
    recordRateLimited('initech', 'rate');
    recordRateLimited('umbrella', 'active');
    const text = await registry.getSingleMetricAsString('fogsched_rate_limited_total');
    expect(text).toContain('fogsched_rate_limited_total{tenant="acme",limit="rate"} 1');
    expect(text).toContain('fogsched_rate_limited_total{tenant="other",limit="rate"} 1');
    expect(text).toContain('fogsched_rate_limited_total{tenant="other",limit="active"} 1');
    expect(text).not.toContain('initech');
  });

  it('task events: submits by tier and priority, outcomes by bounded type, waits and runs by tier', async () => {
    configureMetrics({ tenants: [], taskTypes: ['t1', 't2'] });
    const spec = (type: string) => ({ type, tier: 'light', priority: 'high' });
    const state = (type: string) => ({ spec: spec(type), availableAt: '2026-01-01T00:00:00.000Z', startedAt: '2026-01-01T00:00:02.000Z' });
    recordTaskEvents([
      { event: { type: 'TaskSubmitted', data: {} }, state: state('t1') },
      { event: { type: 'TaskStarted', data: { at: '2026-01-01T00:00:02.000Z' } }, state: state('t1') },
      { event: { type: 'TaskSucceeded', data: { durationMs: 1500, at: 'x' } }, state: state('t1') },
      { event: { type: 'TaskFailed', data: {} }, state: state('t2') },
      { event: { type: 'TaskCancelled', data: {} }, state: state('t3') },
    ]);
    const text = (await registry.metrics()).split('\n');
    expect(text).toContain('fogsched_tasks_submitted_total{tier="light",priority="high"} 1');
    expect(text).toContain('fogsched_tasks_finished_total{type="t1",tier="light",outcome="succeeded"} 1');
    expect(text).toContain('fogsched_tasks_finished_total{type="t2",tier="light",outcome="failed"} 1');
    expect(text).toContain('fogsched_tasks_finished_total{type="other",tier="light",outcome="cancelled"} 1');
    expect(text).toContain('fogsched_task_queue_wait_seconds_sum{tier="light"} 2');
    expect(text).toContain('fogsched_task_run_seconds_sum{tier="light"} 1.5');
  });
});

describe('cachedSource: a scrape never hangs on a dependency', () => {
  it('answers within its timeout with the last value it has, and counts the miss', async () => {
    let calls = 0;
    let release: (v: number) => void = () => {};
    const read = cachedSource('test_source', () => {
      calls++;
      return calls === 1 ? Promise.resolve(7) : new Promise<number>((resolve) => (release = resolve));
    }, { ttlMs: 0, timeoutMs: 50 });
    expect(await read()).toBe(7);
    expect(await read()).toBe(7); // the read hangs: the last value, after the timeout
    expect(await registry.getSingleMetricAsString('fogsched_metrics_collect_errors_total')).toContain('source="test_source"');
    expect(calls).toBe(2); // the hanging read is not started again while in flight
    expect(await read()).toBe(7);
    expect(calls).toBe(2);
    release(9);
    await new Promise((r) => setTimeout(r, 0));
    expect(await read()).toBe(9);
  });

  it('drops a value it can no longer read rather than showing it as current', async () => {
    let fail = false;
    const read = cachedSource('test_failing', () => (fail ? Promise.reject(new Error('down')) : Promise.resolve(3)), { ttlMs: 0, timeoutMs: 1000 });
    expect(await read()).toBe(3);
    fail = true;
    expect(await read()).toBeUndefined();
  });
});

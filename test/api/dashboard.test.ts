import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { AUDIT_QUERIES, checkAuditParams } from '../../src/audit/queries.js';
import { createStreamSlots, TooManyStreamsError } from '../../src/api/sse.js';

describe('the audit questions served over HTTP', () => {
  it('are the questions of docs/audit.md, in its order, with unique names', () => {
    const doc = readFileSync(fileURLToPath(new URL('../../docs/audit.md', import.meta.url)), 'utf8');
    const headings = [...doc.matchAll(/^### \d+\. (.+)$/gm)].map((m) => m[1]);
    expect(AUDIT_QUERIES.map((q) => q.title)).toEqual(headings);
    expect(new Set(AUDIT_QUERIES.map((q) => q.name)).size).toBe(AUDIT_QUERIES.length);
  });

  it('check their parameters: required, typed, nothing unknown', () => {
    const byName = (name: string) => AUDIT_QUERIES.find((q) => q.name === name)!;
    expect(checkAuditParams(byName('task-timeline'), { task_id: '0190a0b0-0000-7000-8000-000000000001' })).toEqual([]);
    expect(checkAuditParams(byName('task-timeline'), {})).toEqual([{ path: 'querystring/task_id', message: 'is required' }]);
    expect(checkAuditParams(byName('task-timeline'), { task_id: 'x' })[0]?.message).toBe('must be a UUID');
    expect(checkAuditParams(byName('task-timeline'), { task_id: ['a', 'b'] })[0]?.message).toMatch(/one value/);
    expect(checkAuditParams(byName('cancellations'), { colour: 'red' })).toEqual([{ path: 'querystring/colour', message: 'is not a parameter of this query' }]);
    const between = byName('node-tasks-between');
    expect(checkAuditParams(between, { node_id: 'n', since: '2024-05-01 00:00Z', until: '2024-05-02T00:00:00+02:00' })).toEqual([]);
    expect(checkAuditParams(between, { node_id: 'n', since: 'yesterday', until: '0000-01-01' }).map((e) => e.path)).toEqual(['querystring/since', 'querystring/until']);
    // Dates the calendar has not (Date.parse would roll them over; PostgreSQL refuses them): 400, not 500.
    expect(checkAuditParams(between, { node_id: 'n', since: '2020-01-01', until: '2020-02-30' }).map((e) => e.path)).toEqual(['querystring/until']);
    expect(checkAuditParams(between, { node_id: 'n', since: '2021-02-29', until: '2020-01-01T24:00' }).map((e) => e.path)).toEqual(['querystring/since', 'querystring/until']);
    expect(checkAuditParams(between, { node_id: 'n', since: '2024-02-29', until: '2020-12-31T23:59:59.999Z' })).toEqual([]);
    const slowest = byName('slowest-finished-7d');
    expect(checkAuditParams(slowest, {})).toEqual([]);
    expect(checkAuditParams(slowest, { limit: '0' })).toHaveLength(1);
    expect(checkAuditParams(slowest, { limit: '1001' })).toHaveLength(1);
    expect(checkAuditParams(slowest, { limit: '10' })).toEqual([]);
  });
});

describe('event stream slots', () => {
  it('a tenant holds at most the limit; a slot given back (once) frees one; tenants are apart', () => {
    const slots = createStreamSlots(() => 2);
    const a = slots.acquire('acme');
    slots.acquire('acme');
    expect(() => slots.acquire('acme')).toThrow(TooManyStreamsError);
    expect(() => slots.acquire('globex')).not.toThrow();
    a();
    a();
    expect(slots.count('acme')).toBe(1);
    expect(() => slots.acquire('acme')).not.toThrow();
    expect(() => slots.acquire('acme')).toThrow(/already has 2 open event streams/);
  });
});

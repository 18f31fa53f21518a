import { describe, expect, it } from 'vitest';
import { InvalidWorkflowError, orderSteps, stepTaskId } from '../../src/api/routes/workflows.js';
import { liveWarnings, nodePlacement, type LiveNode } from '../../src/api/placement-warning.js';
import { placementMatches } from '../../src/domain/index.js';
import { TASK_EXAMPLE } from '../../src/api/schemas.js';

const UUID = '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11';

function refusal(steps: Parameters<typeof orderSteps>[0]): { code: string; errors: unknown } {
  try {
    orderSteps(steps);
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidWorkflowError);
    const e = error as InvalidWorkflowError;
    return { code: e.code, errors: e.details?.errors };
  }
  throw new Error('orderSteps accepted the steps');
}

describe('workflow steps', () => {
  it('orders steps after the steps they depend on, ready ones in the request order; a task id is no step', () => {
    const order = orderSteps([
      { step: 'aggregate', dependsOn: ['left', 'right'] },
      { step: 'right', dependsOn: ['fetch'] },
      { step: 'fetch', dependsOn: [UUID] },
      { step: 'left', dependsOn: ['fetch'] },
    ]);
    expect(order).toEqual([2, 1, 3, 0]);
  });

  it('refuses a repeated step, a dependency naming nothing, a self dependency and a cycle, naming each path', () => {
    expect(refusal([{ step: 'a' }, { step: 'a' }])).toEqual({ code: 'INVALID_WORKFLOW', errors: [{ path: 'body/steps/1/step', message: 'step a repeats steps/0' }] });
    expect(refusal([{ step: 'a', dependsOn: ['nope'] }])).toEqual({
      code: 'INVALID_WORKFLOW',
      errors: [{ path: 'body/steps/0/dependsOn/0', message: 'nope is no step of this workflow and no task id' }],
    });
    expect(refusal([{ step: 'a', dependsOn: ['a'] }]).errors).toEqual([{ path: 'body/steps/0/dependsOn/0', message: 'step a depends on itself' }]);
    expect(refusal([{ step: 'x' }, { step: 'a', dependsOn: ['b', 'x'] }, { step: 'b', dependsOn: ['a'] }, { step: 'c', dependsOn: ['b'] }]).errors).toEqual([
      { path: 'body/steps/1/dependsOn', message: 'step a is on a dependency cycle (or depends on one)' },
      { path: 'body/steps/2/dependsOn', message: 'step b is on a dependency cycle (or depends on one)' },
      { path: 'body/steps/3/dependsOn', message: 'step c is on a dependency cycle (or depends on one)' },
    ]);
  });

  it('derives a step id from tenant, Idempotency-Key and step under the servers\' secret (HMAC, UUID v8), a fresh v7 without a key', () => {
    const secret = 'a-secret';
    const id = stepTaskId(secret, 'acme', 'order-1', 'fetch');
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(stepTaskId(secret, 'acme', 'order-1', 'fetch')).toBe(id);
    expect(new Set([id, stepTaskId(secret, 'globex', 'order-1', 'fetch'), stepTaskId(secret, 'acme', 'order-2', 'fetch'), stepTaskId(secret, 'acme', 'order-1', 'merge')]).size).toBe(4);
    // Without the secret, nobody computes them: another secret gives other ids.
    expect(stepTaskId('another-secret', 'acme', 'order-1', 'fetch')).not.toBe(id);
    // The encoding (a JSON array) keeps ("a", "b\0c") and ("a\0b", "c") apart.
    expect(stepTaskId(secret, 'a', 'b\u0000c', 'd')).not.toBe(stepTaskId(secret, 'a\u0000b', 'c', 'd'));
    const fresh = stepTaskId(secret, 'acme', undefined, 'fetch');
    expect(fresh).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/);
    expect(stepTaskId(secret, 'acme', undefined, 'fetch')).not.toBe(fresh);
  });
});

describe('placement warning', () => {
  const node = (tiers: string[], zone: string | null, labels: Record<string, string> = {}): LiveNode => ({ tiers: new Set(tiers), zone, labels });
  const view = { ...TASK_EXAMPLE, tier: 'medium', placement: { zone: 'site-a', labels: { gpu: 'yes' } } };

  it('matches zone and every label', () => {
    expect(placementMatches({ zone: 'site-a' }, { zone: 'site-a', labels: {} })).toBe(true);
    expect(placementMatches({ zone: 'site-a' }, { zone: 'site-b', labels: {} })).toBe(false);
    expect(placementMatches({ labels: { gpu: 'yes' } }, { zone: null, labels: { gpu: 'yes', os: 'linux' } })).toBe(true);
    expect(placementMatches({ labels: { gpu: 'yes', os: 'bsd' } }, { zone: null, labels: { gpu: 'yes', os: 'linux' } })).toBe(false);
  });

  it('warns when no live node of the tier matches, not when one does or membership is unknown; the tier warning comes first', () => {
    expect(liveWarnings(view, new Set(['medium']), [node(['medium'], 'site-a', { gpu: 'yes' })])).toEqual([]);
    expect(liveWarnings(view, new Set(['medium', 'light']), [node(['light'], 'site-a', { gpu: 'yes' }), node(['medium'], 'site-a')])).toEqual([
      'no live fog node of tier medium matches placement zone site-a, gpu=yes; the task waits until one joins',
    ]);
    expect(liveWarnings({ ...view, fallbackAfterMs: 60000 }, null, [])).toEqual([
      'no live fog node of tier medium matches placement zone site-a, gpu=yes; the task waits until one joins or, after 60000 ms undelivered, runs on any node of the tier',
    ]);
    expect(liveWarnings(view, new Set(['light']), [])).toEqual(['no live fog node serves tier medium; the task waits until one joins']);
    expect(liveWarnings(view, null, null)).toEqual([]);
    expect(liveWarnings({ ...TASK_EXAMPLE }, new Set(['light']), [])).toEqual([]);
  });

  it('reads zone and labels from a membership record, none when it has none', () => {
    expect(nodePlacement({ id: 'n1' })).toEqual({ zone: null, labels: {} });
    expect(nodePlacement({ zone: '', labels: null })).toEqual({ zone: null, labels: {} });
    expect(nodePlacement({ zone: 'site-a', labels: { gpu: 'yes', bad: 3 } })).toEqual({ zone: 'site-a', labels: { gpu: 'yes' } });
  });
});

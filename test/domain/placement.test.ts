import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FALLBACK_STEPS_MS, fallbackOfClass, fallbackStep, MAX_FALLBACK_AFTER_MS, normalizePlacement, placementClass, placementErrors, placementMatches, placementRoutingKey, type Placement } from '../../src/domain/index.js';

const key = fc.stringMatching(/^[a-z0-9][a-z0-9_.-]{0,10}$/);
const value = fc.stringMatching(/^[A-Za-z0-9_.-]{1,10}$/);
const zone = fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,12}$/);
const labels = fc.dictionary(key, value, { maxKeys: 16 });

describe('placementClass', () => {
  it('is null without a placement, and for one with neither zone nor labels', () => {
    expect(placementClass(null)).toBeNull();
    expect(placementClass(undefined)).toBeNull();
    expect(placementClass({})).toBeNull();
    expect(placementClass({ labels: {} })).toBeNull();
  });

  it('is the zone itself for a zone-only placement (queues tasks.<zone>.<tier>.<priority>)', () => {
    expect(placementClass({ zone: 'site-a' })).toBe('site-a');
    expect(placementClass({ zone: 'site-a', labels: {} })).toBe('site-a');
  });

  it('is <zone or _any>~<16 hex digits> with labels, whatever the key order', () => {
    const a = placementClass({ zone: 'site-a', labels: { gpu: 'true', camera: 'yes' } });
    expect(a).toMatch(/^site-a~[0-9a-f]{16}$/);
    expect(placementClass({ zone: 'site-a', labels: { camera: 'yes', gpu: 'true' } })).toBe(a);
    expect(placementClass({ labels: { camera: 'yes', gpu: 'true' } })).toBe(`_any~${a?.split('~')[1]}`);
    // Pinned (FNV-1a 64 of 'camera=yes'): the class names durable queues, so it must not change between versions.
    expect(placementClass({ labels: { camera: 'yes' } })).toBe('_any~5d11b5bc1915dc94');
  });

  it('rounds a fallback delay up to the next of FALLBACK_STEPS_MS, a bounded set', () => {
    expect(fallbackStep(1)).toBe(250);
    expect(fallbackStep(300)).toBe(500);
    expect(fallbackStep(1500)).toBe(1500);
    expect(fallbackStep(60_001)).toBe(120_000);
    expect(fallbackStep(MAX_FALLBACK_AFTER_MS)).toBe(MAX_FALLBACK_AFTER_MS);
    expect(FALLBACK_STEPS_MS.length).toBeLessThanOrEqual(24);
  });

  it('has queues of its own per fallback delay, whose TTL fallbackOfClass reads back', () => {
    expect(placementClass({ zone: 'site-a' }, 1500)).toBe('site-a~fb1500');
    expect(fallbackOfClass('site-a~fb1500')).toBe(1500);
    const labelled = placementClass({ labels: { camera: 'yes' } }, 60_000);
    expect(labelled).toBe('_any~5d11b5bc1915dc94~fb60000');
    expect(fallbackOfClass(labelled as string)).toBe(60_000);
    expect(fallbackOfClass('site-a')).toBeNull();
    expect(fallbackOfClass('_any~5d11b5bc1915dc94')).toBeNull();
    expect(placementClass({ zone: 'site-a' }, null)).toBe('site-a');
    expect(placementClass(null, 1500)).toBeNull();
  });

  it('never collides with a zone, is queue-name-safe and differs for different label sets', () => {
    fc.assert(
      fc.property(fc.option(zone, { nil: undefined }), labels, labels, (z, l1, l2) => {
        const c1 = placementClass({ zone: z, labels: l1 });
        const c2 = placementClass({ zone: z, labels: l2 });
        if (Object.keys(l1).length > 0) {
          expect(c1).toMatch(/^[a-z0-9_-]+~[0-9a-f]{16}$/);
          expect(c1).not.toBe(z);
        }
        expect(c1 ?? '').not.toContain('.');
        const same = JSON.stringify(normalizePlacement({ labels: l1 })) === JSON.stringify(normalizePlacement({ labels: l2 }));
        expect(c1 === c2).toBe(same);
      }),
    );
  });

  it('gives the routing key <class>.<tier>.<priority>', () => {
    expect(placementRoutingKey('site-a', 'light', 'high')).toBe('site-a.light.high');
  });
});

describe('placementMatches', () => {
  const node = { zone: 'site-a', labels: { camera: 'yes', gpu: 'true' } };
  it.each<[Placement | null, boolean]>([
    [null, true],
    [{}, true],
    [{ zone: 'site-a' }, true],
    [{ zone: 'site-b' }, false],
    [{ labels: { camera: 'yes' } }, true],
    [{ labels: { camera: 'no' } }, false],
    [{ labels: { camera: 'yes', lidar: 'yes' } }, false],
    [{ zone: 'site-a', labels: { gpu: 'true', camera: 'yes' } }, true],
    [{ zone: 'site-b', labels: { gpu: 'true' } }, false],
    [{ labels: { constructor: 'x' } }, false],
  ])('%j on a node of site-a with camera=yes,gpu=true: %s', (placement, expected) => {
    expect(placementMatches(placement, node)).toBe(expected);
  });

  it('a node without a zone matches no zone placement', () => {
    expect(placementMatches({ zone: 'site-a' }, { zone: null, labels: {} })).toBe(false);
  });

  it('a node matches every placement built from its own zone and a subset of its labels', () => {
    fc.assert(
      fc.property(zone, labels, fc.boolean(), (z, l, withZone) => {
        const subset = Object.fromEntries(Object.entries(l).filter((_, i) => i % 2 === 0));
        expect(placementMatches({ ...(withZone ? { zone: z } : {}), labels: subset }, { zone: z, labels: l })).toBe(true);
      }),
    );
  });
});

describe('placementErrors and normalizePlacement', () => {
  it('accepts a valid placement and fallback', () => {
    expect(placementErrors({ zone: 'site-a', labels: { camera: 'yes' } }, 60_000)).toEqual([]);
    expect(placementErrors(undefined, undefined)).toEqual([]);
    expect(placementErrors(null, null)).toEqual([]);
  });

  it('names every bad part', () => {
    expect(placementErrors({ zone: 'Site A', labels: { 'Bad Key': 'x', ok: 'bad value', other: 1 }, rack: 3 }, 0).map((e) => e.path)).toEqual([
      'placement/rack',
      'placement/zone',
      'placement/labels/Bad Key',
      'placement/labels/ok',
      'placement/labels/other',
      'fallbackAfterMs',
    ]);
    expect(placementErrors({ labels: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])) }, undefined)[0]?.message).toContain('at most 16');
    expect(placementErrors('site-a', undefined)[0]?.path).toBe('placement');
    expect(placementErrors(undefined, 1000)).toEqual([{ path: 'fallbackAfterMs', message: 'only with a placement (zone or labels)' }]);
    expect(placementErrors({}, 1000)[0]?.path).toBe('fallbackAfterMs');
    expect(placementErrors({ zone: 'a' }, 604_800_001)[0]?.path).toBe('fallbackAfterMs');
    expect(placementErrors({ zone: 'a' }, 1.5)[0]?.path).toBe('fallbackAfterMs');
  });

  it('stores labels with sorted keys, and an empty placement as null', () => {
    expect(JSON.stringify(normalizePlacement({ zone: 'a', labels: { b: '1', a: '2' } }))).toBe('{"zone":"a","labels":{"a":"2","b":"1"}}');
    expect(normalizePlacement({ labels: {} })).toBeNull();
    expect(normalizePlacement({ zone: '' })).toBeNull();
  });
});

import { describe, expect, it } from 'vitest';
import { loadConfig, parseLabels, parseZoneList } from '../../src/infra/config.js';

describe('placement settings: FOG_NODE_ZONE, FOG_NODE_LABELS, FOG_ZONES', () => {
  it('default to none', () => {
    const config = loadConfig({});
    expect(config.FOG_NODE_ZONE).toBe('');
    expect(parseLabels(config.FOG_NODE_LABELS)).toEqual({});
    expect(parseZoneList('FOG_ZONES', config.FOG_ZONES)).toEqual([]);
    expect(config.FOG_NODE_PLACEMENT_RESCAN_MS).toBe(10_000);
  });

  it('parse labels key=value,... with sorted keys, and zone lists', () => {
    expect(Object.entries(parseLabels(' gpu=true, camera=yes '))).toEqual([['camera', 'yes'], ['gpu', 'true']]);
    expect(parseZoneList('FOG_ZONES', 'site-a, site-b,site-a')).toEqual(['site-a', 'site-b']);
    const config = loadConfig({ FOG_NODE_ZONE: 'site-a', FOG_NODE_LABELS: 'camera=yes', FOG_ZONES: 'site-a,site-b' });
    expect(config.FOG_NODE_ZONE).toBe('site-a');
  });

  it.each([
    [{ FOG_NODE_LABELS: 'camera' }, /FOG_NODE_LABELS="camera": "camera" must be key=value/],
    [{ FOG_NODE_LABELS: 'Camera=yes' }, /FOG_NODE_LABELS/],
    [{ FOG_NODE_LABELS: 'camera=' }, /FOG_NODE_LABELS/],
    [{ FOG_NODE_LABELS: 'camera=a b' }, /FOG_NODE_LABELS/],
    [{ FOG_NODE_LABELS: 'camera=yes,camera=no' }, /repeats the key camera/],
    [{ FOG_NODE_LABELS: Array.from({ length: 17 }, (_, i) => `k${i}=v`).join(',') }, /more than 16 labels/],
    [{ FOG_NODE_ZONE: 'Site A' }, /FOG_NODE_ZONE="Site A"/],
    [{ FOG_NODE_ZONE: 'site-a,site-b' }, /FOG_NODE_ZONE="site-a,site-b" names one zone/],
    [{ FOG_ZONES: 'site-a,site_b' }, /FOG_ZONES=.*"site_b" must match/],
  ])('refuses %j at startup, naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });
});

import { describe, expect, it } from 'vitest';
import { checkAutoscaleThresholds, loadConfig, parseAutoscaleTiers, parseTiers } from '../../src/infra/config.js';

const tiers = parseTiers('light:0.5:512,medium:0.75:768,heavy:1:1024');

describe('AUTOSCALE_TIERS', () => {
  it('reads tier:min:max entries', () => {
    expect(parseAutoscaleTiers('light:1:4, medium:0:2,heavy:0:1', tiers)).toEqual([
      { tier: 'light', min: 1, max: 4 },
      { tier: 'medium', min: 0, max: 2 },
      { tier: 'heavy', min: 0, max: 1 },
    ]);
  });
  it.each([
    ['', /must be tier:min:max/],
    ['light:1', /each entry must be tier:min:max/],
    ['light:a:4', /whole numbers/],
    ['light:-1:4', /whole numbers/],
    ['light:1.5:4', /whole numbers/],
    ['gpu:0:1', /names tier gpu; TIERS has light, medium, heavy/],
    ['light:1:4,light:0:2', /names tier light twice/],
    ['light:3:2', /0 <= min <= max/],
    ['light:0:0', /max >= 1/],
  ])('refuses %j with one clear line', (text, message) => {
    expect(() => parseAutoscaleTiers(text, tiers)).toThrow(message);
    expect(() => parseAutoscaleTiers(text, tiers)).toThrow(/^invalid configuration: AUTOSCALE_TIERS=/);
  });
  it('has documented defaults that make a hysteresis band', () => {
    const config = loadConfig({});
    expect(parseAutoscaleTiers(config.AUTOSCALE_TIERS, tiers)).toHaveLength(3);
    expect(config.AUTOSCALER_BACKEND).toBe('local');
    expect(() => checkAutoscaleThresholds(config)).not.toThrow();
  });
  it('refuses thresholds with no band between down and up', () => {
    expect(() => checkAutoscaleThresholds(loadConfig({ AUTOSCALE_UP_DEPTH: '5', AUTOSCALE_DOWN_DEPTH: '5' }))).toThrow(/AUTOSCALE_DOWN_DEPTH=5 must be below AUTOSCALE_UP_DEPTH=5/);
    expect(() => checkAutoscaleThresholds(loadConfig({ AUTOSCALE_UP_WAIT_MS: '1000', AUTOSCALE_DOWN_WAIT_MS: '2000' }))).toThrow(/AUTOSCALE_DOWN_WAIT_MS/);
    expect(() => loadConfig({ AUTOSCALER_BACKEND: 'k8s' })).toThrow(/AUTOSCALER_BACKEND/);
  });
});

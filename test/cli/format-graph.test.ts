import { describe, expect, it } from 'vitest';
import { formatGraph } from '../../src/cli/client-commands.js';

const node = (taskId: string, relation: 'self' | 'ancestor' | 'descendant', depth: number, state: 'waiting' | 'running' | 'succeeded', extra: { name?: string; placement?: { zone?: string; labels?: Record<string, string> } } = {}) => ({
  taskId,
  name: extra.name ?? null,
  type: 'noop',
  state,
  tier: 'light',
  placement: extra.placement ?? null,
  relation,
  depth,
});

describe('task graph as text', () => {
  it('prints the task, then its dependencies and dependants nearest first, indented by depth, with states', () => {
    const text = formatGraph({
      taskId: 'b',
      nodes: [
        node('b', 'self', 0, 'waiting', { name: 'scan/denoise' }),
        node('a', 'ancestor', 1, 'running', { name: 'scan/fetch', placement: { zone: 'site-a', labels: { sensor: 'lidar' } } }),
        node('r', 'ancestor', 2, 'succeeded'),
        node('c', 'descendant', 1, 'waiting'),
      ],
      edges: [],
      truncated: true,
    });
    expect(text).toBe(
      [
        'b  waiting    light  scan/denoise',
        'depends on (2):',
        '  a  running    light  scan/fetch  [zone=site-a sensor=lidar]',
        '    r  succeeded  light',
        'dependants (1):',
        '  c  waiting    light',
        'truncated: the graph has more tasks than one answer holds (10,000)',
        '',
      ].join('\n'),
    );
    expect(formatGraph({ taskId: 'x', nodes: [node('x', 'self', 0, 'running')], edges: [], truncated: false })).toBe('x  running    light\ndepends on (0):\n  none\ndependants (0):\n  none\n');
  });
});

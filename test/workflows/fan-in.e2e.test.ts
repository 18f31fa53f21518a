import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs } from '../helpers/processes.js';
import { types, workflowEnv } from './helpers.js';

// Issue 20's scale requirement, end to end: a fan-out of 10,000 children and one fan-in that
// depends on all of them (MAX_DEPENDENCIES), released once when the last child ends.

afterEach(dropE2eEnvs);

const CHILDREN = 10_000;
/** Items per POST /v1/tasks/batch (INPUT_LIMITS.maxBatchItems is 1,000). */
const BATCH = 1_000;

describe('fan-out / fan-in at the dependency limit', () => {
  it('10,000 noop children submitted in batches, then one fan-in on all of them: released once, after every child, and it sees all 10,000 outcomes', { timeout: 300_000 }, async () => {
    const w = await workflowEnv('fanin');
    await w.startApi('api,relay,ingest,fog-node', { FOG_NODE_SLOTS: '32', FOG_NODE_PREFETCH: '200' });
    const children = Array.from({ length: CHILDREN }, () => randomUUID());
    const child = (id: string, i: number) => ({ id, type: 'noop', payload: { i } });
    const fanIn = { id: randomUUID(), name: 'aggregate', type: 'dag.count', dependsOn: children };
    // One single submit, nine full batches, and a last batch of 999 children with the fan-in
    // (a dependency may be an item of the same batch): so the fan-in is sure to wait.
    await w.submit(child(children[0]!, 0));
    let next = 1;
    for (let b = 0; b < 9; b++, next += BATCH) {
      const views = await w.batch(children.slice(next, next + BATCH).map((id, k) => child(id, next + k)));
      expect(views).toHaveLength(BATCH);
    }
    const last = await w.batch([...children.slice(next).map((id, k) => child(id, next + k)), fanIn]);
    expect(last).toHaveLength(BATCH);
    expect(last.at(-1)).toMatchObject({ id: fanIn.id, state: 'waiting' });
    expect(last.at(-1).dependsOn).toHaveLength(CHILDREN);

    await eventually(async () => (await w.count(`SELECT count(*) AS n FROM task_current WHERE state = 'succeeded'`)) === CHILDREN + 1, {
      timeoutMs: 240_000,
      intervalMs: 500,
      message: 'the fan-out and its fan-in did not all succeed',
    });
    const done = await w.get(`/v1/tasks/${fanIn.id}`);
    expect(done.state).toBe('succeeded');
    expect(done.output).toEqual({ dependencies: CHILDREN, states: { succeeded: CHILDREN }, truncated: false });

    const h = await w.history(fanIn.id);
    expect(types(h).slice(-4)).toEqual(['TaskReleased', 'TaskQueued', 'TaskStarted', 'TaskSucceeded']);
    expect(types(h).filter((t) => t === 'TaskReleased')).toHaveLength(1);
    const released = h.find((e) => e.type === 'TaskReleased')!;
    expect(released.data.outcomes).toEqual({ succeeded: CHILDREN, failed: 0, cancelled: 0 });
    // Children of the earlier requests may have ended before the fan-in was submitted: it waited for the rest.
    expect(types(h).slice(0, 2)).toEqual(['TaskSubmitted', 'TaskWaiting']);
    expect(h[1]!.data.pending).toBeGreaterThanOrEqual(BATCH - 1);
    expect(h[1]!.data.pending).toBeLessThanOrEqual(CHILDREN);
    expect(children).toContain(released.data.dependency);

    // From the log: every task ended once, the only release is the fan-in's, written with the
    // last child's end, and the fan-in started after every child's end.
    expect(await w.count(`SELECT count(*) AS n FROM events WHERE type = 'TaskReleased'`)).toBe(1);
    expect(await w.doubleTerminal()).toEqual([]);
    expect(await w.releasesApart()).toEqual([]);
    expect(await w.startedEarly()).toEqual([]);
    expect(await w.count(`SELECT count(*) AS n FROM task_dependencies WHERE task_id = $1 AND resolved_state = 'succeeded'`, [fanIn.id])).toBe(CHILDREN);
    const lastChildEnd = await w.q<{ position: string }>(`SELECT max(position) AS position FROM events WHERE stream_id = ANY($1) AND type = 'TaskSucceeded'`, [children]);
    const releasePosition = await w.q<{ position: string }>(`SELECT position FROM events WHERE stream_id = $1 AND type = 'TaskReleased'`, [fanIn.id]);
    expect(BigInt(releasePosition[0]!.position)).toBeGreaterThan(BigInt(lastChildEnd[0]!.position));
  });
});

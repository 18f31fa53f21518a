import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decide,
  evolve,
  foldTask,
  initialTaskState,
  isTerminal,
  type DependencyState,
  type SubmitDependencies,
  type TaskCommand,
  type TaskEvent,
  type TaskSpec,
  type TaskState,
} from '../../src/domain/index.js';

/**
 * Random DAGs run through the pure domain, with the write path's coordination (edges resolved
 * once, a pending count per waiting task, ResolveDependencies to its dependants, recursive for
 * cancels) simulated in memory, as src/tasks does it in SQL.
 */

const BASE = Date.parse('2025-01-01T00:00:00.000Z');
const id = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;

interface Node {
  readonly deps: readonly number[];
  readonly policy: 'cancel' | 'run';
}

type Action = { kind: 'submit' } | { kind: 'succeed' | 'fail' | 'cancel'; pick: number };

const dagArb = fc.integer({ min: 1, max: 12 }).chain((n) =>
  fc.tuple(
    fc.tuple(
      ...Array.from({ length: n }, (_, i) =>
        fc.record({
          deps: i === 0 ? fc.constant([]) : fc.uniqueArray(fc.integer({ min: 0, max: i - 1 }), { maxLength: Math.min(i, 4) }),
          policy: fc.constantFrom<'cancel' | 'run'>('cancel', 'run'),
        }),
      ),
    ),
    fc.array(
      fc.oneof(
        fc.constant<Action>({ kind: 'submit' }),
        fc.record({ kind: fc.constantFrom<'succeed' | 'fail' | 'cancel'>('succeed', 'fail', 'cancel'), pick: fc.nat() }) as fc.Arbitrary<Action>,
      ),
      { maxLength: 60 },
    ),
    fc.array(fc.boolean(), { minLength: 1, maxLength: 20 }),
  ),
);

class World {
  readonly logs = new Map<number, TaskEvent[]>();
  readonly states = new Map<number, TaskState>();
  /** dependant -> (dependency -> resolved state or null) */
  readonly edges = new Map<number, Map<number, DependencyState | null>>();
  readonly waits = new Map<number, number>();
  readonly queuedAt = new Map<number, number[]>();
  readonly endedAt = new Map<number, number>();
  readonly endings = new Map<number, number>();
  clock = 0;
  constructor(readonly nodes: readonly Node[]) {}

  now(): string {
    return new Date(BASE + this.clock * 1000).toISOString();
  }

  spec(i: number): TaskSpec {
    const node = this.nodes[i] as Node;
    return {
      taskId: id(i),
      tenant: 't',
      type: 'x',
      payload: null,
      priority: 'normal',
      resources: { cpu: 0.1, memoryMb: 64 },
      tier: 'light',
      maxAttempts: 1,
      timeoutMs: null,
      notBefore: null,
      deadline: null,
      idempotencyKey: null,
      ...(node.deps.length > 0 ? { dependsOn: node.deps.map(id), onDependencyFailure: node.policy } : {}),
    };
  }

  /** Runs commands as one transaction would: decide, append, then propagate the ends. */
  run(items: readonly { i: number; command: TaskCommand }[]): void {
    const ended: number[] = [];
    for (const { i, command } of items) {
      let state = this.states.get(i) ?? initialTaskState(id(i));
      const events = decide(state, command);
      for (const event of events) {
        this.clock++;
        state = evolve(state, event);
        this.logs.set(i, [...(this.logs.get(i) ?? []), event]);
        if (event.type === 'TaskQueued') this.queuedAt.set(i, [...(this.queuedAt.get(i) ?? []), this.clock]);
        if (isTerminal(state.status) && ['TaskSucceeded', 'TaskFailed', 'TaskDeadLettered', 'TaskCancelled'].includes(event.type)) {
          this.endings.set(i, (this.endings.get(i) ?? 0) + 1);
          this.endedAt.set(i, this.clock);
          ended.push(i);
        }
      }
      this.states.set(i, state);
    }
    if (ended.length > 0) this.propagate(ended);
  }

  propagate(ended: readonly number[]): void {
    const resolvedBy = new Map<number, { id: string; state: DependencyState }[]>();
    for (const d of ended) {
      const state = (this.states.get(d) as TaskState).status as DependencyState;
      for (const [t, deps] of this.edges) {
        if (deps.has(d) && deps.get(d) === null) {
          deps.set(d, state);
          resolvedBy.set(t, [...(resolvedBy.get(t) ?? []), { id: id(d), state }]);
        }
      }
    }
    const commands: { i: number; command: TaskCommand }[] = [];
    for (const [t, resolved] of [...resolvedBy].sort(([a], [b]) => a - b)) {
      const left = this.waits.get(t);
      if (left === undefined) continue;
      const remaining = left - resolved.length;
      this.waits.set(t, remaining);
      if (remaining > 0 && resolved.every((r) => r.state === 'succeeded')) continue;
      const all = [...(this.edges.get(t) as Map<number, DependencyState | null>).values()];
      const outcomes = { succeeded: all.filter((s) => s === 'succeeded').length, failed: all.filter((s) => s === 'failed').length, cancelled: all.filter((s) => s === 'cancelled').length };
      commands.push({ i: t, command: { type: 'ResolveDependencies', data: { resolved, remaining, outcomes, now: this.now() } } });
    }
    if (commands.length > 0) this.run(commands);
  }

  submit(i: number): void {
    const node = this.nodes[i] as Node;
    const counts: { -readonly [K in keyof SubmitDependencies]: SubmitDependencies[K] } = { pending: 0, succeeded: 0, failed: 0, cancelled: 0, firstFailed: null, firstFailedState: null };
    const edges = new Map<number, DependencyState | null>();
    for (const d of node.deps) {
      const status = (this.states.get(d) as TaskState).status;
      const resolved = isTerminal(status) ? (status as DependencyState) : null;
      edges.set(d, resolved);
      if (resolved === null) counts.pending++;
      else counts[resolved]++;
      if ((resolved === 'failed' || resolved === 'cancelled') && counts.firstFailed === null) {
        counts.firstFailed = id(d);
        counts.firstFailedState = resolved;
      }
    }
    this.run([{ i, command: { type: 'SubmitTask', data: { task: this.spec(i), now: this.now(), ...(node.deps.length > 0 ? { dependencies: counts } : {}) } } }]);
    if (node.deps.length > 0) {
      this.edges.set(i, edges);
      if (this.states.get(i)?.status === 'waiting') this.waits.set(i, counts.pending);
    }
  }

  /** A fog node's result for a task whose attempt is queued. */
  finish(i: number, ok: boolean): void {
    const now = this.now();
    const command: TaskCommand = ok
      ? { type: 'SucceedTask', data: { attempt: 1, nodeId: 'n', output: i, durationMs: 1, startedAt: now, now } }
      : { type: 'FailTask', data: { attempt: 1, nodeId: 'n', error: { message: 'x', code: 'x', retryable: false }, startedAt: now, backoff: { baseMs: 1, factor: 1, maxMs: 1 }, random: 0, now } };
    this.run([{ i, command }]);
  }
}

describe('random DAGs', () => {
  it('every task ends exactly once; none is queued before its dependencies ended (succeeded, unless policy run); a refold agrees', () => {
    fc.assert(
      fc.property(dagArb, ([generated, actions, finals]) => {
        const nodes = generated as readonly Node[];
        const world = new World(nodes);
        let submitted = 0;
        const submittedIds = () => Array.from({ length: submitted }, (_, i) => i);
        for (const action of actions) {
          if (action.kind === 'submit') {
            if (submitted < nodes.length) world.submit(submitted++);
            continue;
          }
          const candidates = submittedIds().filter((i) => !isTerminal((world.states.get(i) as TaskState).status));
          if (candidates.length === 0) continue;
          const i = candidates[action.pick % candidates.length] as number;
          const status = (world.states.get(i) as TaskState).status;
          if (action.kind === 'cancel') world.run([{ i, command: { type: 'CancelTask', data: { actor: 'user', reason: null, now: world.now() } } }]);
          else if (status === 'queued') world.finish(i, action.kind === 'succeed');
        }
        while (submitted < nodes.length) world.submit(submitted++);
        // Drain: every queued task gets a result until none is left.
        let round = 0;
        for (;;) {
          const queued = submittedIds().filter((i) => world.states.get(i)?.status === 'queued');
          if (queued.length === 0) break;
          for (const i of queued) world.finish(i, finals[round++ % finals.length] as boolean);
        }

        nodes.forEach((node, i) => {
          const state = world.states.get(i) as TaskState;
          expect(isTerminal(state.status), `task ${i} ended (${state.status})`).toBe(true);
          expect(world.endings.get(i)).toBe(1);
          const log = world.logs.get(i) as TaskEvent[];
          expect(log.filter((e) => e.type === 'TaskReleased').length).toBeLessThanOrEqual(1);
          const queuedAt = world.queuedAt.get(i) ?? [];
          expect(queuedAt.length).toBeLessThanOrEqual(1);
          for (const at of queuedAt) {
            for (const d of node.deps) {
              const ended = world.endedAt.get(d);
              expect(ended !== undefined && ended < at, `dependency ${d} of ${i} ended before it was queued`).toBe(true);
              if (node.policy === 'cancel') expect(world.states.get(d)?.status).toBe('succeeded');
            }
          }
          if (node.deps.length > 0 && queuedAt.length > 0) {
            // A released task's TaskReleased came right before its TaskQueued.
            const q = log.findIndex((e) => e.type === 'TaskQueued');
            expect(log[q - 1]?.type).toBe('TaskReleased');
          }
          if (node.policy === 'cancel' && node.deps.some((d) => world.states.get(d)?.status !== 'succeeded') && node.deps.length > 0) {
            expect(state.status).toBe('cancelled');
          }
          // The rebuild: folding the stored (JSON) events again gives the same state.
          const stored = JSON.parse(JSON.stringify(log)) as TaskEvent[];
          expect(foldTask(id(i), stored)).toEqual(state);
          // Folding every prefix: the task is waiting exactly from its TaskWaiting until the event after its TaskReleased.
          stored.forEach((_, k) => {
            const prefix = stored.slice(0, k + 1);
            const w = prefix.findIndex((e) => e.type === 'TaskWaiting');
            const waiting = w >= 0 && prefix.slice(w + 1).every((e) => e.type === 'TaskReleased');
            expect(foldTask(id(i), prefix).status === 'waiting').toBe(waiting);
          });
        });
        // Pending counts agree with the unresolved edges of every task still counted.
        for (const [t, pending] of world.waits) {
          const unresolved = [...(world.edges.get(t) as Map<number, DependencyState | null>).values()].filter((s) => s === null).length;
          expect(pending).toBe(unresolved);
        }
      }),
      { numRuns: 400 },
    );
  });
});

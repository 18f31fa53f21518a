import { randomUUID } from 'node:crypto';
import type { TaskCommand, TaskSpec } from '../../src/domain/index.js';
import type { TopologyNames } from '../../src/outbox/index.js';
import type { Executor } from '../../src/store/index.js';
import { executeTaskCommands, type CommandItem } from '../../src/tasks/index.js';

/** What happens to a seeded task: one of each lifecycle a scheduler sees. */
export const OUTCOMES = ['succeeded', 'retried-then-succeeded', 'failed-then-requeued', 'cancelled', 'dead-lettered', 'exhausted', 'queued', 'returned'] as const;
export type Outcome = (typeof OUTCOMES)[number];

export function taskSpec(overrides: Partial<TaskSpec> = {}): TaskSpec {
  return {
    taskId: randomUUID(),
    tenant: 'default',
    type: 'noop',
    payload: { n: 1 },
    priority: 'normal',
    resources: { cpu: 0.1, memoryMb: 64 },
    tier: 'light',
    maxAttempts: 3,
    timeoutMs: null,
    notBefore: null,
    deadline: null,
    idempotencyKey: null,
    ...overrides,
  };
}

const BACKOFF = { baseMs: 10, factor: 2, maxMs: 100 };

/** The commands, step by step, that give a task its outcome (each step one round). */
function steps(outcome: Outcome, now: () => string): TaskCommand[][] {
  const start = (attempt: number): TaskCommand => ({ type: 'StartTask', data: { attempt, nodeId: `node-${attempt}`, now: now() } });
  const succeed = (attempt: number): TaskCommand => ({
    type: 'SucceedTask',
    data: { attempt, nodeId: `node-${attempt}`, output: { ok: attempt }, durationMs: 5, startedAt: now(), now: now() },
  });
  const fail = (attempt: number, retryable: boolean): TaskCommand => ({
    type: 'FailTask',
    data: {
      attempt,
      nodeId: `node-${attempt}`,
      error: { message: `boom ${attempt}`, code: retryable ? 'flaky' : 'bad_input', retryable },
      startedAt: now(),
      backoff: BACKOFF,
      random: 0.5,
      now: now(),
    },
  });
  switch (outcome) {
    case 'succeeded':
      return [[start(1)], [succeed(1)]];
    case 'retried-then-succeeded':
      return [[start(1)], [fail(1, true)], [start(2)], [succeed(2)]];
    case 'failed-then-requeued':
      return [[start(1)], [fail(1, false)], [{ type: 'RequeueTask', data: { actor: 'bob', now: now() } }]];
    case 'cancelled':
      return [[{ type: 'CancelTask', data: { actor: 'alice', reason: 'not needed', now: now() } }]];
    case 'dead-lettered':
      // Started, then dead-lettered: poison (a never-started attempt would be returned instead).
      return [[start(1)], [{ type: 'DeadLetterTask', data: { attempt: 1, reason: 'delivery-limit', queue: 'tasks.light.normal', now: now() } }]];
    case 'returned':
      // Given back by its node on shutdown, then its new message dead-lettered before it ever started: queued again.
      return [
        [start(1)],
        [{ type: 'ReturnTask', data: { attempt: 1, nodeId: 'node-1', reason: 'node-shutdown', returns: 0, now: now() } }],
        [{ type: 'DeadLetterTask', data: { attempt: 1, reason: 'delivery-limit', queue: 'tasks.light.normal', now: now(), returns: 0 } }],
      ];
    case 'exhausted':
      return [[start(1)], [fail(1, true)], [start(2)], [fail(2, true)], [start(3)], [fail(3, true)]];
    case 'queued':
      return [];
  }
}

/**
 * Submits `count` tasks in batches and drives each to an outcome (cycling through OUTCOMES),
 * through the same command path the API and ingest use. Returns the task ids by outcome.
 */
export async function seedTasks(
  db: { transaction(): { execute<T>(fn: (trx: Executor) => Promise<T>): Promise<T> } },
  names: TopologyNames,
  count: number,
  opts: { batchSize?: number; startIndex?: number } = {},
): Promise<Map<Outcome, string[]>> {
  const batchSize = opts.batchSize ?? 500;
  const byOutcome = new Map<Outcome, string[]>(OUTCOMES.map((o) => [o, []]));
  const now = () => new Date().toISOString();
  for (let from = 0; from < count; from += batchSize) {
    const tasks = Array.from({ length: Math.min(batchSize, count - from) }, (_, i) => {
      const outcome = OUTCOMES[((opts.startIndex ?? 0) + from + i) % OUTCOMES.length] as Outcome;
      return { spec: taskSpec(), outcome };
    });
    const submits: CommandItem[] = tasks.map((t) => ({
      taskId: t.spec.taskId,
      command: { type: 'SubmitTask', data: { task: t.spec, now: now() } },
      metadata: { tenant: 'default', actor: 'seed' },
    }));
    await db.transaction().execute((trx) => executeTaskCommands(trx, submits, names, new Set(tasks.map((t) => t.spec.taskId))));
    const plans = tasks.map((t) => ({ id: t.spec.taskId, steps: steps(t.outcome, now) }));
    for (let round = 0; ; round++) {
      const items: CommandItem[] = plans.flatMap((p) => {
        const step = p.steps[round];
        return step ? step.map((command) => ({ taskId: p.id, command, metadata: { tenant: 'default', actor: 'seed' } })) : [];
      });
      if (items.length === 0) break;
      await db.transaction().execute((trx) => executeTaskCommands(trx, items, names));
    }
    for (const t of tasks) byOutcome.get(t.outcome)?.push(t.spec.taskId);
  }
  return byOutcome;
}

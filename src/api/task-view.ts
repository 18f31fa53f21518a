import type { TaskState } from '../domain/index.js';
import type { TaskView } from './schemas.js';

/** The public shape of a task. */
export function toTaskView(s: TaskState): TaskView {
  const spec = s.spec;
  if (!spec) throw new Error(`task ${s.taskId} has no spec`);
  return {
    id: s.taskId,
    type: spec.type,
    state: s.status === 'new' ? 'queued' : s.status,
    tier: spec.tier,
    priority: spec.priority,
    attempt: s.attempt,
    maxAttempts: spec.maxAttempts,
    payload: spec.payload,
    resources: spec.resources,
    timeoutMs: spec.timeoutMs,
    notBefore: spec.notBefore,
    deadline: spec.deadline,
    idempotencyKey: spec.idempotencyKey,
    nodeId: s.nodeId,
    output: s.output ?? null,
    lastError: s.lastError,
    failureReason: s.failureReason,
    progress: s.progress,
    availableAt: s.availableAt,
    submittedAt: s.submittedAt ?? '',
    startedAt: s.startedAt,
    finishedAt: s.finishedAt,
    updatedAt: s.updatedAt ?? '',
    version: s.version,
    // Issue 20's fields only when set, so a task without them looks as it did before.
    ...(spec.name ? { name: spec.name } : {}),
    ...(spec.dependsOn && spec.dependsOn.length > 0 ? { dependsOn: [...spec.dependsOn], onDependencyFailure: spec.onDependencyFailure ?? 'cancel' } : {}),
    ...(spec.placement ? { placement: { ...spec.placement } } : {}),
    ...(spec.placement && typeof spec.fallbackAfterMs === 'number' ? { fallbackAfterMs: spec.fallbackAfterMs } : {}),
  };
}

import { Type, type Static } from '@sinclair/typebox';
import { PRIORITIES, TASK_STATUSES } from '../domain/index.js';

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T) => Type.Union([schema, Type.Null()]);

export const Problem = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String(),
    instance: Type.Optional(Type.String()),
    errors: Type.Optional(Type.Array(Type.Object({ path: Type.String(), message: Type.String() }))),
  },
  { $id: 'Problem', description: 'RFC 9457 problem details (application/problem+json)', additionalProperties: true },
);

export const PriorityT = Type.Union(PRIORITIES.map((p) => Type.Literal(p)), { description: 'default normal' });
export const StateT = Type.Union(TASK_STATUSES.map((s) => Type.Literal(s)));

export const ResourcesT = Type.Object(
  {
    cpu: Type.Number({ exclusiveMinimum: 0, maximum: 64, description: 'cores, e.g. 0.5' }),
    memoryMb: Type.Integer({ minimum: 1, maximum: 1048576 }),
  },
  { additionalProperties: false, description: 'decides the tier; default {cpu: 0.1, memoryMb: 64} (light)' },
);

export const SubmitBody = Type.Object(
  {
    type: Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9_.:/-]+$', description: 'handler name, e.g. noop, sleep, checksum' }),
    payload: Type.Optional(Type.Unknown({ description: 'any JSON, handed to the handler' })),
    priority: Type.Optional(PriorityT),
    resources: Type.Optional(ResourcesT),
    maxAttempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, description: 'default 3' })),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000 })),
    notBefore: Type.Optional(Type.String({ format: 'date-time', description: 'do not start before this time' })),
    deadline: Type.Optional(Type.String({ format: 'date-time', description: 'a task not started by then fails as expired' })),
    retry: Type.Optional(
      Type.Object(
        {
          baseMs: Type.Integer({ minimum: 0, maximum: 86_400_000 }),
          factor: Type.Number({ minimum: 1, maximum: 10 }),
          maxMs: Type.Integer({ minimum: 0, maximum: 86_400_000 }),
        },
        { additionalProperties: false, description: 'retry backoff of this task (default: the server settings RETRY_*)' },
      ),
    ),
  },
  { additionalProperties: false },
);
export type SubmitBody = Static<typeof SubmitBody>;

export const BatchBody = Type.Object(
  {
    // One closed object: an Intersect with SubmitBody's additionalProperties: false would refuse idempotencyKey.
    tasks: Type.Array(
      Type.Object({ ...SubmitBody.properties, idempotencyKey: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })) }, { additionalProperties: false }),
      { minItems: 1, maxItems: 1000 },
    ),
  },
  { additionalProperties: false },
);

export const TaskErrorT = Type.Object({ message: Type.String(), code: Type.String(), retryable: Type.Boolean() });

export const TaskView = Type.Object(
  {
    id: Type.String({ format: 'uuid' }),
    type: Type.String(),
    state: StateT,
    tier: Type.String(),
    priority: PriorityT,
    attempt: Type.Integer(),
    maxAttempts: Type.Integer(),
    payload: Type.Unknown(),
    resources: Type.Object({ cpu: Type.Number(), memoryMb: Type.Number() }),
    timeoutMs: Nullable(Type.Integer()),
    notBefore: Nullable(Type.String()),
    deadline: Nullable(Type.String()),
    idempotencyKey: Nullable(Type.String()),
    nodeId: Nullable(Type.String()),
    output: Type.Unknown(),
    lastError: Nullable(TaskErrorT),
    failureReason: Nullable(Type.String()),
    availableAt: Nullable(Type.String()),
    submittedAt: Type.String(),
    startedAt: Nullable(Type.String()),
    finishedAt: Nullable(Type.String()),
    updatedAt: Type.String(),
    version: Type.Integer({ description: 'events in the task stream' }),
    warnings: Type.Optional(Type.Array(Type.String(), { description: 'e.g. no live fog node serves the tier (the task is accepted and waits)' })),
  },
  { $id: 'Task' },
);
export type TaskView = Static<typeof TaskView>;

export const TaskIdParams = Type.Object({ id: Type.String({ format: 'uuid' }) });

export const ListQuery = Type.Object(
  {
    state: Type.Optional(StateT),
    priority: Type.Optional(PriorityT),
    type: Type.Optional(Type.String({ maxLength: 200 })),
    tier: Type.Optional(Type.String({ maxLength: 50 })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50 })),
    cursor: Type.Optional(Type.String({ pattern: '^[0-9]+$', description: 'nextCursor of the previous page' })),
  },
  { additionalProperties: false },
);

export const HistoryEntryT = Type.Object({
  position: Type.Integer(),
  version: Type.Integer(),
  type: Type.String(),
  state: Type.String(),
  attempt: Type.Integer(),
  nodeId: Nullable(Type.String()),
  actor: Nullable(Type.String()),
  reason: Nullable(Type.String()),
  error: Type.Unknown(),
  at: Type.String(),
  data: Type.Unknown(),
});

export const CancelBody = Type.Union([Type.Object({ reason: Type.Optional(Type.String({ maxLength: 1000 })) }, { additionalProperties: false }), Type.Null()]);

export const FailureReasonT = Type.Union(['non-retryable', 'max-attempts', 'delivery-limit', 'rejected', 'expired', 'timeout'].map((r) => Type.Literal(r)));

export const DlqFilter = Type.Object(
  {
    type: Type.Optional(Type.String({ maxLength: 200 })),
    reason: Type.Optional(FailureReasonT),
    since: Type.Optional(Type.String({ format: 'date-time', description: 'failed at or after' })),
    until: Type.Optional(Type.String({ format: 'date-time', description: 'failed before' })),
  },
  { additionalProperties: false },
);

export const DlqQuery = Type.Object(
  {
    ...DlqFilter.properties,
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50 })),
    cursor: Type.Optional(Type.String({ pattern: '^[0-9]+$' })),
  },
  { additionalProperties: false },
);

export const DlqRequeueBody = Type.Object(
  {
    ...DlqFilter.properties,
    dryRun: Type.Optional(Type.Boolean({ description: 'only count what would be requeued' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 1000 })),
  },
  { additionalProperties: false },
);

import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { PRIORITIES, TASK_STATUSES } from '../domain/index.js';

/**
 * The API's schemas. Every shape the API answers with is a named component (`$id`), added to
 * Fastify once (`SHARED_SCHEMAS`) and referenced everywhere else with `ref()`, so the OpenAPI
 * document has `#/components/schemas/Task` and the like instead of copies. Request bodies are
 * inline, each with an example; the pieces they share (`Resources`, `TaskTemplate`, ...) are
 * components too.
 */

/** Limits on what a request may carry, and on a page of a list, that are not settings (those are in ApiLimits). README lists both. */
export const INPUT_LIMITS = Object.freeze({
  /**
   * Bytes of payloads, outputs and errors (schedules: templates) as JSON text in one page of a
   * list; the page ends after the item that reaches it, with a nextCursor. Without it 500 items of
   * 256 KiB payloads (and larger outputs) were one answer of hundreds of MiB built in memory.
   */
  maxPageBytes: 8 * 1024 * 1024,
  /** Tasks in one POST /v1/tasks/batch. */
  maxBatchItems: 1000,
  /** Nesting of a JSON body (objects and arrays), the body itself being level 1. */
  maxJsonDepth: 32,
  /** notBefore and deadline at most this far ahead. */
  maxAheadMs: 10 * 365.25 * 86_400_000,
  /** A deadline up to this far in the past is taken as clock skew (the task expires at once). */
  deadlineSkewMs: 60_000,
  /** Every date-time the API reads lies between these (PostgreSQL has no year 0; JavaScript no leap second). */
  earliestTime: '1970-01-01T00:00:00Z',
  latestTime: '9999-12-31T23:59:59.999Z',
  /** Dependencies of one task (the domain's MAX_DEPENDENCIES); 10,000 ids are about 390 KB of JSON, well under API_BODY_LIMIT_BYTES (4 MiB). */
  maxDependencies: 10_000,
  /** Nodes of one GET /v1/tasks/{id}/graph answer; past it `truncated` is true. */
  maxGraphNodes: 10_000,
  /** Steps of one POST /v1/workflows (a batch: INPUT_LIMITS.maxBatchItems). */
  maxWorkflowSteps: 1000,
  /** Highest cursor: PostgreSQL's bigint. */
  maxCursor: 9_223_372_036_854_775_807n,
});

/** A `$ref` to a component schema that keeps its static type. */
export const ref = <T extends TSchema>(schema: T) => Type.Unsafe<Static<T>>(Type.Ref(schema.$id as string));

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()]);
const StringEnum = <const T extends readonly string[]>(values: T, options: { $id?: string; description?: string } = {}) =>
  Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
const DateTime = (description: string) => Type.String({ format: 'date-time', description: `${description} (RFC 3339, 1970 to 9999)` });
const TextId = (maxLength: number, description?: string) => Type.String({ minLength: 1, maxLength, ...(description ? { description } : {}) });

const TASK_ID_EXAMPLE = '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11';
const AT_EXAMPLE = '2026-11-27T10:15:30.123Z';

// ---------------------------------------------------------------- shared pieces

export const Priority = StringEnum(PRIORITIES, { $id: 'Priority', description: 'high before normal before low on each fog node (with aging); default normal' });
export const TaskState = StringEnum(TASK_STATUSES, { $id: 'TaskState' });
/** Inline forms for query strings: OpenAPI parameters carry their enum. */
export const PriorityQ = StringEnum(PRIORITIES);
export const StateQ = StringEnum(TASK_STATUSES);

export const FAILURE_REASONS = ['non-retryable', 'max-attempts', 'delivery-limit', 'rejected', 'expired', 'timeout'] as const;
export const FailureReasonQ = StringEnum(FAILURE_REASONS);

export const Resources = Type.Object(
  {
    cpu: Type.Number({ exclusiveMinimum: 0, maximum: 64, description: 'cores, e.g. 0.5' }),
    memoryMb: Type.Integer({ minimum: 1, maximum: 1048576 }),
  },
  { $id: 'Resources', additionalProperties: false, description: 'decides the tier; default {cpu: 0.1, memoryMb: 64} (light)' },
);

export const RetryPolicy = Type.Object(
  {
    baseMs: Type.Integer({ minimum: 0, maximum: 86_400_000 }),
    factor: Type.Number({ minimum: 1, maximum: 10 }),
    maxMs: Type.Integer({ minimum: 0, maximum: 86_400_000 }),
  },
  { $id: 'RetryPolicy', additionalProperties: false, description: 'retry backoff of this task (default: the server settings RETRY_*)' },
);

const TaskTypeT = Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9_.:/-]+$', description: 'handler name, e.g. noop, sleep, checksum' });
const PayloadT = Type.Unknown({ description: 'any JSON, handed to the handler (at most MAX_PAYLOAD_BYTES as JSON, default 256 KiB)' });

/** Where a task may run (issue 20): every given part must match the fog node. Validated again by the domain. */
export const Placement = Type.Object(
  {
    zone: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,39}$', description: "a fog node's FOG_NODE_ZONE, e.g. site-a" })),
    labels: Type.Optional(
      Type.Unsafe<Record<string, string>>({
        type: 'object',
        propertyNames: { pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' },
        additionalProperties: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,63}$' },
        maxProperties: 16,
        description: 'each must equal the label of the same key in FOG_NODE_LABELS (at most 16)',
      }),
    ),
  },
  {
    $id: 'Placement',
    additionalProperties: false,
    description: 'run only on a fog node of this zone and with these labels; a placement with neither is stored as null',
    examples: [{ zone: 'site-a', labels: { sensor: 'lidar' } }],
  },
);

const TaskIdT = Type.String({ format: 'uuid' });
const NameT = Type.String({ minLength: 1, maxLength: 100, description: 'free display name, e.g. a workflow step' });
const DependsOnT = (description: string) => Type.Array(TaskIdT, { maxItems: INPUT_LIMITS.maxDependencies, uniqueItems: true, description });
const OnDependencyFailureT = StringEnum(['cancel', 'run'] as const, {
  description: 'when a dependency fails or is cancelled: cancel this task (default, reason dependency-failed) or run it anyway (its handler sees each outcome); only with dependsOn',
});
const FallbackAfterMsT = Type.Integer({ minimum: 1, maximum: 604_800_000, description: 'after this long undelivered, any fog node of the tier may run it (TaskPlacementFallback); only with placement' });

/** The dependency and placement fields of a submit (issue 20), shared by tasks, batch items and workflow steps. */
// Not nullable: ajv's type coercion would read 0, false or "" as null.
const graphFields = {
  name: Type.Optional(NameT),
  onDependencyFailure: Type.Optional(OnDependencyFailureT),
  placement: Type.Optional(ref(Placement)),
  fallbackAfterMs: Type.Optional(FallbackAfterMsT),
};

const submitFields = {
  type: TaskTypeT,
  payload: Type.Optional(PayloadT),
  priority: Type.Optional(ref(Priority)),
  resources: Type.Optional(ref(Resources)),
  maxAttempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, description: 'default 3 (DEFAULT_MAX_ATTEMPTS)' })),
  timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000 })),
  notBefore: Type.Optional(DateTime('do not start before this time; at most 10 years ahead')),
  deadline: Type.Optional(DateTime('a task not started by then fails as expired; at most 10 years ahead, at most 60 s past')),
  retry: Type.Optional(ref(RetryPolicy)),
  id: Type.Optional(Type.String({ format: 'uuid', description: 'the task id, chosen by the client; a repeat with the same body returns the task (200), with another body 409 TASK_ID_CONFLICT' })),
  dependsOn: Type.Optional(
    DependsOnT(`tasks of this tenant (or of the same batch) that must end first; the task is waiting until then; at most ${INPUT_LIMITS.maxDependencies.toLocaleString('en')} (MAX_DEPENDENCIES)`),
  ),
  ...graphFields,
};

export const TaskTemplate = Type.Object(
  {
    type: TaskTypeT,
    payload: Type.Optional(PayloadT),
    priority: Type.Optional(ref(Priority)),
    resources: Type.Optional(ref(Resources)),
    maxAttempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000 })),
  },
  { $id: 'TaskTemplate', additionalProperties: false, description: 'the task each run of a schedule submits' },
);

export const Problem = Type.Object(
  {
    type: Type.String({ description: 'urn:fogsched:error:<code in kebab case>' }),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String({ description: 'stable; every code is listed in docs/errors.md' }),
    instance: Type.Optional(Type.String()),
    errors: Type.Optional(
      Type.Array(
        Type.Object(
          { path: Type.String({ description: 'e.g. body/tasks/3/priority, querystring/cursor, headers/idempotency-key' }), message: Type.String(), code: Type.Optional(Type.String()) },
          { additionalProperties: true },
        ),
      ),
    ),
  },
  { $id: 'Problem', description: 'RFC 9457 problem details (application/problem+json); further members by code (e.g. limitBytes, retryAfterSeconds, taskId)', additionalProperties: true },
);

// ---------------------------------------------------------------- what the API answers with

export const TaskError = Type.Object(
  {
    message: Type.String(),
    code: Type.String(),
    retryable: Type.Boolean(),
    name: Type.Optional(Type.String({ description: 'class name of the error the handler threw (e.g. TypeError), when not a plain Error' })),
  },
  { $id: 'TaskError' },
);

export const Task = Type.Object(
  {
    id: Type.String({ format: 'uuid' }),
    type: Type.String(),
    state: ref(TaskState),
    tier: Type.String(),
    priority: ref(Priority),
    attempt: Type.Integer(),
    maxAttempts: Type.Integer(),
    payload: Type.Unknown(),
    resources: ref(Resources),
    timeoutMs: Nullable(Type.Integer()),
    notBefore: Nullable(Type.String({ format: 'date-time' })),
    deadline: Nullable(Type.String({ format: 'date-time' })),
    idempotencyKey: Nullable(Type.String()),
    nodeId: Nullable(Type.String()),
    output: Type.Unknown(),
    lastError: Nullable(ref(TaskError)),
    failureReason: Nullable(Type.String()),
    progress: Nullable(
      Type.Object(
        {
          fraction: Type.Number({ minimum: 0, maximum: 1 }),
          message: Nullable(Type.String()),
          at: Type.String({ format: 'date-time', description: "the fog node's clock at the report" }),
        },
        { additionalProperties: false, description: "the current (or last) run's last progress report (ctx.progress); null until it reports, reset at each start" },
      ),
    ),
    availableAt: Nullable(Type.String({ format: 'date-time' })),
    submittedAt: Type.String({ format: 'date-time' }),
    startedAt: Nullable(Type.String({ format: 'date-time' })),
    finishedAt: Nullable(Type.String({ format: 'date-time' })),
    updatedAt: Type.String({ format: 'date-time' }),
    version: Type.Integer({ description: 'events in the task stream' }),
    name: Type.Optional(Type.String({ description: 'its display name (e.g. a workflow step), when set' })),
    dependsOn: Type.Optional(Type.Array(Type.String({ format: 'uuid' }), { description: 'the tasks it waits for, when any' })),
    onDependencyFailure: Type.Optional(StringEnum(['cancel', 'run'] as const, { description: 'with dependsOn' })),
    placement: Type.Optional(ref(Placement)),
    fallbackAfterMs: Type.Optional(Type.Integer({ description: 'with placement' })),
    warnings: Type.Optional(Type.Array(Type.String(), { description: 'e.g. no live fog node serves the tier, or none matches the placement (the task is accepted and waits)' })),
  },
  { $id: 'Task', additionalProperties: false },
);
export type TaskView = Static<typeof Task>;

const Cursor = Nullable(Type.String({ description: 'pass back as cursor for the next page; null on the last page' }));
export const TaskList = Type.Object({ items: Type.Array(ref(Task)), nextCursor: Cursor }, { $id: 'TaskList', additionalProperties: false });
export const BatchResult = Type.Object({ tasks: Type.Array(ref(Task), { description: 'in the order of the request' }) }, { $id: 'BatchResult', additionalProperties: false });

export const TaskGraphNode = Type.Object(
  {
    taskId: Type.String({ format: 'uuid' }),
    name: Nullable(Type.String()),
    type: Type.String(),
    state: ref(TaskState),
    tier: Type.String(),
    placement: Nullable(ref(Placement)),
    relation: StringEnum(['self', 'ancestor', 'descendant'] as const, { description: 'ancestor: a task it (transitively) depends on; descendant: one that depends on it' }),
    depth: Type.Integer({ minimum: 0, description: 'shortest number of edges from the task' }),
  },
  { $id: 'TaskGraphNode', additionalProperties: false },
);
export const TaskGraph = Type.Object(
  {
    taskId: Type.String({ format: 'uuid' }),
    nodes: Type.Array(ref(TaskGraphNode), { description: 'the task first, then ancestors and descendants by depth' }),
    edges: Type.Array(
      Type.Object({ from: Type.String({ format: 'uuid', description: 'the dependency' }), to: Type.String({ format: 'uuid', description: 'the dependant' }) }, { additionalProperties: false }),
      { description: 'between the nodes listed' },
    ),
    truncated: Type.Boolean({ description: `true when the graph has more than ${INPUT_LIMITS.maxGraphNodes.toLocaleString('en')} nodes (the nearest are listed) or more than 50,000 edges among them (the first are listed)` }),
  },
  { $id: 'TaskGraph', additionalProperties: false },
);
export const WorkflowResult = Type.Object(
  { steps: Type.Record(Type.String(), ref(Task), { description: 'each step name with its task' }) },
  { $id: 'WorkflowResult', additionalProperties: false },
);

export const HistoryEntry = Type.Object(
  {
    position: Type.Integer({ description: 'global position in the event log' }),
    version: Type.Integer(),
    type: Type.String({ description: 'event type, e.g. TaskSubmitted' }),
    state: Type.String({ description: 'the task state after this event' }),
    attempt: Type.Integer(),
    nodeId: Nullable(Type.String()),
    actor: Nullable(Type.String()),
    reason: Nullable(Type.String()),
    error: Type.Unknown(),
    at: Type.String({ format: 'date-time' }),
    data: Type.Unknown(),
    traceId: Nullable(Type.String({ description: "the event's trace id (W3C, 32 hex digits): every event of one submit shares it; see docs/tracing.md" })),
  },
  { $id: 'HistoryEntry', additionalProperties: false },
);
export const TaskHistory = Type.Object({ taskId: Type.String({ format: 'uuid' }), events: Type.Array(ref(HistoryEntry)) }, { $id: 'TaskHistory', additionalProperties: false });

export const RequeueResult = Type.Object(
  { matched: Type.Integer(), requeued: Type.Integer(), taskIds: Type.Array(Type.String({ format: 'uuid' })), dryRun: Type.Boolean() },
  { $id: 'RequeueResult', additionalProperties: false },
);

export const Schedule = Type.Object(
  {
    id: Type.String({ format: 'uuid' }),
    name: Type.String(),
    cron: Type.String(),
    timezone: Type.String(),
    catchUp: StringEnum(['skip', 'once'] as const),
    state: StringEnum(['active', 'paused', 'deleted'] as const),
    template: ref(TaskTemplate),
    nextFireAt: Nullable(Type.String({ format: 'date-time' })),
    lastFiredAt: Nullable(Type.String({ format: 'date-time' })),
    lastTaskId: Nullable(Type.String({ format: 'uuid' })),
    firedCount: Type.Integer(),
    createdAt: Type.String({ format: 'date-time' }),
    updatedAt: Type.String({ format: 'date-time' }),
  },
  { $id: 'Schedule', additionalProperties: false },
);
export const ScheduleList = Type.Object({ items: Type.Array(ref(Schedule)), nextCursor: Cursor }, { $id: 'ScheduleList', additionalProperties: false });

const NullableString = (options: Parameters<typeof Type.String>[0] = {}) => Nullable(Type.String(options));
const NullableNumber = Nullable(Type.Number());
export const BrokerStatus = Type.Object(
  {
    name: Type.String({ description: 'Erlang node name' }),
    member: Type.Boolean({ description: 'in rabbitmq:cluster:members' }),
    master: Type.Boolean({ description: 'rabbitmq:cluster:master names it' }),
    lastHeartbeat: NullableString({ format: 'date-time' }),
    healthy: Type.Boolean({ description: 'its last successful probe is at most two coordinator intervals old' }),
  },
  { $id: 'BrokerStatus' },
);
export const FogNodeStatus = Type.Object(
  {
    id: Type.String(),
    tier: NullableString(),
    zone: NullableString({ description: 'FOG_NODE_ZONE; null when the node has none' }),
    labels: Type.Record(Type.String(), Type.String(), { description: 'FOG_NODE_LABELS; {} when none' }),
    slots: NullableNumber,
    inFlight: NullableNumber,
    cpu: NullableNumber,
    memMb: NullableNumber,
    version: NullableString(),
    lastSeen: NullableString({ format: 'date-time' }),
    state: StringEnum(['up', 'stopped', 'expired'] as const),
  },
  { $id: 'FogNodeStatus' },
);
export const Cluster = Type.Object(
  {
    redis: StringEnum(['ok', 'unavailable'] as const),
    error: Type.Optional(Type.String()),
    leader: NullableString({ description: 'coordinator replica holding the lease' }),
    brokers: Type.Array(ref(BrokerStatus)),
    fogNodes: Type.Array(ref(FogNodeStatus)),
  },
  { $id: 'Cluster' },
);

export const Health = Type.Object({ status: Type.Literal('ok') }, { $id: 'Health' });
export const Readiness = Type.Object(
  {
    status: StringEnum(['ready', 'degraded', 'unavailable'] as const),
    checks: Type.Record(Type.String(), Type.Object({ ok: Type.Boolean(), critical: Type.Boolean() }), { description: 'each check by name; never an error text (that goes to the log)' }),
    details: Type.Optional(
      Type.Object(
        {
          limits: Type.Union([
            Type.Object({
              ratePerSecond: Type.Union([Type.Number(), Type.Null()]),
              burst: Type.Union([Type.Integer(), Type.Null()]),
              maxActiveTasks: Type.Union([Type.Integer(), Type.Null()]),
              state: StringEnum(['enforced', 'fail-open'] as const, { description: 'fail-open: Redis does not answer and every submit is let through' }),
              failingOpenSince: Type.Optional(Type.String({ format: 'date-time' })),
            }),
            Type.Null(),
          ]),
        },
        { description: 'only for an authenticated operator' },
      ),
    ),
  },
  { $id: 'Readiness' },
);

/** Added to Fastify in this order (a schema's references first). */
export const SHARED_SCHEMAS: readonly TSchema[] = [
  Priority,
  TaskState,
  Resources,
  RetryPolicy,
  Placement,
  TaskTemplate,
  Problem,
  TaskError,
  Task,
  TaskList,
  BatchResult,
  TaskGraphNode,
  TaskGraph,
  WorkflowResult,
  HistoryEntry,
  TaskHistory,
  RequeueResult,
  Schedule,
  ScheduleList,
  BrokerStatus,
  FogNodeStatus,
  Cluster,
  Health,
  Readiness,
];

// ---------------------------------------------------------------- requests

export const SubmitBody = Type.Object(submitFields, {
  additionalProperties: false,
  examples: [{ type: 'checksum', payload: { data: 'hello' }, priority: 'high', resources: { cpu: 0.5, memoryMb: 256 }, maxAttempts: 3, timeoutMs: 30000 }],
});
export type SubmitBody = Static<typeof SubmitBody>;

export const BatchBody = Type.Object(
  {
    // One closed object: an Intersect with SubmitBody's additionalProperties: false would refuse idempotencyKey.
    tasks: Type.Array(
      Type.Object({ ...submitFields, idempotencyKey: Type.Optional(TextId(200, 'a retried batch with the same key returns the first task for this item')) }, { additionalProperties: false }),
      { minItems: 1, maxItems: INPUT_LIMITS.maxBatchItems },
    ),
  },
  {
    additionalProperties: false,
    examples: [
      {
        tasks: [
          { type: 'noop', idempotencyKey: 'order-42' },
          { type: 'sleep', payload: { ms: 10 }, priority: 'low' },
          { id: '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f12', type: 'fetch', placement: { zone: 'site-a' } },
          { type: 'aggregate', dependsOn: ['0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f12'], resources: { cpu: 1, memoryMb: 1024 } },
        ],
      },
    ],
  },
);

// A step's id is the API's to assign (deterministic from the Idempotency-Key), its dependsOn names steps too.
const { id: _id, dependsOn: _dependsOn, ...stepFields } = submitFields;
const StepNameT = Type.String({ minLength: 1, maxLength: 49, pattern: '^[A-Za-z0-9_.:-]+$', description: 'unique in the workflow; names the task (after the workflow name) unless the step gives a name' });

export const WorkflowBody = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 50, description: "the workflow's name: each step task is named <name>/<step> unless the step gives a name" })),
    onDependencyFailure: Type.Optional(OnDependencyFailureT),
    steps: Type.Array(
      Type.Object(
        {
          ...stepFields,
          step: StepNameT,
          dependsOn: Type.Optional(
            Type.Array(Type.String({ minLength: 1, maxLength: 49, description: 'a step name of this workflow or the uuid of an existing task of the tenant (a step name wins)' }), {
              maxItems: INPUT_LIMITS.maxDependencies,
              uniqueItems: true,
            }),
          ),
        },
        { additionalProperties: false },
      ),
      { minItems: 1, maxItems: INPUT_LIMITS.maxWorkflowSteps },
    ),
  },
  {
    additionalProperties: false,
    examples: [
      {
        name: 'lidar-2026-11-27',
        steps: [
          { step: 'fetch', type: 'fetch-scan', placement: { zone: 'site-a' }, fallbackAfterMs: 600000 },
          { step: 'process', type: 'denoise', dependsOn: ['fetch'], resources: { cpu: 0.75, memoryMb: 768 } },
          { step: 'aggregate', type: 'merge-scans', dependsOn: ['process'], resources: { cpu: 1, memoryMb: 1024 }, placement: { zone: 'region-1' } },
        ],
      },
    ],
  },
);
export type WorkflowBody = Static<typeof WorkflowBody>;

export const IdempotencyHeaders = Type.Object({
  'idempotency-key': Type.Optional(TextId(200, 'a retried submit with the same key returns the first task')),
});

export const TaskIdParams = Type.Object({ id: Type.String({ format: 'uuid', description: 'task id' }) });
export const ScheduleIdParams = Type.Object({ id: Type.String({ format: 'uuid', description: 'schedule id' }) });

const CursorQ = Type.String({ pattern: '^[1-9][0-9]{0,18}$', description: 'nextCursor of the previous page (a position; 1 to 9223372036854775807)' });
const LimitQ = (max: number, def: number) => Type.Integer({ minimum: 1, maximum: max, default: def });
/** A list's page size: at most `max` items, and fewer once they hold 8 MiB (INPUT_LIMITS.maxPageBytes). */
const PageLimitQ = (max: number, def: number) =>
  Type.Integer({ minimum: 1, maximum: max, default: def, description: `items per page; a page also ends once its items hold about ${INPUT_LIMITS.maxPageBytes / 1024 / 1024} MiB of payloads and outputs (follow nextCursor)` });

export const ListQuery = Type.Object(
  {
    state: Type.Optional(StateQ),
    priority: Type.Optional(PriorityQ),
    type: Type.Optional(Type.String({ maxLength: 200 })),
    tier: Type.Optional(Type.String({ maxLength: 50 })),
    limit: Type.Optional(PageLimitQ(500, 50)),
    cursor: Type.Optional(CursorQ),
  },
  { additionalProperties: false },
);

export const ScheduleListQuery = Type.Object({ limit: Type.Optional(PageLimitQ(500, 50)), cursor: Type.Optional(CursorQ) }, { additionalProperties: false });

/** Operations whose body may be left out (the OpenAPI document says `required: false`). */
export const OPTIONAL_BODY_OPERATIONS: readonly string[] = ['cancelTask'];

export const CancelBody = Type.Union([Type.Object({ reason: Type.Optional(Type.String({ maxLength: 1000 })) }, { additionalProperties: false }), Type.Null()], {
  examples: [{ reason: 'not needed any more' }],
});

const dlqFilter = {
  type: Type.Optional(Type.String({ maxLength: 200 })),
  reason: Type.Optional(FailureReasonQ),
  since: Type.Optional(DateTime('failed at or after')),
  until: Type.Optional(DateTime('failed before')),
};

export const DlqQuery = Type.Object({ ...dlqFilter, limit: Type.Optional(PageLimitQ(500, 50)), cursor: Type.Optional(CursorQ) }, { additionalProperties: false });

export const DlqRequeueBody = Type.Object(
  {
    ...dlqFilter,
    dryRun: Type.Optional(Type.Boolean({ description: 'only count what would be requeued' })),
    limit: Type.Optional(LimitQ(1000, 1000)),
  },
  { additionalProperties: false, examples: [{ type: 'checksum', reason: 'delivery-limit', since: '2026-11-01T00:00:00Z', dryRun: true }] },
);

export const ScheduleBody = Type.Object(
  {
    name: Type.Optional(TextId(200)),
    cron: Type.String({ minLength: 1, maxLength: 200, description: 'five fields, or six with seconds first (e.g. "*/10 * * * * *"); runs at most every SCHEDULE_MIN_INTERVAL_MS' }),
    timezone: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'IANA zone, default UTC' })),
    catchUp: Type.Optional(StringEnum(['skip', 'once'] as const, { description: 'missed runs: skip them (default) or run once' })),
    template: ref(TaskTemplate),
  },
  { additionalProperties: false, examples: [{ name: 'nightly checksum', cron: '0 2 * * *', timezone: 'Europe/Berlin', catchUp: 'once', template: { type: 'checksum', payload: { data: 'x' } } }] },
);

// ---------------------------------------------------------------- responses

export const TASK_EXAMPLE: TaskView = {
  id: TASK_ID_EXAMPLE,
  type: 'checksum',
  state: 'queued',
  tier: 'light',
  priority: 'high',
  attempt: 1,
  maxAttempts: 3,
  payload: { data: 'hello' },
  resources: { cpu: 0.5, memoryMb: 256 },
  timeoutMs: 30000,
  notBefore: null,
  deadline: null,
  idempotencyKey: null,
  nodeId: null,
  output: null,
  lastError: null,
  failureReason: null,
  progress: null,
  availableAt: AT_EXAMPLE,
  submittedAt: AT_EXAMPLE,
  startedAt: null,
  finishedAt: null,
  updatedAt: AT_EXAMPLE,
  version: 2,
};

export const SCHEDULE_EXAMPLE: Static<typeof Schedule> = {
  id: '0193a5b2-9d10-7a3c-8e21-4f5a6b7c8d90',
  name: 'nightly checksum',
  cron: '0 2 * * *',
  timezone: 'Europe/Berlin',
  catchUp: 'once',
  state: 'active',
  template: { type: 'checksum', payload: { data: 'x' } },
  nextFireAt: '2026-11-28T01:00:00.000Z',
  lastFiredAt: null,
  lastTaskId: null,
  firedCount: 0,
  createdAt: AT_EXAMPLE,
  updatedAt: AT_EXAMPLE,
};

export const HISTORY_EXAMPLE: Static<typeof TaskHistory> = {
  taskId: TASK_ID_EXAMPLE,
  events: [
    { position: 101, version: 1, type: 'TaskSubmitted', state: 'queued', attempt: 1, nodeId: null, actor: 'alice', reason: null, error: null, at: AT_EXAMPLE, data: {}, traceId: '4bf92f3577b34da6a3ce929d0e0e4736' },
    { position: 102, version: 2, type: 'TaskStarted', state: 'running', attempt: 1, nodeId: 'edge-1', actor: null, reason: null, error: null, at: AT_EXAMPLE, data: {}, traceId: '4bf92f3577b34da6a3ce929d0e0e4736' },
  ],
};

/** A JSON response with an example. */
export function json<T extends TSchema>(schema: T, description: string, example: Static<T>, headers?: Record<string, TSchema>) {
  return { description, ...(headers ? { headers } : {}), content: { 'application/json': { schema, example } } };
}

const RetryAfter = Type.Integer({ minimum: 1, description: 'seconds to wait before retrying' });

/** What each error status means, with an example problem; `problems(...)` declares them on an operation. */
const PROBLEMS = {
  400: { code: 'VALIDATION_FAILED', detail: 'body/priority must be equal to one of the allowed values', text: 'the request does not match the schema (VALIDATION_FAILED, each violation in errors[] with its path), is not valid JSON or HTTP, or carries a NUL character' },
  401: { code: 'UNAUTHORIZED', detail: 'the API key is not valid', text: 'no credential, or one that is not valid' },
  403: { code: 'FORBIDDEN', detail: 'role submitter may not call this operation', text: "the credential's role may not call this operation" },
  404: { code: 'TASK_NOT_FOUND', detail: `task ${TASK_ID_EXAMPLE} does not exist`, text: 'no such task or schedule for this tenant' },
  409: { code: 'TASK_NOT_CANCELLABLE', detail: `task ${TASK_ID_EXAMPLE} is succeeded and can no longer be cancelled`, text: 'the state does not allow it (e.g. cancel of a finished task, requeue of one that has not failed, too many schedules)' },
  413: { code: 'PAYLOAD_TOO_LARGE', detail: 'body/payload is 300000 bytes as JSON; the limit is 262144', text: 'the body is over the body limit (FST_ERR_CTP_BODY_TOO_LARGE) or a payload over MAX_PAYLOAD_BYTES (PAYLOAD_TOO_LARGE)' },
  415: { code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE', detail: 'Unsupported Media Type', text: 'the body is not application/json' },
  422: { code: 'NO_TIER_FITS', detail: 'no tier can run a task needing 8 cpu and 64 MB', text: 'understood but refused: no tier fits the resources, an Idempotency-Key reused for another request, or a batch larger than the tenant\'s burst' },
  429: { code: 'RATE_LIMITED', detail: 'tenant acme may submit 100 tasks per second', text: 'a per-tenant limit (submit rate or active tasks); see Retry-After' },
  503: { code: 'SERVICE_UNAVAILABLE', detail: 'postgresql is unavailable; retry later', text: 'PostgreSQL is unavailable, the submit queue is full (SUBMIT_QUEUE_FULL) or a JWT key set cannot be fetched; nothing was written; see Retry-After' },
} as const;
export type ProblemStatus = keyof typeof PROBLEMS;

export function problems<S extends ProblemStatus>(...statuses: S[]) {
  const out = {} as Record<S, { description: string; headers?: Record<string, TSchema>; content: { 'application/problem+json': { schema: ReturnType<typeof ref<typeof Problem>>; example: Static<typeof Problem> } } }>;
  for (const status of statuses) {
    const p = PROBLEMS[status];
    out[status] = {
      description: p.text,
      ...(status === 429 || status === 503 ? { headers: { 'retry-after': RetryAfter } } : {}),
      content: {
        'application/problem+json': {
          schema: ref(Problem),
          example: { type: `urn:fogsched:error:${p.code.toLowerCase().replace(/_/g, '-')}`, title: TITLES[status], status, detail: p.detail, code: p.code },
        },
      },
    };
  }
  return out;
}

/**
 * One more problem an operation may answer with, beside the generic ones of `problems()`: its own
 * code, example and text. Spread after `problems(...)`, it replaces that status's entry.
 */
export function problemOf(status: ProblemStatus, code: string, detail: string, text: string) {
  const generic = problems(status)[status];
  const content = generic.content['application/problem+json'];
  return {
    [status]: {
      ...generic,
      description: text,
      content: { 'application/problem+json': { schema: content.schema, example: { ...content.example, type: `urn:fogsched:error:${code.toLowerCase().replace(/_/g, '-')}`, detail, code } } },
    },
  } as Record<typeof status, typeof generic>;
}

/** Titles of the problem statuses (RFC 9110 reason phrases). */
export const TITLES: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  409: 'Conflict',
  413: 'Content Too Large',
  414: 'URI Too Long',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** The statuses every /v1 operation declares: bad input, authentication, role, PostgreSQL down. */
export const V1_PROBLEMS = [400, 401, 403, 503] as const;
/** Operations that read a body (POST, DELETE) also declare body too large and wrong content type. */
export const BODY_PROBLEMS = [400, 401, 403, 413, 415, 503] as const;


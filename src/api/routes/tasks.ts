import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { TaskNotFoundError } from '../../domain/index.js';
import { getTask, getTaskGraph, getTaskHistory, listTasks } from '../../projections/index.js';
import {
  BatchBody,
  BatchResult,
  CancelBody,
  HISTORY_EXAMPLE,
  IdempotencyHeaders,
  INPUT_LIMITS,
  ListQuery,
  SubmitBody,
  Task,
  TASK_EXAMPLE,
  TaskHistory,
  TaskIdParams,
  TaskGraph,
  TaskList,
  json,
  problemOf,
  problems,
  ref,
} from '../schemas.js';
import { withWarnings } from '../placement-warning.js';
import { toTaskView } from '../task-view.js';
import { DEFAULT_API_LIMITS, type ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';
import { noteTask } from '../request-trace.js';
import { checkPayloadSizes, checkTaskTimes, nextCursorOf, parseCursor } from '../input.js';

/** The problems a submit (single, batch item, workflow step) adds for its id, dependencies and placement. */
export const SUBMIT_GRAPH_PROBLEMS = {
  ...problemOf(
    400,
    'INVALID_DEPENDENCIES',
    'body/dependsOn: task 0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11 does not exist',
    'the request does not match the schema (VALIDATION_FAILED); dependsOn names an unknown or foreign task, the task itself, more than 10,000 tasks, or makes a cycle (INVALID_DEPENDENCIES); placement or fallbackAfterMs is not valid (INVALID_PLACEMENT); each in errors[] with its path. Nothing written',
  ),
  ...problemOf(409, 'TASK_ID_CONFLICT', 'task 0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11 exists with another body', 'a task with this id exists with another body or in another tenant (TASK_ID_CONFLICT)'),
};

const Location = { location: { type: 'string', description: 'the task: /v1/tasks/{id}' } } as never;

export const taskRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  const maxPayloadBytes = deps.inputLimits?.maxPayloadBytes ?? DEFAULT_API_LIMITS.maxPayloadBytes;

  app.post(
    '/v1/tasks',
    {
      config: { access: 'submitter' },
      schema: {
        operationId: 'submitTask',
        summary: 'Submit a task',
        description: 'Answered after the task and its dispatch are committed. 202 for a new task, 200 when an Idempotency-Key replays an earlier submit.',
        tags: ['tasks'],
        headers: IdempotencyHeaders,
        body: SubmitBody,
        response: {
          200: json(ref(Task), 'an earlier submit with this Idempotency-Key and the same body: its task', TASK_EXAMPLE, Location),
          202: json(ref(Task), 'accepted: the task is stored and its dispatch committed', TASK_EXAMPLE, Location),
          ...problems(400, 401, 403, 413, 415, 422, 429, 503),
          ...SUBMIT_GRAPH_PROBLEMS,
        },
      },
    },
    async (request, reply) => {
      checkTaskTimes(request.body, 'body');
      checkPayloadSizes([{ path: 'body/payload', payload: request.body.payload }], maxPayloadBytes);
      // Asked now, not after the write: a Redis that does not answer then costs one command timeout, not
      // two in a row. Caught here, since a refused submit never awaits it; unknown is null anyway.
      const liveTiers = deps.liveTiers?.().catch(() => null);
      const liveNodes = deps.liveNodes?.().catch(() => null);
      await admit(deps, request, reply, 1);
      const { task, created } = await deps.tasks.submit({ ...request.body, idempotencyKey: request.headers['idempotency-key'] ?? null }, callerOf(request));
      noteTask(request, reply, task.taskId);
      // Accepted all the same: the dispatch waits on its queue until a node of that tier (and placement) joins.
      const view = withWarnings(toTaskView(task), await liveTiers, await liveNodes);
      return reply.code(created ? 202 : 200).header('location', `/v1/tasks/${task.taskId}`).send(view);
    },
  );

  app.post(
    '/v1/tasks/batch',
    {
      config: { access: 'submitter' },
      schema: {
        operationId: 'submitTaskBatch',
        summary: 'Submit up to 1,000 tasks in one transaction',
        description: 'All or nothing: an invalid item fails the whole batch with its index in the problem. An item may name tasks of the same batch in dependsOn (by their id).',
        tags: ['tasks'],
        body: BatchBody,
        response: { 202: json(ref(BatchResult), 'every task of the batch, stored', { tasks: [TASK_EXAMPLE] }), ...problems(400, 401, 403, 413, 415, 422, 429, 503), ...SUBMIT_GRAPH_PROBLEMS },
      },
    },
    async (request, reply) => {
      request.body.tasks.forEach((t, index) => checkTaskTimes(t, `body/tasks/${index}`));
      checkPayloadSizes(request.body.tasks.map((t, index) => ({ path: `body/tasks/${index}/payload`, payload: t.payload })), maxPayloadBytes);
      const liveTiers = deps.liveTiers?.().catch(() => null);
      const liveNodes = deps.liveNodes?.().catch(() => null);
      await admit(deps, request, reply, request.body.tasks.length);
      const results = await deps.tasks.submitBatch(
        request.body.tasks.map((t) => ({ ...t, idempotencyKey: t.idempotencyKey ?? null })),
        callerOf(request),
      );
      const [tiers, nodes] = [await liveTiers, await liveNodes];
      return reply.code(202).send({ tasks: results.map((r) => withWarnings(toTaskView(r.task), tiers, nodes)) });
    },
  );

  app.get(
    '/v1/tasks/:id',
    {
      config: { access: 'submitter' },
      schema: {
        operationId: 'getTask',
        summary: 'Get a task',
        tags: ['tasks'],
        params: TaskIdParams,
        response: { 200: json(ref(Task), 'the task', TASK_EXAMPLE), ...problems(400, 401, 403, 404, 503) },
      },
    },
    async (request) => {
      const task = await getTask(deps.db, callerOf(request).tenant, request.params.id);
      if (!task) throw new TaskNotFoundError(request.params.id);
      return toTaskView(task);
    },
  );

  app.get(
    '/v1/tasks/:id/graph',
    {
      config: { access: 'submitter' },
      schema: {
        operationId: 'getTaskGraph',
        summary: "A task's dependencies and dependants, transitively, with their states",
        description: `Ancestors (what it waits for) and descendants (what waits for it), each with its shortest distance, and the edges between them; at most ${INPUT_LIMITS.maxGraphNodes.toLocaleString('en')} nodes (the nearest; then truncated is true).`,
        tags: ['tasks'],
        params: TaskIdParams,
        response: { 200: json(ref(TaskGraph), 'the graph around the task', GRAPH_EXAMPLE), ...problems(400, 401, 403, 404, 503) },
      },
    },
    async (request) => {
      const graph = await getTaskGraph(deps.db, callerOf(request).tenant, request.params.id, { maxNodes: INPUT_LIMITS.maxGraphNodes });
      if (!graph) throw new TaskNotFoundError(request.params.id);
      return graph;
    },
  );

  app.get(
    '/v1/tasks',
    {
      config: { access: 'submitter' },
      schema: {
        operationId: 'listTasks',
        summary: 'List tasks, newest first',
        description: 'Pass nextCursor back as cursor for the next page; the order is stable while tasks are added.',
        tags: ['tasks'],
        querystring: ListQuery,
        response: { 200: json(ref(TaskList), 'a page of tasks', { items: [TASK_EXAMPLE], nextCursor: '1042' }), ...problems(400, 401, 403, 503) },
      },
    },
    async (request) => {
      const q = request.query;
      const limit = q.limit ?? 50;
      const beforeSeq = parseCursor(q.cursor);
      const rows = await listTasks(deps.db, {
        tenant: callerOf(request).tenant,
        limit,
        ...(q.state ? { state: q.state } : {}),
        ...(q.priority ? { priority: q.priority } : {}),
        ...(q.type ? { type: q.type } : {}),
        ...(q.tier ? { tier: q.tier } : {}),
        ...(beforeSeq !== undefined ? { beforeSeq } : {}),
        maxBytes: INPUT_LIMITS.maxPageBytes,
      });
      return { items: rows.map((r) => toTaskView(r.state)), nextCursor: nextCursorOf(rows, limit) };
    },
  );

  app.get(
    '/v1/tasks/:id/history',
    {
      config: { access: 'submitter' },
      schema: {
        operationId: 'getTaskHistory',
        summary: "A task's lifecycle events, oldest first",
        tags: ['tasks'],
        params: TaskIdParams,
        response: { 200: json(ref(TaskHistory), 'the events of the task', HISTORY_EXAMPLE), ...problems(400, 401, 403, 404, 503) },
      },
    },
    async (request) => {
      const task = await getTask(deps.db, callerOf(request).tenant, request.params.id);
      if (!task) throw new TaskNotFoundError(request.params.id);
      return { taskId: task.taskId, events: await getTaskHistory(deps.db, task.taskId) };
    },
  );

  app.post(
    '/v1/tasks/:id/cancel',
    {
      config: { access: 'operator' },
      schema: {
        operationId: 'cancelTask',
        summary: 'Cancel a task that has not finished',
        description: 'Cancelling a cancelled task returns it unchanged; a succeeded or failed task gives 409. The body is optional.',
        tags: ['tasks'],
        params: TaskIdParams,
        body: CancelBody,
        response: {
          200: json(ref(Task), 'the task, cancelled', { ...TASK_EXAMPLE, state: 'cancelled', version: 3, finishedAt: TASK_EXAMPLE.updatedAt }),
          ...problems(400, 401, 403, 404, 409, 413, 415, 503),
        },
      },
    },
    async (request) => {
      const task = await deps.tasks.cancel(request.params.id, callerOf(request), request.body?.reason ?? null);
      await deps.recordCancelled?.(task.taskId).catch((error: unknown) => request.log.warn({ err: (error as Error).message, taskId: task.taskId }, 'cancel not recorded in redis'));
      return toTaskView(task);
    },
  );
};

const GRAPH_EXAMPLE = {
  taskId: TASK_EXAMPLE.id,
  nodes: [
    { taskId: TASK_EXAMPLE.id, name: 'process', type: 'denoise', state: 'waiting' as const, tier: 'medium', placement: null, relation: 'self' as const, depth: 0 },
    { taskId: '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f10', name: 'fetch', type: 'fetch-scan', state: 'running' as const, tier: 'light', placement: { zone: 'site-a' }, relation: 'ancestor' as const, depth: 1 },
    { taskId: '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f12', name: 'aggregate', type: 'merge-scans', state: 'waiting' as const, tier: 'heavy', placement: { zone: 'region-1' }, relation: 'descendant' as const, depth: 1 },
  ],
  edges: [
    { from: '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f10', to: TASK_EXAMPLE.id },
    { from: TASK_EXAMPLE.id, to: '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f12' },
  ],
  truncated: false,
};

/** The tenant's submit limits (each task counts); a refusal carries Retry-After. */
export async function admit(deps: ApiDeps, request: FastifyRequest, reply: FastifyReply, tasks: number): Promise<void> {
  try {
    await deps.limits?.admit(callerOf(request).tenant, tasks);
  } catch (error) {
    const retryAfter = (error as { retryAfterSeconds?: unknown }).retryAfterSeconds;
    if (typeof retryAfter === 'number') reply.header('retry-after', String(retryAfter));
    throw error;
  }
}

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { listFailedTasks } from '../../projections/index.js';
import { DlqQuery, DlqRequeueBody, INPUT_LIMITS, RequeueResult, Task, TASK_EXAMPLE, TaskIdParams, TaskList, json, problems, ref } from '../schemas.js';
import { toTaskView } from '../task-view.js';
import type { ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';
import { nextCursorOf, parseCursor } from '../input.js';

const FAILED_EXAMPLE = {
  ...TASK_EXAMPLE,
  state: 'failed' as const,
  attempt: 3,
  failureReason: 'max-attempts',
  lastError: { message: 'checksum mismatch', code: 'handler_error', retryable: true },
  finishedAt: TASK_EXAMPLE.updatedAt,
  version: 11,
};

/** Failed tasks (what the dead-letter queue turned into) and putting them back. */
export const dlqRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  app.get(
    '/v1/dlq',
    {
      config: { access: 'auditor' },
      schema: {
        operationId: 'listFailedTasks',
        summary: 'Failed tasks with their reason and last error, newest first',
        description: 'Filter by type, reason (non-retryable, max-attempts, delivery-limit, rejected, expired, timeout) and failure time.',
        tags: ['dlq'],
        querystring: DlqQuery,
        response: { 200: json(ref(TaskList), 'a page of failed tasks', { items: [FAILED_EXAMPLE], nextCursor: null }), ...problems(400, 401, 403, 503) },
      },
    },
    async (request) => {
      const { limit = 50, cursor, ...filter } = request.query;
      const beforeSeq = parseCursor(cursor);
      const rows = await listFailedTasks(deps.db, { ...filter, tenant: callerOf(request).tenant, limit, ...(beforeSeq !== undefined ? { beforeSeq } : {}), maxBytes: INPUT_LIMITS.maxPageBytes });
      return { items: rows.map((r) => toTaskView(r.state)), nextCursor: nextCursorOf(rows, limit) };
    },
  );

  app.post(
    '/v1/dlq/requeue',
    {
      config: { access: 'operator' },
      schema: {
        operationId: 'requeueFailedTasks',
        summary: 'Requeue the failed tasks matching a filter (up to 1,000 per call)',
        description: 'Each gets a fresh set of attempts, recorded as TaskRequeued with the actor of the credential (X-Actor goes beside it as onBehalfOf). With dryRun only the count is returned.',
        tags: ['dlq'],
        body: DlqRequeueBody,
        response: {
          200: json(ref(RequeueResult), 'what matched and what was requeued', { matched: 2, requeued: 2, taskIds: [TASK_EXAMPLE.id, '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f12'], dryRun: false }),
          ...problems(400, 401, 403, 409, 413, 415, 503),
        },
      },
    },
    async (request) => {
      const { dryRun = false, limit = 1000, ...filter } = request.body;
      const result = await deps.tasks.requeueFailed(filter, callerOf(request), { dryRun, limit });
      return { matched: result.matched, requeued: result.requeued.length, taskIds: result.requeued, dryRun };
    },
  );

  app.post(
    '/v1/tasks/:id/requeue',
    {
      config: { access: 'operator' },
      schema: {
        operationId: 'requeueTask',
        summary: 'Put a failed task back with fresh attempts',
        description: '409 unless the task failed.',
        tags: ['dlq'],
        params: TaskIdParams,
        response: {
          200: json(ref(Task), 'the task, queued again', { ...TASK_EXAMPLE, attempt: 1, version: 12 }),
          ...problems(400, 401, 403, 404, 409, 413, 415, 503),
        },
      },
    },
    async (request) => toTaskView(await deps.tasks.requeue(request.params.id, callerOf(request))),
  );
};

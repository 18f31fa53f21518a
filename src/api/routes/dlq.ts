import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { listFailedTasks } from '../../projections/index.js';
import { DlqQuery, DlqRequeueBody, Problem, TaskIdParams, TaskView } from '../schemas.js';
import { toTaskView } from '../task-view.js';
import type { ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';

const problems = { 400: Problem, 404: Problem, 409: Problem, 503: Problem };

/** Failed tasks (what the dead-letter queue turned into) and putting them back. */
export const dlqRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  app.get(
    '/v1/dlq',
    {
      config: { access: 'auditor' },
      schema: {
        summary: 'Failed tasks with their reason and last error, newest first',
        description: 'Filter by type, reason (non-retryable, max-attempts, delivery-limit, rejected, expired) and failure time.',
        tags: ['dlq'],
        querystring: DlqQuery,
        response: { 200: Type.Object({ items: Type.Array(TaskView), nextCursor: Type.Union([Type.String(), Type.Null()]) }), ...problems },
      },
    },
    async (request) => {
      const { limit = 50, cursor, ...filter } = request.query;
      const rows = await listFailedTasks(deps.db, { ...filter, tenant: callerOf(request).tenant, limit, ...(cursor ? { beforeSeq: Number(cursor) } : {}) });
      const last = rows[rows.length - 1];
      return { items: rows.map((r) => toTaskView(r.state)), nextCursor: rows.length === limit && last ? String(last.seq) : null };
    },
  );

  app.post(
    '/v1/dlq/requeue',
    {
      config: { access: 'operator' },
      schema: {
        summary: 'Requeue the failed tasks matching a filter (up to 1,000 per call)',
        description: 'Each gets a fresh set of attempts, recorded as TaskRequeued with the actor of the credential (X-Actor goes beside it as onBehalfOf). With dryRun only the count is returned.',
        tags: ['dlq'],
        body: DlqRequeueBody,
        response: { 200: Type.Object({ matched: Type.Integer(), requeued: Type.Integer(), taskIds: Type.Array(Type.String()), dryRun: Type.Boolean() }), ...problems },
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
        summary: 'Put a failed task back with fresh attempts',
        description: '409 unless the task failed.',
        tags: ['dlq'],
        params: TaskIdParams,
        response: { 200: TaskView, ...problems },
      },
    },
    async (request) => toTaskView(await deps.tasks.requeue(request.params.id, callerOf(request))),
  );
};

import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { TaskNotFoundError, ValidationError } from '../../domain/index.js';
import { getTask, getTaskHistory, listTasks } from '../../projections/index.js';
import { BatchBody, CancelBody, HistoryEntryT, ListQuery, Problem, SubmitBody, TaskIdParams, TaskView } from '../schemas.js';
import { toTaskView } from '../task-view.js';
import type { ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';

const IdempotencyHeaders = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'a retried submit with the same key returns the first task' })),
});

const problems = { 400: Problem, 404: Problem, 409: Problem, 422: Problem, 503: Problem };

export const taskRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  app.post(
    '/v1/tasks',
    {
      config: { access: 'submitter' },
      schema: {
        summary: 'Submit a task',
        description: 'Answered after the task and its dispatch are committed. 202 for a new task, 200 when an Idempotency-Key replays an earlier submit.',
        tags: ['tasks'],
        headers: IdempotencyHeaders,
        body: SubmitBody,
        response: { 200: TaskView, 202: TaskView, ...problems },
      },
    },
    async (request, reply) => {
      validateTimes(request.body);
      await admit(deps, request, reply, 1);
      const { task, created } = await deps.tasks.submit({ ...request.body, idempotencyKey: request.headers['idempotency-key'] ?? null }, callerOf(request));
      const view = toTaskView(task);
      const live = await deps.liveTiers?.();
      if (live && !live.has(view.tier)) {
        // Accepted all the same: the dispatch waits on its queue until a node of that tier joins.
        return reply.code(created ? 202 : 200).header('location', `/v1/tasks/${task.taskId}`).send({ ...view, warnings: [`no live fog node serves tier ${view.tier}; the task waits until one joins`] });
      }
      return reply.code(created ? 202 : 200).header('location', `/v1/tasks/${task.taskId}`).send(view);
    },
  );

  app.post(
    '/v1/tasks/batch',
    {
      config: { access: 'submitter' },
      schema: {
        summary: 'Submit up to 1,000 tasks in one transaction',
        description: 'All or nothing: an invalid item fails the whole batch with its index in the problem.',
        tags: ['tasks'],
        body: BatchBody,
        response: { 202: Type.Object({ tasks: Type.Array(TaskView) }), ...problems },
      },
    },
    async (request, reply) => {
      request.body.tasks.forEach((t, index) => validateTimes(t, `body/tasks/${index}`));
      await admit(deps, request, reply, request.body.tasks.length);
      const results = await deps.tasks.submitBatch(
        request.body.tasks.map((t) => ({ ...t, idempotencyKey: t.idempotencyKey ?? null })),
        callerOf(request),
      );
      return reply.code(202).send({ tasks: results.map((r) => toTaskView(r.task)) });
    },
  );

  app.get(
    '/v1/tasks/:id',
    {
      config: { access: 'submitter' },
      schema: { summary: 'Get a task', tags: ['tasks'], params: TaskIdParams, response: { 200: TaskView, ...problems } },
    },
    async (request) => {
      const task = await getTask(deps.db, callerOf(request).tenant, request.params.id);
      if (!task) throw new TaskNotFoundError(request.params.id);
      return toTaskView(task);
    },
  );

  app.get(
    '/v1/tasks',
    {
      config: { access: 'submitter' },
      schema: {
        summary: 'List tasks, newest first',
        description: 'Pass nextCursor back as cursor for the next page; the order is stable while tasks are added.',
        tags: ['tasks'],
        querystring: ListQuery,
        response: { 200: Type.Object({ items: Type.Array(TaskView), nextCursor: Type.Union([Type.String(), Type.Null()]) }), ...problems },
      },
    },
    async (request) => {
      const q = request.query;
      const limit = q.limit ?? 50;
      const rows = await listTasks(deps.db, {
        tenant: callerOf(request).tenant,
        limit,
        ...(q.state ? { state: q.state } : {}),
        ...(q.priority ? { priority: q.priority } : {}),
        ...(q.type ? { type: q.type } : {}),
        ...(q.tier ? { tier: q.tier } : {}),
        ...(q.cursor ? { beforeSeq: Number(q.cursor) } : {}),
      });
      const last = rows[rows.length - 1];
      return { items: rows.map((r) => toTaskView(r.state)), nextCursor: rows.length === limit && last ? String(last.seq) : null };
    },
  );

  app.get(
    '/v1/tasks/:id/history',
    {
      config: { access: 'submitter' },
      schema: {
        summary: "A task's lifecycle events, oldest first",
        tags: ['tasks'],
        params: TaskIdParams,
        response: { 200: Type.Object({ taskId: Type.String(), events: Type.Array(HistoryEntryT) }), ...problems },
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
        summary: 'Cancel a task that has not finished',
        description: 'Cancelling a cancelled task returns it unchanged; a succeeded or failed task gives 409.',
        tags: ['tasks'],
        params: TaskIdParams,
        body: Type.Optional(CancelBody),
        response: { 200: TaskView, ...problems },
      },
    },
    async (request) => {
      const task = await deps.tasks.cancel(request.params.id, callerOf(request), request.body?.reason ?? null);
      await deps.recordCancelled?.(task.taskId).catch((error: unknown) => request.log.warn({ err: (error as Error).message, taskId: task.taskId }, 'cancel not recorded in redis'));
      return toTaskView(task);
    },
  );
};

/** The tenant's submit limits (each task counts); a refusal carries Retry-After. */
async function admit(deps: ApiDeps, request: FastifyRequest, reply: FastifyReply, tasks: number): Promise<void> {
  try {
    await deps.limits?.admit(callerOf(request).tenant, tasks);
  } catch (error) {
    const retryAfter = (error as { retryAfterSeconds?: unknown }).retryAfterSeconds;
    if (typeof retryAfter === 'number') reply.header('retry-after', String(retryAfter));
    throw error;
  }
}

function validateTimes(body: { notBefore?: string; deadline?: string }, path = 'body'): void {
  if (body.notBefore && body.deadline && Date.parse(body.deadline) <= Date.parse(body.notBefore)) {
    throw new ValidationError(`${path}/deadline must be after notBefore`, { errors: [{ path: `${path}/deadline`, message: 'must be after notBefore' }] });
  }
}

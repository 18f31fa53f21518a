import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ScheduleState } from '../../domain/index.js';
import { INPUT_LIMITS, SCHEDULE_EXAMPLE, Schedule, ScheduleBody, ScheduleIdParams, ScheduleList, ScheduleListQuery, json, problems, ref } from '../schemas.js';
import { DEFAULT_API_LIMITS, type ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';
import { checkPayloadSizes, nextCursorOf, parseCursor } from '../input.js';

function toView(s: ScheduleState) {
  const spec = s.spec;
  if (!spec) throw new Error(`schedule ${s.scheduleId} has no spec`);
  return {
    id: s.scheduleId,
    name: spec.name,
    cron: spec.cron,
    timezone: spec.timezone,
    catchUp: spec.catchUp,
    state: s.status === 'new' ? ('active' as const) : s.status,
    template: spec.template,
    nextFireAt: s.nextFireAt,
    lastFiredAt: s.lastFiredAt,
    lastTaskId: s.lastTaskId,
    firedCount: s.firedCount,
    createdAt: s.createdAt ?? '',
    updatedAt: s.updatedAt ?? '',
  };
}

const ONE = json(ref(Schedule), 'the schedule', SCHEDULE_EXAMPLE);

/** Recurring schedules: each run submits one task from the template. */
export const scheduleRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  const maxPayloadBytes = deps.inputLimits?.maxPayloadBytes ?? DEFAULT_API_LIMITS.maxPayloadBytes;

  app.post(
    '/v1/schedules',
    {
      config: { access: 'operator' },
      schema: {
        operationId: 'createSchedule',
        summary: 'Create a recurring schedule',
        description: 'At most TENANT_MAX_SCHEDULES per tenant (409 SCHEDULE_LIMIT_REACHED); runs at least SCHEDULE_MIN_INTERVAL_MS apart (400).',
        tags: ['schedules'],
        body: ScheduleBody,
        response: { 201: json(ref(Schedule), 'created', SCHEDULE_EXAMPLE), ...problems(400, 401, 403, 409, 413, 415, 422, 503) },
      },
    },
    async (request, reply) => {
      checkPayloadSizes([{ path: 'body/template/payload', payload: request.body.template.payload }], maxPayloadBytes);
      return reply.code(201).send(toView(await deps.schedules.create(request.body, callerOf(request))));
    },
  );
  app.get(
    '/v1/schedules',
    {
      config: { access: 'auditor' },
      schema: {
        operationId: 'listSchedules',
        summary: 'List schedules, newest first',
        tags: ['schedules'],
        querystring: ScheduleListQuery,
        response: { 200: json(ref(ScheduleList), 'a page of schedules', { items: [SCHEDULE_EXAMPLE], nextCursor: null }), ...problems(400, 401, 403, 503) },
      },
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const beforeSeq = parseCursor(request.query.cursor);
      const rows = await deps.schedules.list(callerOf(request), { limit, ...(beforeSeq !== undefined ? { beforeSeq } : {}), maxBytes: INPUT_LIMITS.maxPageBytes });
      return { items: rows.map((r) => toView(r.state)), nextCursor: nextCursorOf(rows, limit) };
    },
  );
  app.get(
    '/v1/schedules/:id',
    { config: { access: 'auditor' }, schema: { operationId: 'getSchedule', summary: 'Get a schedule', tags: ['schedules'], params: ScheduleIdParams, response: { 200: ONE, ...problems(400, 401, 403, 404, 503) } } },
    async (request) => toView(await deps.schedules.get(request.params.id, callerOf(request))),
  );
  app.post(
    '/v1/schedules/:id/pause',
    {
      config: { access: 'operator' },
      schema: {
        operationId: 'pauseSchedule',
        summary: 'Pause a schedule',
        tags: ['schedules'],
        params: ScheduleIdParams,
        response: { 200: json(ref(Schedule), 'the schedule, paused', { ...SCHEDULE_EXAMPLE, state: 'paused', nextFireAt: null }), ...problems(400, 401, 403, 404, 409, 413, 415, 503) },
      },
    },
    async (request) => toView(await deps.schedules.pause(request.params.id, callerOf(request))),
  );
  app.post(
    '/v1/schedules/:id/resume',
    {
      config: { access: 'operator' },
      schema: {
        operationId: 'resumeSchedule',
        summary: 'Resume a paused schedule from the next run after now',
        tags: ['schedules'],
        params: ScheduleIdParams,
        response: { 200: ONE, ...problems(400, 401, 403, 404, 409, 413, 415, 503) },
      },
    },
    async (request) => toView(await deps.schedules.resume(request.params.id, callerOf(request))),
  );
  app.delete(
    '/v1/schedules/:id',
    {
      config: { access: 'operator' },
      schema: {
        operationId: 'deleteSchedule',
        summary: 'Delete a schedule',
        tags: ['schedules'],
        params: ScheduleIdParams,
        response: { 204: Type.Null({ description: 'deleted' }), ...problems(400, 401, 403, 404, 409, 413, 415, 503) },
      },
    },
    async (request, reply) => {
      await deps.schedules.remove(request.params.id, callerOf(request));
      return reply.code(204).send(null);
    },
  );
};

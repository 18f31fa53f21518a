import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ScheduleState } from '../../domain/index.js';
import { PriorityT, Problem, ResourcesT } from '../schemas.js';
import type { ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';

const TemplateT = Type.Object(
  {
    type: Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9_.:/-]+$' }),
    payload: Type.Optional(Type.Unknown()),
    priority: Type.Optional(PriorityT),
    resources: Type.Optional(ResourcesT),
    maxAttempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000 })),
  },
  { additionalProperties: false },
);

const ScheduleBody = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    cron: Type.String({ minLength: 1, maxLength: 200, description: 'five fields, or six with seconds first (e.g. "*/10 * * * * *")' }),
    timezone: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'IANA zone, default UTC' })),
    catchUp: Type.Optional(Type.Union([Type.Literal('skip'), Type.Literal('once')], { description: 'missed runs: skip them (default) or run once' })),
    template: TemplateT,
  },
  { additionalProperties: false },
);

const ScheduleView = Type.Object({
  id: Type.String(),
  name: Type.String(),
  cron: Type.String(),
  timezone: Type.String(),
  catchUp: Type.String(),
  state: Type.String(),
  template: Type.Unknown(),
  nextFireAt: Type.Union([Type.String(), Type.Null()]),
  lastFiredAt: Type.Union([Type.String(), Type.Null()]),
  lastTaskId: Type.Union([Type.String(), Type.Null()]),
  firedCount: Type.Integer(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) });
const problems = { 400: Problem, 404: Problem, 422: Problem, 503: Problem };

function toView(s: ScheduleState) {
  const spec = s.spec;
  if (!spec) throw new Error(`schedule ${s.scheduleId} has no spec`);
  return {
    id: s.scheduleId,
    name: spec.name,
    cron: spec.cron,
    timezone: spec.timezone,
    catchUp: spec.catchUp,
    state: s.status,
    template: spec.template,
    nextFireAt: s.nextFireAt,
    lastFiredAt: s.lastFiredAt,
    lastTaskId: s.lastTaskId,
    firedCount: s.firedCount,
    createdAt: s.createdAt ?? '',
    updatedAt: s.updatedAt ?? '',
  };
}

/** Recurring schedules: each run submits one task from the template. */
export const scheduleRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  app.post(
    '/v1/schedules',
    {
      config: { access: 'operator' },
      schema: { summary: 'Create a recurring schedule', tags: ['schedules'], body: ScheduleBody, response: { 201: ScheduleView, ...problems } },
    },
    async (request, reply) => reply.code(201).send(toView(await deps.schedules.create(request.body, callerOf(request)))),
  );
  app.get(
    '/v1/schedules',
    {
      config: { access: 'auditor' },
      schema: {
        summary: 'List schedules, newest first',
        tags: ['schedules'],
        querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 50 })), cursor: Type.Optional(Type.String({ pattern: '^[0-9]+$' })) }, { additionalProperties: false }),
        response: { 200: Type.Object({ items: Type.Array(ScheduleView), nextCursor: Type.Union([Type.String(), Type.Null()]) }), ...problems },
      },
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const rows = await deps.schedules.list(callerOf(request), { limit, ...(request.query.cursor ? { beforeSeq: Number(request.query.cursor) } : {}) });
      const last = rows[rows.length - 1];
      return { items: rows.map((r) => toView(r.state)), nextCursor: rows.length === limit && last ? String(last.seq) : null };
    },
  );
  app.get(
    '/v1/schedules/:id',
    {
      config: { access: 'auditor' },
      schema: { summary: 'Get a schedule', tags: ['schedules'], params: IdParams, response: { 200: ScheduleView, ...problems } },
    },
    async (request) => toView(await deps.schedules.get(request.params.id, callerOf(request))),
  );
  app.post(
    '/v1/schedules/:id/pause',
    {
      config: { access: 'operator' },
      schema: { summary: 'Pause a schedule', tags: ['schedules'], params: IdParams, response: { 200: ScheduleView, ...problems } },
    },
    async (request) => toView(await deps.schedules.pause(request.params.id, callerOf(request))),
  );
  app.post(
    '/v1/schedules/:id/resume',
    {
      config: { access: 'operator' },
      schema: { summary: 'Resume a paused schedule from the next run after now', tags: ['schedules'], params: IdParams, response: { 200: ScheduleView, ...problems } },
    },
    async (request) => toView(await deps.schedules.resume(request.params.id, callerOf(request))),
  );
  app.delete(
    '/v1/schedules/:id',
    {
      config: { access: 'operator' },
      schema: { summary: 'Delete a schedule', tags: ['schedules'], params: IdParams, response: { 204: Type.Null(), ...problems } },
    },
    async (request, reply) => {
      await deps.schedules.remove(request.params.id, callerOf(request));
      return reply.code(204).send(null);
    },
  );
};

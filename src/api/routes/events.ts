import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { isTerminal, TaskNotFoundError, ValidationError, type TaskStatus } from '../../domain/index.js';
import { getTask } from '../../projections/index.js';
import { createBackoff } from '../../infra/backoff.js';
import { createPollingWaker } from '../../infra/pg-listener.js';
import { cursorAtPosition, headCursor, readFeedPage, readTaskFeed, taskVersionAt, type FeedEvent, type FeedFilter, type LogCursor } from '../../store/index.js';
import type { ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';
import { problems, StateQ, TaskIdParams } from '../schemas.js';
import { createStreamSlots, DEFAULT_SSE_SETTINGS, SseStream, waitForWake, type SseSettings } from '../sse.js';

/**
 * Server-sent events from the log: `GET /v1/events` (the caller's tenant, filtered) and
 * `GET /v1/tasks/:id/events` (one task, ending after its terminal event). Each event's `id` is
 * its log position; a client that reconnects with `Last-Event-ID` (or `?after=`) gets everything
 * after it and nothing twice, from any api process, since the stream is read from the events
 * table (notifications only wake the readers).
 */

const PositionText = Type.String({ pattern: '^[0-9]{1,16}$', description: 'a log position (an event id of this stream); 0 is the start of the log' });

const EventsQuery = Type.Object(
  {
    type: Type.Optional(Type.String({ minLength: 1, maxLength: 1000, description: 'only these event types, comma-separated (e.g. TaskSucceeded,TaskFailed)' })),
    task: Type.Optional(Type.String({ format: 'uuid', description: "only this task's events" })),
    state: Type.Optional({ ...StateQ, description: 'only events that left their task in this state' }),
    after: Type.Optional({ ...PositionText, description: 'start after this log position (as Last-Event-ID; the header wins); without either the stream starts at the head of the log' }),
  },
  { additionalProperties: false },
);
const TaskEventsQuery = Type.Object({ after: Type.Optional({ ...PositionText, description: 'start after this log position (as Last-Event-ID; the header wins); without either the stream starts with the task\'s first event' }) }, { additionalProperties: false });
const StreamHeaders = Type.Object({ 'last-event-id': Type.Optional({ ...PositionText, description: 'resume after this event (sent by EventSource on reconnect)' }) });

const EVENT_EXAMPLE =
  'retry: 2000\n\nid: 1042\nevent: TaskSucceeded\ndata: {"taskId":"0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11","type":"TaskSucceeded","position":1042,"at":"2026-11-27T10:15:31.004Z","data":{"attempt":1,"output":null}}\n\n: hb\n\n';
const eventStream = (description: string) => ({
  description,
  content: {
    'text/event-stream': {
      schema: Type.String({
        description:
          'server-sent events: `id:` the log position, `event:` the event type, `data:` {taskId, streamType, version, type, position, at, state, data} as JSON; a `: hb` comment every SSE_HEARTBEAT_MS; a dropped slow client gets `event: dropped` with data {reason}',
      }),
      example: EVENT_EXAMPLE,
    },
  },
});

/** What a client receives as `data:` for one event. */
export function eventPayload(e: FeedEvent) {
  return {
    taskId: e.event.streamId,
    streamType: e.event.streamType,
    version: e.event.streamVersion,
    type: e.event.type,
    position: e.event.position,
    at: e.event.recordedAt.toISOString(),
    state: e.state,
    data: e.event.data,
  };
}

/** Log reads of the event streams that run at once in one api process (see `reads` below). */
const FEED_READS_AT_ONCE = 2;

/** At most `n` calls of `take` run at once; the others wait their turn, first come first served. */
function createTurns(n: number): { take<T>(f: () => Promise<T>): Promise<T> } {
  let running = 0;
  const waiting: (() => void)[] = [];
  return {
    async take(f) {
      if (running >= n) await new Promise<void>((resolve) => waiting.push(resolve));
      else running++;
      try {
        return await f();
      } finally {
        const next = waiting.shift();
        if (next) next();
        else running--;
      }
    },
  };
}

export const eventRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  const settings: SseSettings = { ...DEFAULT_SSE_SETTINGS, ...deps.sse };
  const waker = deps.liveEvents ?? createPollingWaker(settings.pollMs);
  const slots = createStreamSlots(() => settings.maxConnectionsPerTenant);
  const streams = new Set<SseStream>();
  // Log reads of all streams of this process take turns: a filtered stream far behind the head
  // reads page after page without sending anything (so no backpressure slows it); however many
  // streams do that, PostgreSQL sees at most this many of their reads at once.
  const reads = createTurns(FEED_READS_AT_ONCE);
  // Open streams never end by themselves: a closing server ends them so it can close its sockets.
  app.addHook('preClose', async () => {
    for (const s of streams) s.end();
    if (!deps.liveEvents) await waker.close();
  });

  /** Parses Last-Event-ID (or ?after=): the position the client has seen, or undefined. */
  const resumePoint = (header: string | undefined, query: string | undefined): number | undefined => {
    const text = header ?? query;
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isSafeInteger(n)) throw new ValidationError(`Last-Event-ID ${text} is not a log position`, { errors: [{ path: 'headers/last-event-id', message: 'is not a log position' }] });
    return n;
  };

  /** Hijacks the reply into a stream holding one of the tenant's slots, then runs `pump` until it returns or the client goes. */
  const serve = (request: FastifyRequest, reply: FastifyReply, release: () => void, pump: (stream: SseStream) => Promise<void>) => {
    reply.hijack();
    const stream = new SseStream(reply.raw, settings);
    streams.add(stream);
    stream.signal.addEventListener('abort', () => {
      streams.delete(stream);
      release();
    }, { once: true });
    pump(stream)
      .catch((error: unknown) => {
        request.log.warn({ err: error instanceof Error ? error.message : String(error) }, 'event stream failed');
      })
      .finally(() => {
        if (stream.dropReason) request.log.info({ tenant: request.tenant, reason: stream.dropReason }, 'event stream client dropped');
        stream.end();
      });
  };

  /** Reads with `read` whenever woken until `read` says the stream is over; a failing read is retried with backoff. */
  const follow = async (stream: SseStream, read: () => Promise<'more' | 'wait' | 'soon' | 'done'>) => {
    let woken = true;
    const waiters = new Set<() => void>();
    const unsubscribe = waker.subscribe(() => {
      woken = true;
      for (const w of waiters) w();
      waiters.clear();
    });
    const retry = createBackoff({ baseMs: 200, maxMs: 5000 });
    // Events committed above the horizon: looked at again soon, each time a little later.
    const held = createBackoff({ baseMs: 20, maxMs: Math.min(1000, settings.pollMs) });
    let soon: NodeJS.Timeout | undefined;
    try {
      while (!stream.signal.aborted) {
        if (!woken) await waitForWake(stream.signal, (wake) => waiters.add(wake));
        clearTimeout(soon);
        woken = false;
        let outcome: 'more' | 'wait' | 'soon' | 'done';
        try {
          outcome = await read();
          retry.reset();
        } catch (error) {
          // PostgreSQL away: the stream stays open (heartbeats go on) and the read is tried again.
          await new Promise((r) => setTimeout(r, retry.next()).unref());
          woken = true;
          if (retry.failures === 1) app.log.warn({ err: error instanceof Error ? error.message : String(error) }, 'event stream read failed; retrying');
          continue;
        }
        if (outcome === 'done') return;
        if (outcome === 'more') woken = true;
        if (outcome === 'soon') {
          soon = setTimeout(() => {
            woken = true;
            for (const w of waiters) w();
            waiters.clear();
          }, held.next());
        } else held.reset();
      }
    } finally {
      clearTimeout(soon);
      unsubscribe();
    }
  };

  app.get(
    '/v1/events',
    {
      config: { access: 'submitter' },
      exposeHeadRoute: false,
      schema: {
        operationId: 'streamEvents',
        summary: "Follow the log as server-sent events (this tenant's tasks and schedules)",
        description:
          'text/event-stream. Resume with `Last-Event-ID` (or `?after=`): every event after it, none twice, from any api process. Without either it starts at the head of the log. At most SSE_MAX_CONNECTIONS_PER_TENANT open streams per tenant and api process (429 TOO_MANY_STREAMS).',
        tags: ['events'],
        querystring: EventsQuery,
        headers: StreamHeaders,
        response: { 200: eventStream('the stream, until the client closes it'), ...problems(400, 401, 403, 429, 503) },
      },
    },
    async (request, reply) => {
      const tenant = callerOf(request).tenant;
      const filter: FeedFilter = {
        tenant,
        ...(request.query.type ? { types: request.query.type.split(',').map((t) => t.trim()).filter(Boolean) } : {}),
        ...(request.query.task ? { streamId: request.query.task } : {}),
        ...(request.query.state ? { state: request.query.state } : {}),
      };
      const after = resumePoint(request.headers['last-event-id'], request.query.after);
      let cursor: LogCursor;
      if (after === undefined) cursor = await headCursor(deps.db);
      else {
        const found = await cursorAtPosition(deps.db, after);
        if (!found) throw new ValidationError(`Last-Event-ID ${after} names no event of the log`, { errors: [{ path: 'headers/last-event-id', message: 'names no event' }] });
        cursor = found;
      }
      const release = slots.acquire(tenant);
      serve(request, reply, release, (stream) =>
        follow(stream, async () => {
          const page = await reads.take(() => readFeedPage(deps.db, cursor, filter));
          for (const e of page.events) if (!(await stream.send(e.event.position, e.event.type, eventPayload(e)))) return 'done';
          cursor = page.cursor;
          return !page.caughtUp ? 'more' : page.heldBack ? 'soon' : 'wait';
        }),
      );
    },
  );

  app.get(
    '/v1/tasks/:id/events',
    {
      config: { access: 'submitter' },
      exposeHeadRoute: false,
      schema: {
        operationId: 'streamTaskEvents',
        summary: "Follow one task's events as server-sent events; the stream ends after its terminal event",
        description:
          "text/event-stream: the task's events from the first (or after `Last-Event-ID` / `?after=`), then each as it commits; ends after the event that leaves the task succeeded, failed or cancelled (at once when that was already sent). A task of another tenant is 404 before the stream starts.",
        tags: ['events'],
        params: TaskIdParams,
        querystring: TaskEventsQuery,
        headers: StreamHeaders,
        response: { 200: eventStream('the stream, until the task ends or the client closes it'), ...problems(400, 401, 403, 404, 429, 503) },
      },
    },
    async (request, reply) => {
      const tenant = callerOf(request).tenant;
      const taskId = request.params.id;
      const task = await getTask(deps.db, tenant, taskId);
      if (!task) throw new TaskNotFoundError(taskId);
      const after = resumePoint(request.headers['last-event-id'], request.query.after);
      let version = 0;
      if (after !== undefined) {
        const found = await taskVersionAt(deps.db, taskId, after);
        if (found === null) throw new ValidationError(`Last-Event-ID ${after} names no event of task ${taskId}`, { errors: [{ path: 'headers/last-event-id', message: 'names no event of this task' }] });
        version = found;
      }
      const release = slots.acquire(tenant);
      serve(request, reply, release, (stream) =>
        follow(stream, async () => {
          const events = await readTaskFeed(deps.db, taskId, version);
          for (const e of events) {
            if (!(await stream.send(e.event.position, e.event.type, eventPayload(e)))) return 'done';
            version = e.event.streamVersion;
            if (e.state && isTerminal(e.state as TaskStatus)) return 'done';
          }
          if (events.length > 0) return 'more';
          // Nothing new: a task that had already ended before this point (a resume past its end) ends the stream.
          const now = await getTask(deps.db, tenant, taskId);
          return now && isTerminal(now.status) && now.version <= version ? 'done' : 'wait';
        }),
      );
    },
  );
};

/**
 * The typed client of fogsched's HTTP API (`import { createClient } from 'fogsched/client'`).
 * It uses the global `fetch` only (Node 20 and later, browsers) and imports nothing outside this
 * folder. Its types come from `./openapi.ts`, which openapi-typescript generates from the API's
 * own OpenAPI document (`npm run client:types`); test/client/openapi-types.test.ts fails when the
 * two differ, so a change to the API that the client does not follow stops the build.
 *
 * ### Examples
 * ```ts
 * const fog = createClient({ baseUrl: 'http://127.0.0.1:8080', apiKey: process.env.FOGSCHED_API_KEY });
 * const task = await fog.submit({ type: 'checksum', payload: { bytes: 1e6 } }, { idempotencyKey: 'order-17' });
 * const done = await fog.waitFor(task.id, { timeoutMs: 60_000 });
 * for await (const t of fog.list({ state: 'failed' })) console.log(t.id, t.failureReason);
 * ```
 */
import type { components, operations } from './openapi.js';
import { FogschedApiError, isFogschedApiError, type ProblemDetails } from './errors.js';
import { readServerSentEvents } from './sse.js';

export * from './errors.js';
export { readServerSentEvents, type ServerSentEvent } from './sse.js';
export type { components, operations, paths } from './openapi.js';

type Schemas = components['schemas'];
type JsonBody<O extends keyof operations> = operations[O] extends { requestBody?: { content: { 'application/json': infer B } } } ? B : never;
type Query<O extends keyof operations> = NonNullable<operations[O]['parameters']['query']>;

export type Task = Schemas['Task'];
export type TaskState = Schemas['TaskState'];
export type Priority = Schemas['Priority'];
export type TaskHistory = Schemas['TaskHistory'];
export type HistoryEntry = Schemas['HistoryEntry'];
export type Schedule = Schemas['Schedule'];
export type RequeueResult = Schemas['RequeueResult'];
export type Cluster = Schemas['Cluster'];
export type TaskGraph = Schemas['TaskGraph'];
export type TaskGraphNode = Schemas['TaskGraphNode'];
export type Placement = Schemas['Placement'];
/** What `submitWorkflow` takes: `{ name?, onDependencyFailure?, steps: [{ step, dependsOn?: (step | task id)[], type, ... }] }`. */
export type WorkflowInput = JsonBody<'submitWorkflow'>;
/** What `submit` takes: `{ type, payload?, priority?, resources?, maxAttempts?, timeoutMs?, notBefore?, deadline?, retry? }`. */
export type SubmitTaskInput = JsonBody<'submitTask'>;
/** One item of `submitBatch`: a submit plus its own `idempotencyKey`. */
export type BatchTaskInput = JsonBody<'submitTaskBatch'>['tasks'][number];
export type ListTasksFilter = Omit<Query<'listTasks'>, 'cursor'>;
export type FailedTasksFilter = Omit<Query<'listFailedTasks'>, 'cursor'>;
export type RequeueFailedInput = JsonBody<'requeueFailedTasks'>;
export type CreateScheduleInput = JsonBody<'createSchedule'>;
export type ListSchedulesFilter = Omit<Query<'listSchedules'>, 'cursor'>;

/** States after which a task changes no more (unless requeued). */
export const TERMINAL_STATES: readonly TaskState[] = ['succeeded', 'failed', 'cancelled'];
export const isTerminalState = (state: TaskState): boolean => TERMINAL_STATES.includes(state);

/** Event types after which a task is terminal (the server ends a task's event stream after one). */
const TERMINAL_EVENTS = new Set(['TaskSucceeded', 'TaskFailed', 'TaskDeadLettered', 'TaskCancelled']);

export interface ClientOptions {
  /** Where the API is, e.g. `http://127.0.0.1:8080` (a path prefix is kept). */
  readonly baseUrl: string;
  /** An API key, sent as `X-API-Key`. */
  readonly apiKey?: string;
  /** A JWT (or an API key), sent as `Authorization: Bearer`. */
  readonly token?: string;
  /** Recorded beside the credential's actor (`X-Actor`), e.g. the user a service acts for. */
  readonly actor?: string;
  /** A fetch to use instead of the global one (a proxy agent, a test double). */
  readonly fetch?: typeof globalThis.fetch;
  /** Extra headers on every request. */
  readonly headers?: Readonly<Record<string, string>>;
}

export interface CallOptions {
  readonly signal?: AbortSignal;
}

export interface WaitOptions extends CallOptions {
  /** Give up after this long with `WAIT_TIMEOUT`; default: wait as long as it takes (or until `signal` aborts). */
  readonly timeoutMs?: number;
  /** Polling (when the API has no event stream): first delay, growing ×1.5 up to `maxPollIntervalMs`. Default 100. */
  readonly pollIntervalMs?: number;
  /** Default 2000. */
  readonly maxPollIntervalMs?: number;
  /** `sse` (default: the event stream where the API has it, polling otherwise) or `poll` (always poll). */
  readonly via?: 'auto' | 'poll';
}

export interface FogschedClient {
  /** POST /v1/tasks: 202 for a new task, the first task again for a repeated `idempotencyKey`. */
  submit(task: SubmitTaskInput, opts?: CallOptions & { idempotencyKey?: string }): Promise<Task>;
  /** POST /v1/tasks/batch: all or nothing, tasks in the order given. */
  submitBatch(tasks: readonly BatchTaskInput[], opts?: CallOptions): Promise<Task[]>;
  get(id: string, opts?: CallOptions): Promise<Task>;
  /** Every task matching the filter, newest first, fetched a page (`limit`, default 50) at a time as you iterate. */
  list(filter?: ListTasksFilter, opts?: CallOptions): AsyncIterableIterator<Task>;
  /** One page of GET /v1/tasks; pass `nextCursor` back as `cursor`. */
  listPage(query?: Query<'listTasks'>, opts?: CallOptions): Promise<Schemas['TaskList']>;
  /** The task's lifecycle events, oldest first. */
  history(id: string, opts?: CallOptions): Promise<HistoryEntry[]>;
  /** GET /v1/tasks/{id}/graph: the tasks it depends on and those depending on it, transitively, with their states. */
  graph(id: string, opts?: CallOptions): Promise<TaskGraph>;
  /**
   * POST /v1/workflows: named steps as one batch; resolves to each step's task by step name. With
   * `idempotencyKey` a retry returns the same tasks.
   *
   * ### Examples
   * ```ts
   * const { steps } = await fog.submitWorkflow({
   *   name: 'scan-17',
   *   steps: [
   *     { step: 'fetch', type: 'fetch-scan', placement: { zone: 'site-a' } },
   *     { step: 'aggregate', type: 'merge-scans', dependsOn: ['fetch'], resources: { cpu: 1, memoryMb: 1024 } },
   *   ],
   * }, { idempotencyKey: 'scan-17' });
   * await fog.waitFor(steps.aggregate!.id);
   * ```
   */
  submitWorkflow(workflow: WorkflowInput, opts?: CallOptions & { idempotencyKey?: string }): Promise<{ steps: Record<string, Task> }>;
  cancel(id: string, opts?: CallOptions & { reason?: string }): Promise<Task>;
  /** A failed task back in the queue with fresh attempts. */
  requeue(id: string, opts?: CallOptions): Promise<Task>;
  /**
   * Resolves to the task once it is succeeded, failed or cancelled. Follows
   * `GET /v1/tasks/{id}/events` where the API has it, otherwise polls with backoff.
   */
  waitFor(id: string, opts?: WaitOptions): Promise<Task>;
  readonly dlq: {
    /** Failed tasks, newest first. */
    list(filter?: FailedTasksFilter, opts?: CallOptions): AsyncIterableIterator<Task>;
    /** Requeues the failed tasks matching the filter; `dryRun: true` only counts them. */
    requeue(filter?: RequeueFailedInput, opts?: CallOptions): Promise<RequeueResult>;
  };
  readonly schedules: {
    list(filter?: ListSchedulesFilter, opts?: CallOptions): AsyncIterableIterator<Schedule>;
    get(id: string, opts?: CallOptions): Promise<Schedule>;
    create(schedule: CreateScheduleInput, opts?: CallOptions): Promise<Schedule>;
    pause(id: string, opts?: CallOptions): Promise<Schedule>;
    resume(id: string, opts?: CallOptions): Promise<Schedule>;
    delete(id: string, opts?: CallOptions): Promise<void>;
  };
  cluster(opts?: CallOptions): Promise<Cluster>;
}

interface RequestInit2 extends CallOptions {
  readonly query?: Record<string, string | number | boolean | undefined>;
  readonly body?: unknown;
  readonly headers?: Record<string, string>;
}

/** Creates a client; nothing is sent until a method is called. */
export function createClient(options: ClientOptions): FogschedClient {
  const base = options.baseUrl.replace(/\/+$/, '');
  const doFetch = options.fetch ?? globalThis.fetch;
  const common: Record<string, string> = { accept: 'application/json', ...options.headers };
  if (options.apiKey) common['x-api-key'] = options.apiKey;
  if (options.token) common.authorization = `Bearer ${options.token}`;
  if (options.actor) common['x-actor'] = options.actor;
  /** Set once the API answered that it has no task event stream: later waits poll at once. */
  let sseMissing = false;

  const url = (path: string, query?: RequestInit2['query']): string => {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) params.set(k, String(v));
    const qs = params.toString();
    return `${base}${path}${qs ? `?${qs}` : ''}`;
  };

  async function send(method: string, path: string, init: RequestInit2 = {}, accept?: string): Promise<Response> {
    const headers: Record<string, string> = { ...common, ...init.headers };
    if (accept) headers.accept = accept;
    if (init.body !== undefined) headers['content-type'] = 'application/json';
    const target = url(path, init.query);
    let response: Response;
    try {
      response = await doFetch(target, { method, headers, body: init.body === undefined ? undefined : JSON.stringify(init.body), signal: init.signal });
    } catch (error) {
      if (init.signal?.aborted) throw init.signal.reason;
      throw new FogschedApiError({ code: 'UNREACHABLE', status: 0, detail: `cannot reach ${base}: ${causeText(error)}`, cause: error });
    }
    if (!response.ok) throw await problemOf(response, method, target);
    return response;
  }

  async function call<T>(method: string, path: string, init: RequestInit2 = {}): Promise<T> {
    const response = await send(method, path, init);
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    try {
      return JSON.parse(text) as T;
    } catch (error) {
      throw new FogschedApiError({ code: 'BAD_RESPONSE', status: response.status, detail: `${method} ${path}: the answer is not JSON (${text.slice(0, 80)})`, cause: error });
    }
  }

  async function* pages<T>(path: string, query: Record<string, string | number | boolean | undefined>, opts?: CallOptions): AsyncIterableIterator<T> {
    let cursor: string | null | undefined;
    do {
      const page = await call<{ items: T[]; nextCursor: string | null }>('GET', path, { query: { ...query, cursor: cursor ?? undefined }, signal: opts?.signal });
      yield* page.items;
      cursor = page.nextCursor;
    } while (cursor);
  }

  const id = (value: string) => encodeURIComponent(value);

  const client: FogschedClient = {
    submit: (task, opts) =>
      call<Task>('POST', '/v1/tasks', { body: task, signal: opts?.signal, ...(opts?.idempotencyKey ? { headers: { 'idempotency-key': opts.idempotencyKey } } : {}) }),
    submitBatch: async (tasks, opts) => (await call<Schemas['BatchResult']>('POST', '/v1/tasks/batch', { body: { tasks }, signal: opts?.signal })).tasks,
    get: (taskId, opts) => call<Task>('GET', `/v1/tasks/${id(taskId)}`, { signal: opts?.signal }),
    list: (filter = {}, opts) => pages<Task>('/v1/tasks', { ...filter }, opts),
    listPage: (query = {}, opts) => call<Schemas['TaskList']>('GET', '/v1/tasks', { query: { ...query }, signal: opts?.signal }),
    history: async (taskId, opts) => (await call<TaskHistory>('GET', `/v1/tasks/${id(taskId)}/history`, { signal: opts?.signal })).events,
    cancel: (taskId, opts) => call<Task>('POST', `/v1/tasks/${id(taskId)}/cancel`, { body: opts?.reason === undefined ? {} : { reason: opts.reason }, signal: opts?.signal }),
    requeue: (taskId, opts) => call<Task>('POST', `/v1/tasks/${id(taskId)}/requeue`, { signal: opts?.signal }),
    graph: (taskId, opts) => call<TaskGraph>('GET', `/v1/tasks/${id(taskId)}/graph`, { signal: opts?.signal }),
    submitWorkflow: (workflow, opts) =>
      call<Schemas['WorkflowResult']>('POST', '/v1/workflows', { body: workflow, signal: opts?.signal, ...(opts?.idempotencyKey ? { headers: { 'idempotency-key': opts.idempotencyKey } } : {}) }),
    waitFor: (taskId, opts = {}) => waitFor(taskId, opts),
    dlq: {
      list: (filter = {}, opts) => pages<Task>('/v1/dlq', { ...filter }, opts),
      requeue: (filter = {}, opts) => call<RequeueResult>('POST', '/v1/dlq/requeue', { body: filter, signal: opts?.signal }),
    },
    schedules: {
      list: (filter = {}, opts) => pages<Schedule>('/v1/schedules', { ...filter }, opts),
      get: (scheduleId, opts) => call<Schedule>('GET', `/v1/schedules/${id(scheduleId)}`, { signal: opts?.signal }),
      create: (schedule, opts) => call<Schedule>('POST', '/v1/schedules', { body: schedule, signal: opts?.signal }),
      pause: (scheduleId, opts) => call<Schedule>('POST', `/v1/schedules/${id(scheduleId)}/pause`, { signal: opts?.signal }),
      resume: (scheduleId, opts) => call<Schedule>('POST', `/v1/schedules/${id(scheduleId)}/resume`, { signal: opts?.signal }),
      delete: (scheduleId, opts) => call<void>('DELETE', `/v1/schedules/${id(scheduleId)}`, { signal: opts?.signal }),
    },
    cluster: (opts) => call<Cluster>('GET', '/v1/cluster', { signal: opts?.signal }),
  };

  async function waitFor(taskId: string, opts: WaitOptions): Promise<Task> {
    const stop = new AbortController();
    const signals = [stop.signal, ...(opts.signal ? [opts.signal] : [])];
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (opts.timeoutMs !== undefined) {
      const timeout = new FogschedApiError({ code: 'WAIT_TIMEOUT', status: 0, detail: `task ${taskId} did not finish within ${opts.timeoutMs} ms` });
      timer = setTimeout(() => stop.abort(timeout), opts.timeoutMs);
    }
    const signal = AbortSignal.any(signals);
    try {
      let task = await client.get(taskId, { signal });
      if (isTerminalState(task.state)) return task;
      if (opts.via !== 'poll' && !sseMissing) {
        const followed = await follow(taskId, signal);
        if (followed) return followed;
      }
      let delay = opts.pollIntervalMs ?? 100;
      const max = opts.maxPollIntervalMs ?? 2000;
      for (;;) {
        await sleep(delay, signal);
        delay = Math.min(max, Math.ceil(delay * 1.5));
        task = await client.get(taskId, { signal });
        if (isTerminalState(task.state)) return task;
      }
    } catch (error) {
      throw signal.aborted ? signal.reason : error;
    } finally {
      clearTimeout(timer);
      stop.abort();
    }
  }

  /**
   * Follows the task's event stream until the task is terminal; undefined when the API has no
   * stream (then the caller polls). Reconnects with Last-Event-ID when the stream ends early,
   * drops this client, or stays silent past three heartbeats.
   */
  async function follow(taskId: string, outer: AbortSignal): Promise<Task | undefined> {
    let lastEventId: string | undefined;
    let failures = 0;
    for (;;) {
      const attempt = new AbortController();
      const signal = AbortSignal.any([outer, attempt.signal]);
      let watchdog: ReturnType<typeof setTimeout> | undefined;
      const alive = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => attempt.abort(new Error('event stream silent')), 45_000);
      };
      try {
        let response: Response;
        try {
          response = await send('GET', `/v1/tasks/${id(taskId)}/events`, { signal, ...(lastEventId ? { headers: { 'last-event-id': lastEventId } } : {}) }, 'text/event-stream');
        } catch (error) {
          if (isFogschedApiError(error) && isNoStream(error)) {
            sseMissing = true;
            return undefined;
          }
          throw error;
        }
        if (!(response.headers.get('content-type') ?? '').startsWith('text/event-stream') || !response.body) {
          await response.body?.cancel();
          sseMissing = true;
          return undefined;
        }
        alive();
        // The stream may start after the terminal event (it is not said to replay): look once it is open.
        const now = await client.get(taskId, { signal });
        if (isTerminalState(now.state)) return now;
        let events = 0;
        for await (const event of readServerSentEvents(response.body, alive)) {
          events += 1;
          failures = 0;
          if (event.id !== undefined) lastEventId = event.id;
          if (event.event === 'dropped') break;
          if (TERMINAL_EVENTS.has(event.event)) {
            const task = await client.get(taskId, { signal });
            if (isTerminalState(task.state)) return task;
          }
        }
        // The stream ended (after the terminal event, or the server went away): look, then reconnect.
        const after = await client.get(taskId, { signal });
        if (isTerminalState(after.state)) return after;
        // A stream that keeps ending with nothing in it helps no more than polling would.
        if (events === 0 && ++failures >= 3) return undefined;
      } catch (error) {
        if (outer.aborted) throw outer.reason;
        // Bad credentials, a task that does not exist: no reconnect helps.
        if (isFogschedApiError(error) && error.status >= 400 && error.status < 500 && error.status !== 408 && error.status !== 429) throw error;
        // Three failed connections in a row: polling is the safer way on.
        if (++failures >= 3) return undefined;
      } finally {
        clearTimeout(watchdog);
        attempt.abort();
      }
      await sleep(Math.min(5000, 250 * 2 ** failures), outer);
    }
  }

  return client;
}

/** The API has no task event stream: an older server (no route), or one that will not stream to us. */
function isNoStream(error: FogschedApiError): boolean {
  return error.code === 'ROUTE_NOT_FOUND' || error.status === 405 || error.status === 406 || error.status === 501 || (error.status === 404 && error.problem === undefined);
}

async function problemOf(response: Response, method: string, target: string): Promise<FogschedApiError> {
  const text = await response.text().catch(() => '');
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const p = body as Partial<ProblemDetails> | undefined;
  if (p && typeof p === 'object' && typeof p.code === 'string') {
    return new FogschedApiError({ code: p.code, status: response.status, detail: typeof p.detail === 'string' ? p.detail : p.code, problem: p as ProblemDetails });
  }
  const path = new URL(target).pathname;
  return new FogschedApiError({ code: 'BAD_RESPONSE', status: response.status, detail: `${method} ${path}: HTTP ${response.status} ${response.statusText}${text ? ` (${text.slice(0, 80)})` : ''}` });
}

function causeText(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } } | undefined)?.cause;
  if (cause?.code) return cause.code === 'ECONNREFUSED' ? 'connection refused' : `${cause.code}${cause.message && !cause.message.includes(cause.code) ? ` ${cause.message}` : ''}`;
  return error instanceof Error ? (cause?.message ?? error.message) : String(error);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason as Error);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

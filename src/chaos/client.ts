import { createWriteStream } from 'node:fs';
import type { AcknowledgedCancel, ClientLog, SubmitOutcome } from './checker.js';
import { between, pickOne, sleep, type Random } from './util.js';

/**
 * The chaos client: submits a seeded mix of tasks through both APIs while the nemesis works,
 * cancels some of them in every state, keeps one cron schedule firing, and writes every
 * request with its answer to a JSONL file. A submit whose answer was lost (timeout, reset,
 * 5xx) or refused is retried with the same Idempotency-Key for about 30 s; if no attempt got a
 * 2xx it stays "unknown" (or "rejected" when every attempt was refused or answered 4xx).
 */

export interface ClientOptions {
  /** Ports of the APIs, used in turn. */
  readonly apiPorts: readonly number[];
  readonly random: Random;
  readonly tasks: number;
  /** Submits are spread over this long. */
  readonly durationMs: number;
  /** Where every request and answer goes, one JSON object a line. */
  readonly recordPath: string;
  readonly log?: (line: string) => void;
  /** Requests in flight at most (a stalled system must not get thousands of sockets). */
  readonly maxInFlight?: number;
  /** The run stops early (e.g. on a signal). */
  readonly signal?: AbortSignal;
}

export interface ClientResult extends ClientLog {
  /** Logical submits per scenario. */
  readonly scenarios: Record<string, number>;
  /** Answers over every request: by HTTP status, or `refused` / `unknown` (timeout, reset) when there was none. */
  readonly answers: Record<string, number>;
  readonly scheduleId: string | null;
  /** Deletes the cron schedule (retrying until the API answers) and closes the record file; call before the recovery wait. */
  finish(): Promise<void>;
}

/** Waits between the tries of one submit: about 30 s in all. */
const RETRY_DELAYS_MS = [300, 1000, 2000, 4000, 8000, 8000, 8000] as const;

type Answer = { status: number | null; body: unknown; kind: '2xx' | '4xx' | '5xx' | 'refused' | 'unknown'; error?: string };

interface Item {
  readonly ref: string;
  readonly scenario: string;
  /** Built once, so a retry sends the very same request (the Idempotency-Key's request hash). */
  readonly body: Record<string, unknown>;
  readonly expect4xx: boolean;
  readonly cancel?: 'queued' | 'delayed' | 'running' | 'retrying';
}

type Job =
  | { kind: 'single'; item: Item }
  | { kind: 'batch'; items: Item[]; invalid: boolean }
  /** A small DAG (issue 20) in one batch with ids of the client's own; `cancelRoot` cancels its first task soon after. */
  | { kind: 'workflow'; items: Item[]; cancelRoot: boolean };

const TIERS = [
  { weight: 70, resources: undefined },
  { weight: 20, resources: { cpu: 0.75, memoryMb: 700 } },
  { weight: 10, resources: { cpu: 1, memoryMb: 1000 } },
] as const;

function weighted<T extends { weight: number }>(random: Random, list: readonly T[]): T {
  const total = list.reduce((s, x) => s + x.weight, 0);
  let r = random() * total;
  for (const x of list) {
    r -= x.weight;
    if (r < 0) return x;
  }
  return list[list.length - 1] as T;
}

/** The scenarios and how often each comes up. `build` gets the ref and returns the submit body (times relative to now). */
const SCENARIOS: readonly { name: string; weight: number; batchable: boolean; cancel?: Item['cancel']; expect4xx?: boolean; build: (r: Random, ref: string) => Record<string, unknown> }[] = [
  { name: 'noop', weight: 28, batchable: true, build: (_r, ref) => ({ type: 'noop', payload: { ref } }) },
  { name: 'sleep', weight: 14, batchable: true, build: (r, ref) => ({ type: 'sleep', payload: { ref, ms: between(r, 20, 400) } }) },
  { name: 'sleep-long', weight: 5, batchable: true, build: (r, ref) => ({ type: 'sleep', payload: { ref, ms: between(r, 1000, 3000) } }) },
  { name: 'fail-permanent', weight: 5, batchable: true, build: (_r, ref) => ({ type: 'fail', payload: { ref, retryable: false, message: 'chaos: permanent failure' } }) },
  { name: 'fail-retryable', weight: 5, batchable: true, build: (r, ref) => ({ type: 'fail', payload: { ref, retryable: true, message: 'chaos: retryable failure' }, maxAttempts: between(r, 2, 3) }) },
  { name: 'flaky', weight: 8, batchable: true, build: (r, ref) => ({ type: 'flaky', payload: { ref, failTimes: between(r, 1, 2) }, maxAttempts: 3 }) },
  { name: 'poison', weight: 2, batchable: true, build: (_r, ref) => ({ type: 'crash', payload: { ref }, maxAttempts: 2 }) },
  { name: 'timeout-spin', weight: 2, batchable: true, build: (_r, ref) => ({ type: 'spin', payload: { ref, ms: 2000 }, timeoutMs: 300, maxAttempts: 2 }) },
  { name: 'timeout-sleep', weight: 3, batchable: true, build: (_r, ref) => ({ type: 'sleep', payload: { ref, ms: 5000 }, timeoutMs: 300, maxAttempts: 2 }) },
  { name: 'unstorable-output', weight: 1, batchable: true, build: (_r, ref) => ({ type: 'unstorable', payload: { ref } }) },
  { name: 'delayed', weight: 8, batchable: true, build: (r, ref) => ({ type: 'noop', payload: { ref }, notBefore: inMs(between(r, 2000, 12_000)) }) },
  { name: 'cancel-queued', weight: 3, batchable: false, cancel: 'queued', build: (r, ref) => ({ type: 'sleep', payload: { ref, ms: between(r, 20, 200) } }) },
  // Due 10–25 s later: faults in between (Redis lost, fog nodes restarted) must not let it run.
  { name: 'cancel-delayed', weight: 3, batchable: false, cancel: 'delayed', build: (r, ref) => ({ type: 'noop', payload: { ref }, notBefore: inMs(between(r, 10_000, 25_000)) }) },
  { name: 'cancel-running', weight: 3, batchable: false, cancel: 'running', build: (r, ref) => ({ type: 'sleep', payload: { ref, ms: between(r, 4000, 6000) } }) },
  {
    name: 'cancel-retrying',
    weight: 3,
    batchable: false,
    cancel: 'retrying',
    // Fails every attempt; the long fixed backoff leaves time to cancel while it waits.
    build: (_r, ref) => ({ type: 'flaky', payload: { ref, failTimes: 10 }, maxAttempts: 4, retry: { baseMs: 4000, factor: 1, maxMs: 4000 } }),
  },
  {
    name: 'invalid',
    weight: 2,
    batchable: false,
    expect4xx: true,
    build: (r, ref) =>
      pickOne(r, [
        { type: 'noop', payload: { ref }, resources: { cpu: 8, memoryMb: 64 } }, // no tier fits: 422
        { type: 'noop', payload: { ref }, notBefore: inMs(60_000), deadline: inMs(30_000) }, // deadline before notBefore: 400
        { type: 'noop', payload: { ref }, maxAttempts: 0 }, // schema: 400
        { type: 'noop', payload: { ref }, dependsOn: [uuidOf(r)] }, // an unknown dependency: 400
      ]),
  },
];

/** A (seeded) random UUID v4: a workflow's ids are the client's own, so a retried batch names the same tasks. */
function uuidOf(r: Random): string {
  const hex = Array.from({ length: 32 }, () => Math.floor(r() * 16).toString(16)).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${'89ab'[Math.floor(r() * 4)]}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/** The steps a chaos workflow is made of: quick ones, some that fail (to propagate), a flaky one that retries. */
const WORKFLOW_STEPS: readonly { name: string; weight: number; build: (r: Random, ref: string) => Record<string, unknown> }[] = [
  { name: 'noop', weight: 5, build: (_r, ref) => ({ type: 'noop', payload: { ref } }) },
  { name: 'sleep', weight: 3, build: (r, ref) => ({ type: 'sleep', payload: { ref, ms: between(r, 20, 600) } }) },
  { name: 'fail-permanent', weight: 1, build: (_r, ref) => ({ type: 'fail', payload: { ref, retryable: false, message: 'chaos: workflow step failed' } }) },
  { name: 'flaky', weight: 1, build: (_r, ref) => ({ type: 'flaky', payload: { ref, failTimes: 1 }, maxAttempts: 3 }) },
];

function inMs(ms: number): string {
  return new Date(Date.now() + ms).toISOString();
}

export async function runClient(opts: ClientOptions): Promise<ClientResult> {
  const log = opts.log ?? (() => {});
  const random = opts.random;
  const out = createWriteStream(opts.recordPath, { flags: 'a' });
  const record = (entry: Record<string, unknown>) => out.write(`${JSON.stringify(entry)}\n`);
  const answers: Record<string, number> = {};
  const scenarios: Record<string, number> = {};
  const submits: SubmitOutcome[] = [];
  const cancels: AcknowledgedCancel[] = [];
  let api = 0;
  let seq = 0;
  const nextRef = () => `c${++seq}`;

  const call = async (method: string, path: string, body: unknown, headers: Record<string, string> = {}, port = opts.apiPorts[api++ % opts.apiPorts.length] as number): Promise<Answer & { port: number; sentAt: number; answeredAt: number }> => {
    const sentAt = Date.now();
    let answer: Answer;
    try {
      const res = await fetch(`http://127.0.0.1:${port}${path}`, {
        method,
        headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // not JSON
      }
      const kind = res.status >= 200 && res.status < 300 ? '2xx' : res.status >= 400 && res.status < 500 ? '4xx' : res.status >= 500 ? '5xx' : 'unknown';
      answer = { status: res.status, body: parsed, kind };
    } catch (error) {
      const code = ((error as { cause?: { code?: string } }).cause?.code ?? (error as { code?: string }).code);
      // Refused: no connection was made, so the request never arrived. Anything else may have.
      answer = { status: null, body: null, kind: code === 'ECONNREFUSED' ? 'refused' : 'unknown', error: `${(error as Error).name}: ${code ?? (error as Error).message}` };
    }
    const answeredAt = Date.now();
    // By status (a 500 is a bug, a 503 an outage), the rest by kind.
    const key = answer.status !== null ? String(answer.status) : answer.kind;
    answers[key] = (answers[key] ?? 0) + 1;
    return { ...answer, port, sentAt, answeredAt };
  };

  /** Sends until a definite answer (2xx or 4xx) or the last try; the outcome over all tries. */
  const submitItems = async (items: readonly Item[], batch: boolean): Promise<(string | null)[]> => {
    const refs = items.map((i) => i.ref);
    // A user's client keeps trying through an outage: the retries span about 30 s, longer than
    // a PostgreSQL restart or a paused api, so most submits land and the Idempotency-Key is
    // exercised under faults (a retry of a submit that was in fact written must not duplicate it).
    const tries = items.some((i) => i.expect4xx) ? 1 : RETRY_DELAYS_MS.length + 1;
    let accepted: (string | null)[] | null = null;
    let sawUnknown = false;
    for (let t = 0; t < tries && !accepted; t++) {
      if (t > 0) await sleep(RETRY_DELAYS_MS[t - 1] as number);
      const a = batch
        ? await call('POST', '/v1/tasks/batch', { tasks: items.map((i) => ({ ...i.body, idempotencyKey: i.ref })) })
        : await call('POST', '/v1/tasks', (items[0] as Item).body, { 'idempotency-key': (items[0] as Item).ref });
      let ids: (string | null)[] | undefined;
      if (a.kind === '2xx') {
        ids = batch ? ((a.body as { tasks?: { id: string }[] }).tasks ?? []).map((x) => x.id ?? null) : [(a.body as { id?: string }).id ?? null];
        accepted = ids;
      }
      if (a.kind === 'unknown' || a.kind === '5xx') sawUnknown = true;
      record({
        kind: batch ? 'batch' : 'submit',
        refs,
        scenarios: items.map((i) => i.scenario),
        try: t + 1,
        port: a.port,
        sentAt: a.sentAt,
        answeredAt: a.answeredAt,
        status: a.status,
        answer: a.kind,
        ...(ids ? { taskIds: ids } : {}),
        ...(a.kind === '4xx' || a.kind === '5xx' ? { problem: (a.body as { code?: string } | null)?.code ?? null } : {}),
        ...(a.error ? { error: a.error } : {}),
      });
      if (a.kind === '4xx') break;
    }
    items.forEach((item, i) => {
      const outcome: SubmitOutcome['outcome'] = accepted ? 'accepted' : sawUnknown ? 'unknown' : 'rejected';
      submits.push({ ref: item.ref, outcome, taskId: accepted?.[i] ?? null });
    });
    return accepted ?? items.map(() => null);
  };

  const taskState = async (taskId: string): Promise<string | null> => {
    const a = await call('GET', `/v1/tasks/${taskId}`, undefined);
    return a.kind === '2xx' ? ((a.body as { state?: string }).state ?? null) : null;
  };

  /** Cancels until a definite answer; a 2xx is recorded as acknowledged at its answer time. */
  const cancel = async (taskId: string, ref: string, stateSeen: string | null) => {
    for (let t = 0; t < 6; t++) {
      if (t > 0) await sleep(500 * t);
      const a = await call('POST', `/v1/tasks/${taskId}/cancel`, { reason: `chaos ${ref}` });
      record({ kind: 'cancel', taskId, ref, stateSeen, try: t + 1, port: a.port, sentAt: a.sentAt, answeredAt: a.answeredAt, status: a.status, answer: a.kind, ...(a.error ? { error: a.error } : {}) });
      if (a.kind === '2xx') {
        cancels.push({ taskId, answeredAt: a.answeredAt });
        return;
      }
      if (a.kind === '4xx') return; // 409: it had ended already
    }
  };

  /** Polls until the task is in `want` (or ended, or the wait is over), then cancels it. */
  const cancelWhen = async (taskId: string, ref: string, want: string, maxWaitMs: number) => {
    const deadline = Date.now() + maxWaitMs;
    let seen: string | null = null;
    while (Date.now() < deadline) {
      seen = await taskState(taskId);
      if (seen === want || seen === 'succeeded' || seen === 'failed' || seen === 'cancelled') break;
      await sleep(200);
    }
    await cancel(taskId, ref, seen);
  };

  const runJob = async (job: Job) => {
    if (job.kind === 'batch') {
      await submitItems(job.items, true);
      return;
    }
    if (job.kind === 'workflow') {
      const [root] = await submitItems(job.items, true);
      if (root && job.cancelRoot) {
        // Soon after: the root may still be queued or running (its waiting descendants are then
        // cancelled, or released by policy "run"), or done already (409, nothing to check).
        await sleep(between(random, 0, 300));
        await cancel(root, (job.items[0] as Item).ref, null);
      }
      return;
    }
    const { item } = job;
    const [taskId] = await submitItems([item], false);
    if (!taskId || !item.cancel) return;
    switch (item.cancel) {
      case 'queued':
        return cancel(taskId, item.ref, 'queued');
      case 'delayed':
        await sleep(between(random, 200, 2000));
        return cancel(taskId, item.ref, 'scheduled');
      case 'running':
        return cancelWhen(taskId, item.ref, 'running', 12_000);
      case 'retrying':
        return cancelWhen(taskId, item.ref, 'retrying', 15_000);
    }
  };

  // --- the plan: jobs spread evenly over the duration ------------------------------------
  const makeItem = (pool: typeof SCENARIOS): Item => {
    const s = weighted(random, pool);
    const ref = nextRef();
    const body = s.build(random, ref);
    const tier = weighted(random, TIERS);
    const priority = weighted(random, [
      { weight: 2, p: 'high' },
      { weight: 6, p: 'normal' },
      { weight: 2, p: 'low' },
    ]).p;
    scenarios[s.name] = (scenarios[s.name] ?? 0) + 1;
    return {
      ref,
      scenario: s.name,
      body: { ...body, priority, ...(tier.resources && !body.resources ? { resources: tier.resources } : {}) },
      expect4xx: s.expect4xx === true,
      ...(s.cancel ? { cancel: s.cancel } : {}),
    };
  };
  const jobs: (() => Job)[] = [];
  let planned = 0;
  // A workflow: 3 to 7 steps; each after the first depends on one or two earlier ones (so the
  // first is an ancestor of all), a quarter of them run whatever their dependencies' outcome.
  const makeWorkflow = (size: number, cancelRoot: boolean): Job => {
    const ids: string[] = [];
    const items = Array.from({ length: size }, (_, k): Item => {
      const step = weighted(random, WORKFLOW_STEPS);
      const ref = nextRef();
      const id = uuidOf(random);
      const deps = k === 0 ? [] : [...new Set([ids[between(random, 0, k - 1)] as string, ...(random() < 0.4 ? [ids[between(random, 0, k - 1)] as string] : [])])];
      ids.push(id);
      const name = `workflow-${step.name}`;
      scenarios[name] = (scenarios[name] ?? 0) + 1;
      return {
        ref,
        scenario: name,
        body: { ...step.build(random, ref), id, ...(deps.length > 0 ? { dependsOn: deps, ...(random() < 0.25 ? { onDependencyFailure: 'run' } : {}) } : {}) },
        expect4xx: false,
      };
    });
    return { kind: 'workflow', items, cancelRoot };
  };
  while (planned < opts.tasks) {
    if (random() < 0.06 && opts.tasks - planned >= 7) {
      const size = between(random, 3, 7);
      const cancelRoot = random() < 0.25;
      planned += size;
      jobs.push(() => makeWorkflow(size, cancelRoot));
    } else if (random() < 0.12 && opts.tasks - planned >= 5) {
      const size = Math.min(opts.tasks - planned, between(random, 5, 20));
      const invalid = random() < 0.1;
      planned += size;
      // Bodies are made when the job runs: delays (notBefore) count from then.
      jobs.push(() => {
        const items = Array.from({ length: size }, () => makeItem(SCENARIOS.filter((s) => s.batchable)));
        if (invalid) {
          const bad = makeItem(SCENARIOS.filter((s) => s.expect4xx));
          items[between(random, 0, items.length - 1)] = bad;
        }
        return { kind: 'batch', items, invalid };
      });
    } else {
      planned++;
      jobs.push(() => ({ kind: 'single', item: makeItem(SCENARIOS) }));
    }
  }

  // --- the cron schedule: one run every 3 s while the client works ------------------------
  let scheduleId: string | null = null;
  for (let t = 0; t < 20 && !scheduleId && !opts.signal?.aborted; t++) {
    const a = await call('POST', '/v1/schedules', { name: 'chaos', cron: '*/3 * * * * *', catchUp: 'skip', template: { type: 'noop', payload: { ref: 'cron' } } });
    record({ kind: 'schedule', action: 'create', try: t + 1, status: a.status, answer: a.kind, sentAt: a.sentAt, answeredAt: a.answeredAt });
    if (a.kind === '2xx') scheduleId = (a.body as { id: string }).id;
    else await sleep(500);
  }
  if (!scheduleId) log('client: could not create the cron schedule');

  const maxInFlight = opts.maxInFlight ?? 64;
  const inFlight = new Set<Promise<void>>();
  const t0 = Date.now();
  for (let i = 0; i < jobs.length && !opts.signal?.aborted; i++) {
    const dueAt = t0 + (i / jobs.length) * opts.durationMs;
    if (dueAt > Date.now()) await sleep(dueAt - Date.now());
    while (inFlight.size >= maxInFlight) await Promise.race(inFlight);
    const p: Promise<void> = runJob((jobs[i] as () => Job)()).catch((error: unknown) => log(`client job failed: ${(error as Error).message}`));
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
  }
  await Promise.all(inFlight);

  return {
    submits,
    cancels,
    scenarios,
    answers,
    scheduleId,
    async finish() {
      for (let t = 0; t < 60 && scheduleId; t++) {
        const a = await call('DELETE', `/v1/schedules/${scheduleId}`, undefined);
        record({ kind: 'schedule', action: 'delete', try: t + 1, status: a.status, answer: a.kind, sentAt: a.sentAt, answeredAt: a.answeredAt });
        if (a.kind === '2xx' || a.status === 404) break;
        await sleep(1000);
      }
      await new Promise<void>((resolve) => out.end(() => resolve()));
    },
  };
}

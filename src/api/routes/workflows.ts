import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { createHmac } from 'node:crypto';
import { sql } from 'kysely';
import { uuidv7 } from '../../infra/ids.js';
import { FogschedError } from '../../domain/index.js';
import type { SubmitInput } from '../../tasks/index.js';
import { IdempotencyHeaders, INPUT_LIMITS, TASK_EXAMPLE, WorkflowBody, WorkflowResult, json, problemOf, problems, ref } from '../schemas.js';
import { toTaskView } from '../task-view.js';
import { DEFAULT_API_LIMITS, type ApiDeps } from '../app.js';
import { callerOf } from '../caller.js';
import { checkPayloadSizes, checkTaskTimes } from '../input.js';
import { withWarnings } from '../placement-warning.js';
import { admit, SUBMIT_GRAPH_PROBLEMS } from './tasks.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A workflow that cannot be a DAG of its steps: a repeated step, a dependency that names nothing, a cycle. Nothing is written. */
export class InvalidWorkflowError extends FogschedError {
  constructor(errors: { path: string; message: string }[]) {
    const first = errors[0] as { path: string; message: string };
    super({ code: 'INVALID_WORKFLOW', status: 400, message: `workflow rejected, nothing stored: ${first.path}: ${first.message}${errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}`, details: { errors } });
  }
}

/**
 * The id of a step: with an Idempotency-Key, the same for the same tenant, key and step, so a
 * retried request names the same tasks and the submit of a task id with the same body returns it;
 * without one, a new time-ordered id. Derived by an HMAC under the servers' secret (migration 15,
 * `server_secrets`), not a public hash: ids are one space across tenants, and a tenant that could
 * compute another's step ids (its keys are often guessable, `nightly-2026-11-27`) could take them
 * first and make that workflow 409. The digest's first 16 bytes, as a UUID of version 8.
 */
export function stepTaskId(secret: string, tenant: string, key: string | undefined, step: string): string {
  if (key === undefined) return uuidv7();
  const b = createHmac('sha256', secret).update(JSON.stringify([tenant, key, step])).digest().subarray(0, 16);
  b[6] = ((b[6] as number) & 0x0f) | 0x80;
  b[8] = ((b[8] as number) & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** The secret of the step ids, read once per process (every api replica reads the same row). */
let stepSecret: Promise<string> | undefined;
function stepIdSecret(db: ApiDeps['db']): Promise<string> {
  stepSecret ??= sql<{ secret: string }>`SELECT secret FROM server_secrets WHERE name = 'workflow-step-ids'`
    .execute(db)
    .then((r) => {
      const secret = r.rows[0]?.secret;
      if (!secret) throw new Error('server_secrets has no workflow-step-ids row: run the migrations');
      return secret;
    })
    .catch((error: unknown) => {
      stepSecret = undefined; // a database that was down: read again next time
      throw error;
    });
  return stepSecret;
}

/** The steps in an order where each comes after the steps it depends on; throws InvalidWorkflowError on a repeat, an unknown name or a cycle. */
export function orderSteps(steps: readonly { readonly step: string; readonly dependsOn?: readonly string[] }[]): number[] {
  const errors: { path: string; message: string }[] = [];
  const index = new Map<string, number>();
  steps.forEach((s, i) => {
    const earlier = index.get(s.step);
    if (earlier !== undefined) errors.push({ path: `body/steps/${i}/step`, message: `step ${s.step} repeats steps/${earlier}` });
    else index.set(s.step, i);
  });
  const after = steps.map(() => [] as number[]); // after[i]: the steps depending on step i
  const pending = steps.map(() => 0);
  steps.forEach((s, i) => {
    for (const [j, dep] of (s.dependsOn ?? []).entries()) {
      const k = index.get(dep);
      if (k !== undefined) {
        if (k === i) errors.push({ path: `body/steps/${i}/dependsOn/${j}`, message: `step ${s.step} depends on itself` });
        else {
          after[k]!.push(i);
          pending[i]!++;
        }
      } else if (!UUID.test(dep)) errors.push({ path: `body/steps/${i}/dependsOn/${j}`, message: `${dep} is no step of this workflow and no task id` });
    }
  });
  if (errors.length > 0) throw new InvalidWorkflowError(errors);
  // Kahn's algorithm, taking ready steps in the request's order.
  const order: number[] = [];
  const ready = pending.flatMap((n, i) => (n === 0 ? [i] : []));
  while (ready.length > 0) {
    const i = ready.shift() as number;
    order.push(i);
    for (const j of after[i]!) if (--pending[j]! === 0) ready.push(j);
  }
  if (order.length < steps.length) {
    const inCycle = pending.flatMap((n, i) => (n > 0 ? [i] : []));
    throw new InvalidWorkflowError(inCycle.map((i) => ({ path: `body/steps/${i}/dependsOn`, message: `step ${steps[i]!.step} is on a dependency cycle (or depends on one)` })));
  }
  return order;
}

export const workflowRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  const maxPayloadBytes = deps.inputLimits?.maxPayloadBytes ?? DEFAULT_API_LIMITS.maxPayloadBytes;

  app.post(
    '/v1/workflows',
    {
      config: { access: 'submitter' },
      schema: {
        operationId: 'submitWorkflow',
        summary: 'Submit a workflow: named steps that depend on each other, in one batch',
        description: [
          `Sugar for POST /v1/tasks/batch: each step is a task (at most ${INPUT_LIMITS.maxWorkflowSteps}), its dependsOn names steps of the workflow or existing tasks (uuid).`,
          'All or nothing: a repeated step, a dependency that names nothing, or a cycle is 400 INVALID_WORKFLOW and nothing is written.',
          'With an Idempotency-Key the step ids derive from the tenant, the key and the step name, so a retried request returns the same tasks (200); the same key with a different step body is 409 TASK_ID_CONFLICT.',
          'Each task is named <name>/<step> (or <step> without a workflow name) unless the step gives a name.',
        ].join(' '),
        tags: ['workflows'],
        headers: IdempotencyHeaders,
        body: WorkflowBody,
        response: {
          200: json(ref(WorkflowResult), 'an earlier submit with this Idempotency-Key and the same steps: their tasks', { steps: { fetch: TASK_EXAMPLE } }),
          202: json(ref(WorkflowResult), 'every step stored, each with its task', { steps: { fetch: TASK_EXAMPLE, process: { ...TASK_EXAMPLE, id: '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f12', state: 'waiting', dependsOn: [TASK_EXAMPLE.id], onDependencyFailure: 'cancel' } } }),
          ...problems(400, 401, 403, 413, 415, 422, 429, 503),
          ...SUBMIT_GRAPH_PROBLEMS,
          ...problemOf(
            400,
            'INVALID_WORKFLOW',
            'body/steps/2/dependsOn/0: agregate is no step of this workflow and no task id',
            'the request does not match the schema (VALIDATION_FAILED); a step repeats, a dependency names no step and is no uuid, or the steps make a cycle (INVALID_WORKFLOW); a uuid dependency is unknown or foreign (INVALID_DEPENDENCIES); a placement is not valid (INVALID_PLACEMENT); each in errors[] with its path. Nothing written',
          ),
        },
      },
    },
    async (request, reply) => {
      const { steps, name, onDependencyFailure } = request.body;
      const order = orderSteps(steps);
      steps.forEach((s, i) => checkTaskTimes(s, `body/steps/${i}`));
      checkPayloadSizes(steps.map((s, i) => ({ path: `body/steps/${i}/payload`, payload: s.payload })), maxPayloadBytes);
      const caller = callerOf(request);
      const key = request.headers['idempotency-key'];
      const secret = key === undefined ? '' : await stepIdSecret(deps.db);
      const ids = new Map(steps.map((s) => [s.step, stepTaskId(secret, caller.tenant, key, s.step)]));
      const liveTiers = deps.liveTiers?.().catch(() => null);
      const liveNodes = deps.liveNodes?.().catch(() => null);
      await admit(deps, request, reply, steps.length);
      const inputs = order.map((i): SubmitInput => {
        const { step, dependsOn, onDependencyFailure: own, name: stepName, ...fields } = steps[i]!;
        const dependencies = (dependsOn ?? []).map((d) => ids.get(d) ?? d.toLowerCase());
        const policy = own ?? onDependencyFailure;
        return {
          ...fields,
          id: ids.get(step),
          name: stepName ?? (name ? `${name}/${step}` : step),
          ...(dependencies.length > 0 ? { dependsOn: dependencies, ...(policy ? { onDependencyFailure: policy } : {}) } : {}),
        };
      });
      let results;
      try {
        results = await deps.tasks.submitBatch(inputs, caller);
      } catch (error) {
        throw toStepPaths(error, order);
      }
      const [tiers, nodes] = [await liveTiers, await liveNodes];
      const created = results.some((r) => r.created);
      const byStep = new Map(order.map((i, k) => [steps[i]!.step, withWarnings(toTaskView(results[k]!.task), tiers, nodes)] as const));
      // In the request's order; Object.fromEntries defines every step as an own property (a step may be called __proto__).
      const answer = Object.fromEntries(steps.map((s) => [s.step, byStep.get(s.step)!]));
      return reply.code(created ? 202 : 200).send({ steps: answer });
    },
  );
};

/** The batch names its items `body/tasks/<k>` in submit order; the client sent `body/steps/<i>`. */
function toStepPaths(error: unknown, order: readonly number[]): unknown {
  if (!(error instanceof FogschedError)) return error;
  const rename = (text: string) => text.replace(/(body\/)?tasks\/(\d+)/g, (_m, body: string | undefined, k: string) => `${body ?? ''}steps/${order[Number(k)] ?? k}`);
  const errors = (error.details?.errors as { path: string; message: string; code?: string }[] | undefined)?.map((e) => ({ ...e, path: rename(e.path), message: rename(e.message) }));
  return new FogschedError({
    code: error.code,
    status: error.status,
    message: rename(error.message),
    ...(error.details ? { details: { ...error.details, ...(errors ? { errors } : {}) } } : {}),
    cause: error,
  });
}

/**
 * Event schema evolution. Every stored event carries the schema version of its `data`; code
 * only ever sees the current shape, because reading the log runs each event through the
 * upcasters from its stored version up to the current one. An event type whose shape changes
 * gets a new version here and an upcaster from the previous one; old rows are never rewritten
 * (the log is append-only), so an upcaster is forever.
 *
 * History of the shapes:
 * - TaskSubmitted v1: `task.resources` was `{ cpu, memory }` (MB), and a task had no
 *   `deadline`, `retry` or `idempotencyKey`. v2 (current): `{ cpu, memoryMb }` and the three
 *   fields, null when unset.
 * - TaskAttemptFailed v1: `error` was the message alone and `retryable` sat beside it.
 *   v2 (current): `error: { message, code, retryable }`.
 * - TaskSubmitted v3 (issue 16): a task with nothing to wait for is queued by its TaskSubmitted,
 *   which then carries `attempt` (1) and `availableAt`, instead of a TaskQueued of attempt 1
 *   after it (one row of the log fewer per task). A v2 TaskSubmitted never carries them (its
 *   TaskQueued follows), so the upcaster from v2 changes nothing; the version moved so that code
 *   older than v3 refuses such a log instead of leaving its tasks `submitted`.
 * - Issue 20 added only optional fields, absent in older events and read as unset, so no
 *   version moved: TaskSubmitted's `task.name`, `dependsOn`, `onDependencyFailure`,
 *   `placement`, `fallbackAfterMs`; TaskCancelled's `dependency` and `dependencyState`. New
 *   types TaskWaiting, TaskReleased and TaskPlacementFallback start at version 1.
 */

type Data = Record<string, unknown>;
type Upcaster = (data: Data) => Data;

/** The current schema version of each event type; a type not listed is at version 1. */
export const EVENT_SCHEMA_VERSIONS: Readonly<Record<string, number>> = {
  TaskSubmitted: 3,
  TaskAttemptFailed: 2,
};

/** upcasters[type][v] turns version v into version v + 1. */
const UPCASTERS: Readonly<Record<string, Readonly<Record<number, Upcaster>>>> = {
  TaskSubmitted: {
    1: (data) => {
      const task = (data.task ?? {}) as Data;
      const { memory, ...resources } = (task.resources ?? {}) as Data;
      return {
        ...data,
        task: {
          ...task,
          resources: { ...resources, memoryMb: resources.memoryMb ?? memory },
          deadline: task.deadline ?? null,
          retry: task.retry ?? null,
          idempotencyKey: task.idempotencyKey ?? null,
        },
      };
    },
    // v2 and v3 differ only in what v3 may carry (`attempt`, `availableAt`: queued at the submit).
    2: (data) => data,
  },
  TaskAttemptFailed: {
    1: (data) => {
      const { retryable, error, ...rest } = data;
      if (typeof error !== 'string') return data;
      const canRetry = retryable !== false;
      return { ...rest, error: { message: error, code: canRetry ? 'handler_error' : 'non_retryable', retryable: canRetry } };
    },
  },
};

export function currentSchemaVersion(type: string): number {
  return EVENT_SCHEMA_VERSIONS[type] ?? 1;
}

/**
 * Brings `data` stored at `version` to the current shape of `type`. A version newer than the
 * code knows is an error: replaying it with old code would silently misread it.
 */
export function upcast(type: string, version: number, data: unknown): unknown {
  const current = currentSchemaVersion(type);
  if (version > current) {
    throw new Error(`event ${type} has schema version ${version}, newer than this code's ${current}: upgrade fogsched`);
  }
  let value = data;
  for (let v = version; v < current; v++) {
    const step = UPCASTERS[type]?.[v];
    if (!step) throw new Error(`no upcaster for ${type} from schema version ${v} to ${v + 1}`);
    value = step(value as Data);
  }
  return value;
}

import { sql } from 'kysely';
import type { Executor } from '../store/index.js';
import type { TaskStatus } from '../domain/index.js';

/** A task of a graph answer: what the dashboard and `task show` need to draw it. */
export interface TaskGraphNode {
  readonly taskId: string;
  readonly name: string | null;
  readonly type: string;
  readonly state: TaskStatus;
  readonly tier: string;
  readonly placement: { readonly zone?: string; readonly labels?: Readonly<Record<string, string>> } | null;
  readonly relation: 'self' | 'ancestor' | 'descendant';
  /** Shortest number of edges from the task. */
  readonly depth: number;
}

export interface TaskGraph {
  readonly taskId: string;
  /** The task first, then ancestors and descendants by depth. */
  readonly nodes: TaskGraphNode[];
  /** dependency → dependant, between listed nodes. */
  readonly edges: { readonly from: string; readonly to: string }[];
  /** More nodes than `maxNodes` are reachable; the nearest are listed. */
  readonly truncated: boolean;
}

interface NodeRow {
  task_id: string;
  name: string | null;
  type: string;
  state: string;
  tier: string;
  placement: TaskGraphNode['placement'];
}

/**
 * The tasks `taskId` depends on (ancestors) and those depending on it (descendants), transitively,
 * within its tenant; null when the task is not the tenant's. At most `maxNodes` nodes with the task.
 *
 * Read-only over task_dependencies (the write side's edges, migration 13) joined to task_current.
 * Raw SQL: recursive CTEs. Each CTE collects ids only, with UNION, so a node reached by many paths
 * is one row and a diamond-rich DAG does not blow up; PostgreSQL evaluates the recursion level by
 * level and stops once the LIMIT is served, so the ids come nearest first and a huge graph costs
 * `maxNodes` rows. The depths are the shortest paths, computed here over the edges among them.
 *
 * @example getTaskGraph(db, 'acme', id, { maxNodes: 10_000 })
 */
/** Most edges a graph answer lists (past it, `truncated`): about 5 MB of JSON. */
export const MAX_GRAPH_EDGES = 50_000;

export async function getTaskGraph(db: Executor, tenant: string, taskId: string, opts: { maxNodes: number; maxEdges?: number }): Promise<TaskGraph | null> {
  // Edges are bounded too: 1,000 steps each depending on all before it are 500,000 edges among 1,000 nodes.
  const maxEdges = opts.maxEdges ?? MAX_GRAPH_EDGES;
  const self = await nodeRows(db, tenant, [taskId]);
  const root = self[0];
  if (!root) return null;
  const budget = Math.max(0, opts.maxNodes - 1);
  // One row past the budget tells whether there is more.
  const ancestors = await sql<{ id: string }>`
    WITH RECURSIVE up(id) AS (
      SELECT depends_on FROM task_dependencies WHERE task_id = ${taskId}::uuid AND tenant = ${tenant}
      UNION
      SELECT d.depends_on FROM task_dependencies d JOIN up ON d.task_id = up.id WHERE d.tenant = ${tenant}
    )
    SELECT id FROM up LIMIT ${budget + 1}`.execute(db);
  const descendants = await sql<{ id: string }>`
    WITH RECURSIVE down(id) AS (
      SELECT task_id FROM task_dependencies WHERE depends_on = ${taskId}::uuid AND tenant = ${tenant}
      UNION
      SELECT d.task_id FROM task_dependencies d JOIN down ON d.depends_on = down.id WHERE d.tenant = ${tenant}
    )
    SELECT id FROM down LIMIT ${budget + 1}`.execute(db);
  const upIds = ancestors.rows.map((r) => r.id).filter((id) => id !== taskId);
  const downIds = descendants.rows.map((r) => r.id).filter((id) => id !== taskId);
  const ids = [taskId, ...upIds, ...downIds];
  const edgeRows = await sql<{ from: string; to: string }>`
    SELECT depends_on AS "from", task_id AS "to" FROM task_dependencies
     WHERE tenant = ${tenant} AND task_id = ANY(${ids}::uuid[]) AND depends_on = ANY(${ids}::uuid[])
     ORDER BY depends_on, task_id LIMIT ${maxEdges + 1}`.execute(db);
  const edgesCut = edgeRows.rows.length > maxEdges;
  if (edgesCut) edgeRows.rows.length = maxEdges;

  const upDepth = shortestDepths(taskId, edgeRows.rows, 'up');
  const downDepth = shortestDepths(taskId, edgeRows.rows, 'down');
  const related = [
    ...upIds.map((id) => ({ id, relation: 'ancestor' as const, depth: upDepth.get(id) ?? Number.MAX_SAFE_INTEGER })),
    ...downIds.map((id) => ({ id, relation: 'descendant' as const, depth: downDepth.get(id) ?? Number.MAX_SAFE_INTEGER })),
  ].sort((a, b) => a.depth - b.depth || (a.relation === b.relation ? 0 : a.relation === 'ancestor' ? -1 : 1));
  const kept = related.slice(0, budget);
  const truncated = related.length > budget || edgesCut;
  const rows = new Map((await nodeRows(db, tenant, kept.map((k) => k.id))).map((r) => [r.task_id, r]));
  const nodes: TaskGraphNode[] = [toNode(root, 'self', 0)];
  for (const k of kept) {
    const row = rows.get(k.id);
    // An edge to a task with no read-model row (a rebuild in progress) is left out rather than guessed.
    if (row) nodes.push(toNode(row, k.relation, k.depth));
  }
  const listed = new Set(nodes.map((n) => n.taskId));
  return { taskId, nodes, edges: edgeRows.rows.filter((e) => listed.has(e.from) && listed.has(e.to)), truncated };
}

async function nodeRows(db: Executor, tenant: string, ids: readonly string[]): Promise<NodeRow[]> {
  if (ids.length === 0) return [];
  return db
    .selectFrom('task_current')
    .select(['task_id', 'type', 'state', 'tier', sql<string | null>`spec->>'name'`.as('name'), sql<NodeRow['placement']>`nullif(spec->'placement', 'null'::jsonb)`.as('placement')])
    .where('tenant', '=', tenant)
    .where('task_id', 'in', ids)
    .execute();
}

function toNode(row: NodeRow, relation: TaskGraphNode['relation'], depth: number): TaskGraphNode {
  return {
    taskId: row.task_id,
    name: row.name,
    type: row.type,
    // A task the read model has not queued yet reads as queued (as the task view shows it).
    state: (row.state === 'new' ? 'queued' : row.state) as TaskStatus,
    tier: row.tier,
    placement: row.placement ?? null,
    relation,
    depth,
  };
}

/** Breadth-first distances from `start` along the edges, towards dependencies (`up`) or dependants (`down`). */
function shortestDepths(start: string, edges: readonly { from: string; to: string }[], direction: 'up' | 'down'): Map<string, number> {
  const next = new Map<string, string[]>();
  for (const e of edges) {
    const [a, b] = direction === 'up' ? [e.to, e.from] : [e.from, e.to];
    const list = next.get(a);
    if (list) list.push(b);
    else next.set(a, [b]);
  }
  const depth = new Map<string, number>([[start, 0]]);
  let frontier = [start];
  for (let d = 1; frontier.length > 0; d++) {
    const following: string[] = [];
    for (const id of frontier) {
      for (const n of next.get(id) ?? []) {
        if (depth.has(n)) continue;
        depth.set(n, d);
        following.push(n);
      }
    }
    frontier = following;
  }
  return depth;
}

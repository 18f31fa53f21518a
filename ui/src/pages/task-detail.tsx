import { useEffect, useState } from 'preact/hooks';
import { TERMINAL, api, type HistoryEntry, type Role, type Task, type TaskGraph, type TaskGraphNode } from '../api';
import { Confirm, ErrorNote, Json, StateBadge, formatMs, formatTime, useDebounced, useLive } from '../util';

/** What an event says beyond its type: error, reason, progress, the fields of its data worth a glance. */
function details(e: HistoryEntry): string {
  const parts: string[] = [];
  const error = e.error as { message?: string; code?: string } | null;
  if (error && typeof error === 'object') parts.push(`${error.code ? `${error.code}: ` : ''}${error.message ?? ''}`);
  if (e.reason) parts.push(`reason ${e.reason}`);
  const data = (e.data ?? {}) as Record<string, unknown>;
  if (typeof data.progress === 'number' || typeof data.progress === 'string') parts.push(`progress ${String(data.progress)}`);
  if (typeof data.message === 'string' && e.type.includes('Progress')) parts.push(data.message);
  if (typeof data.availableAt === 'string') parts.push(`next try ${formatTime(data.availableAt)}`);
  return parts.join(' · ');
}

/** The trace id of an event: a field of the history entry where the server adds it, else in its data. */
function traceOf(e: HistoryEntry): string | null {
  const data = (e.data ?? {}) as Record<string, unknown>;
  const value = e.traceId ?? data.traceId ?? data.traceparent;
  return typeof value === 'string' ? value : null;
}

function placementText(p: NonNullable<Task['placement']>): string {
  return [...(p.zone ? [`zone ${p.zone}`] : []), ...Object.entries(p.labels ?? {}).map(([k, v]) => `${k}=${v}`)].join(', ');
}

/** One side of the dependency graph: nearest first, indented by distance, each a link with its state. */
function GraphList({ nodes, label }: { nodes: TaskGraphNode[]; label: string }) {
  if (nodes.length === 0) return <p>None.</p>;
  return (
    <ul class="graph" aria-label={label}>
      {nodes.map((n) => (
        <li key={n.taskId} style={{ paddingLeft: `${(n.depth - 1) * 16}px` }}>
          <StateBadge state={n.state} />{' '}
          <a href={`#/tasks/${n.taskId}`} class={n.name ? undefined : 'mono'} title={n.taskId}>
            {n.name ?? n.taskId}
          </a>{' '}
          <span>
            {n.type} · {n.tier}
            {n.depth > 1 ? ` · ${n.depth} steps away` : ''}
            {n.placement ? ` · ${placementText(n.placement)}` : ''}
          </span>
        </li>
      ))}
    </ul>
  );
}

export function TaskDetail({ id, role }: { id: string; role: Role }) {
  const [task, setTask] = useState<Task>();
  const [history, setHistory] = useState<HistoryEntry[]>([]);
  const [graph, setGraph] = useState<TaskGraph | null>(null);
  const [error, setError] = useState<Error>();
  const [confirm, setConfirm] = useState<'cancel' | 'requeue' | null>(null);
  const [outcome, setOutcome] = useState<string | null>(null);

  const load = () => {
    // Apart from the task: an API without the graph (older server) leaves the section out, not the page.
    api<TaskGraph>(`/v1/tasks/${id}/graph`).then(setGraph, () => setGraph(null));
    return Promise.all([api<Task>(`/v1/tasks/${id}`), api<{ events: HistoryEntry[] }>(`/v1/tasks/${id}/history`)]).then(
      ([t, h]) => {
        setTask(t);
        setHistory(h.events);
        setError(undefined);
      },
      (e: Error) => setError(e),
    );
  };
  useEffect(() => {
    void load();
    const timer = setInterval(() => void load(), 5000);
    return () => clearInterval(timer);
  }, [id]);
  const refresh = useDebounced(() => void load(), 200);
  useLive(`/v1/tasks/${id}/events`, refresh);

  const act = async () => {
    const action = confirm;
    setConfirm(null);
    try {
      if (action === 'cancel') await api(`/v1/tasks/${id}/cancel`, { method: 'POST', body: { reason: 'cancelled from the dashboard' } });
      else await api(`/v1/tasks/${id}/requeue`, { method: 'POST' });
      setOutcome(action === 'cancel' ? 'Cancelled.' : 'Requeued.');
    } catch (e) {
      setOutcome(`Refused: ${(e as Error).message}`);
    }
    void load();
  };

  return (
    <>
      <h1 tabIndex={-1}>
        Task <span class="mono">{id}</span>
      </h1>
      <p>
        <a href="#/tasks">Back to tasks</a>
      </p>
      <ErrorNote error={error} />
      {task && (
        <>
          <dl class="facts">
            <dt>state</dt>
            <dd>
              <StateBadge state={task.state} />
            </dd>
            {task.name && (
              <>
                <dt>name</dt>
                <dd>{task.name}</dd>
              </>
            )}
            <dt>type</dt>
            <dd>{task.type}</dd>
            <dt>tier / priority</dt>
            <dd>
              {task.tier} / {task.priority}
            </dd>
            <dt>attempt</dt>
            <dd>
              {task.attempt} of {task.maxAttempts}
            </dd>
            <dt>node</dt>
            <dd>{task.nodeId ?? '—'}</dd>
            {task.placement && (
              <>
                <dt>placement</dt>
                <dd>
                  {placementText(task.placement)}
                  {task.fallbackAfterMs !== undefined ? ` (any node of the tier after ${formatMs(task.fallbackAfterMs)})` : ''}
                </dd>
              </>
            )}
            {task.dependsOn && (
              <>
                <dt>on dependency failure</dt>
                <dd>{task.onDependencyFailure === 'run' ? 'run anyway' : 'cancel'}</dd>
              </>
            )}
            <dt>submitted</dt>
            <dd>{formatTime(task.submittedAt)}</dd>
            <dt>finished</dt>
            <dd>{formatTime(task.finishedAt)}</dd>
            {task.failureReason && (
              <>
                <dt>failure</dt>
                <dd>
                  {task.failureReason}
                  {task.lastError ? `: ${task.lastError.code}: ${task.lastError.message}` : ''}
                </dd>
              </>
            )}
          </dl>
          {role === 'operator' && (
            <div class="toolbar" role="group" aria-label="Actions">
              <button type="button" disabled={TERMINAL.has(task.state)} onClick={() => setConfirm('cancel')}>
                Cancel task
              </button>
              <button type="button" disabled={task.state !== 'failed'} onClick={() => setConfirm('requeue')}>
                Requeue task
              </button>
              {outcome && <span role="status">{outcome}</span>}
            </div>
          )}
        </>
      )}
      {graph && graph.nodes.length > 1 && (
        <section aria-labelledby="graph-h">
          <h2 id="graph-h">Dependencies</h2>
          <h3>Depends on</h3>
          <GraphList nodes={graph.nodes.filter((n) => n.relation === 'ancestor')} label="Tasks this task depends on" />
          <h3>Dependants</h3>
          <GraphList nodes={graph.nodes.filter((n) => n.relation === 'descendant')} label="Tasks that depend on this task" />
          {graph.truncated && <p role="note">The graph is larger than one answer holds; the nearest tasks are shown.</p>}
        </section>
      )}
      <section aria-labelledby="timeline-h">
        <h2 id="timeline-h">Timeline</h2>
        <table class="timeline">
          <caption class="visually-hidden">Every event of the task, oldest first</caption>
          <thead>
            <tr>
              <th scope="col">#</th>
              <th scope="col">time</th>
              <th scope="col">after</th>
              <th scope="col">event</th>
              <th scope="col">state</th>
              <th scope="col">attempt</th>
              <th scope="col">node</th>
              <th scope="col">actor</th>
              <th scope="col">details</th>
              <th scope="col">trace id</th>
            </tr>
          </thead>
          <tbody>
            {history.map((e, i) => {
              const previous = history[i - 1];
              return (
                <tr key={e.position} data-event={e.type}>
                  <td>{e.version}</td>
                  <td>
                    <time dateTime={e.at}>{formatTime(e.at)}</time>
                  </td>
                  <td>{previous ? `+${formatMs(new Date(e.at).getTime() - new Date(previous.at).getTime())}` : ''}</td>
                  <td>{e.type}</td>
                  <td>{e.state}</td>
                  <td>{e.attempt}</td>
                  <td>{e.nodeId ?? ''}</td>
                  <td>{e.actor ?? ''}</td>
                  <td>{details(e)}</td>
                  <td class="mono">{traceOf(e) ?? ''}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </section>
      {task && (
        <div class="two">
          <section aria-labelledby="payload-h">
            <h2 id="payload-h">Payload</h2>
            <Json value={task.payload} label="Payload (JSON)" />
          </section>
          <section aria-labelledby="output-h">
            <h2 id="output-h">Output</h2>
            <Json value={task.output} label="Output (JSON)" />
          </section>
        </div>
      )}
      <Confirm
        open={confirm !== null}
        title={confirm === 'cancel' ? 'Cancel this task?' : 'Requeue this task?'}
        confirmLabel={confirm === 'cancel' ? 'Cancel 1 task' : 'Requeue 1 task'}
        onConfirm={() => void act()}
        onCancel={() => setConfirm(null)}
      >
        <p>{confirm === 'cancel' ? 'A running handler is aborted; a queued copy is skipped.' : 'The task is queued again with a fresh set of attempts.'}</p>
      </Confirm>
    </>
  );
}

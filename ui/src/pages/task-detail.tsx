import { useEffect, useState } from 'preact/hooks';
import { TERMINAL, api, type HistoryEntry, type Role, type Task } from '../api';
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

export function TaskDetail({ id, role }: { id: string; role: Role }) {
  const [task, setTask] = useState<Task>();
  const [history, setHistory] = useState<HistoryEntry[]>([]);
  const [error, setError] = useState<Error>();
  const [confirm, setConfirm] = useState<'cancel' | 'requeue' | null>(null);
  const [outcome, setOutcome] = useState<string | null>(null);

  const load = () =>
    Promise.all([api<Task>(`/v1/tasks/${id}`), api<{ events: HistoryEntry[] }>(`/v1/tasks/${id}/history`)]).then(
      ([t, h]) => {
        setTask(t);
        setHistory(h.events);
        setError(undefined);
      },
      (e: Error) => setError(e),
    );
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

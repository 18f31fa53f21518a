import { useState } from 'preact/hooks';
import { FAILURE_REASONS, api, query, type Page, type Role, type Task } from '../api';
import { Confirm, ErrorNote, formatTime, plural, shortId, usePoll } from '../util';

interface Filter {
  type: string;
  reason: string;
  since: string;
  until: string;
}
const EMPTY: Filter = { type: '', reason: '', since: '', until: '' };

/** The filter as the API takes it (datetime-local inputs are local times; the API wants RFC 3339). */
function apiFilter(f: Filter) {
  return {
    ...(f.type ? { type: f.type } : {}),
    ...(f.reason ? { reason: f.reason } : {}),
    ...(f.since ? { since: new Date(f.since).toISOString() } : {}),
    ...(f.until ? { until: new Date(f.until).toISOString() } : {}),
  };
}

interface RequeueResult {
  matched: number;
  requeued: number;
  dryRun: boolean;
}

export function Dlq({ role }: { role: Role }) {
  const [form, setForm] = useState<Filter>(EMPTY);
  const [filter, setFilter] = useState<Filter>(EMPTY);
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  const cursor = cursors[cursors.length - 1];
  const list = usePoll(() => api<Page<Task>>(`/v1/dlq${query({ ...apiFilter(filter), limit: 25, cursor })}`), 5000, [filter, cursor]);
  const [dryRun, setDryRun] = useState<{ filter: Filter; matched: number } | null>(null);
  const [confirming, setConfirming] = useState(false);
  const [outcome, setOutcome] = useState<string | null>(null);
  const [error, setError] = useState<Error>();

  const set = (k: keyof Filter) => (e: Event) => setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const apply = (e: Event) => {
    e.preventDefault();
    setFilter(form);
    setCursors([undefined]);
    setDryRun(null);
  };
  const count = async () => {
    setOutcome(null);
    try {
      // The filter of the list shown (applied), not what is typed but not yet applied.
      const r = await api<RequeueResult>('/v1/dlq/requeue', { method: 'POST', body: { ...apiFilter(filter), dryRun: true } });
      setDryRun({ filter, matched: r.matched });
      setError(undefined);
    } catch (e) {
      setError(e as Error);
    }
  };
  const requeue = async () => {
    setConfirming(false);
    if (!dryRun) return;
    try {
      const r = await api<RequeueResult>('/v1/dlq/requeue', { method: 'POST', body: apiFilter(dryRun.filter) });
      setOutcome(`${r.requeued} of ${r.matched} requeued`);
      setDryRun(null);
      setError(undefined);
      list.reload();
    } catch (e) {
      setError(e as Error);
    }
  };

  const items = list.data?.items ?? [];
  const reasons = new Map<string, number>();
  for (const t of items) reasons.set(t.failureReason ?? 'unknown', (reasons.get(t.failureReason ?? 'unknown') ?? 0) + 1);

  return (
    <>
      <h1 tabIndex={-1}>Dead letters</h1>
      <p class="muted">Failed tasks with their reason and last error. Requeue by filter: count first (a dry run), then requeue what matched.</p>
      <form class="filters" onSubmit={apply} aria-label="Filter failed tasks">
        <label>
          Type
          <input value={form.type} onInput={set('type')} maxLength={200} />
        </label>
        <div class="field">
          <label for="dlq-reason">Reason</label>
          <select id="dlq-reason" value={form.reason} onChange={set('reason')}>
            <option value="">any</option>
            {FAILURE_REASONS.map((r) => (
              <option key={r}>{r}</option>
            ))}
          </select>
        </div>
        <label>
          Failed from
          <input type="datetime-local" step={1} value={form.since} onInput={set('since')} />
        </label>
        <label>
          Failed until
          <input type="datetime-local" step={1} value={form.until} onInput={set('until')} />
        </label>
        <button type="submit">Apply</button>
      </form>
      {role === 'operator' && (
        <div class="toolbar" role="group" aria-label="Requeue by filter">
          <button type="button" onClick={() => void count()}>
            Count matching (dry run)
          </button>
          <button type="button" disabled={!dryRun || dryRun.matched === 0} onClick={() => setConfirming(true)}>
            {dryRun ? `Requeue ${plural(dryRun.matched, 'task')}` : 'Requeue matching'}
          </button>
          <span role="status">{dryRun ? `${plural(dryRun.matched, 'failed task')} match${dryRun.matched === 1 ? 'es' : ''}` : (outcome ?? '')}</span>
        </div>
      )}
      <ErrorNote error={error ?? list.error} />
      {reasons.size > 0 && (
        <p>
          On this page:{' '}
          {[...reasons].map(([reason, n]) => (
            <span key={reason} class="badge state-failed">
              {reason} {n}
            </span>
          ))}
        </p>
      )}
      <table>
        <caption class="visually-hidden">Failed tasks, newest first</caption>
        <thead>
          <tr>
            <th scope="col">id</th>
            <th scope="col">type</th>
            <th scope="col">reason</th>
            <th scope="col">last error</th>
            <th scope="col">attempts</th>
            <th scope="col">node</th>
            <th scope="col">failed</th>
          </tr>
        </thead>
        <tbody>
          {items.map((t) => (
            <tr key={t.id} data-task-id={t.id}>
              <td>
                <a href={`#/tasks/${t.id}`} class="mono" title={t.id}>
                  {shortId(t.id)}
                </a>
              </td>
              <td>{t.type}</td>
              <td>{t.failureReason ?? '—'}</td>
              <td>{t.lastError ? `${t.lastError.code}: ${t.lastError.message}` : '—'}</td>
              <td>
                {t.attempt}/{t.maxAttempts}
              </td>
              <td>{t.nodeId ?? '—'}</td>
              <td>{formatTime(t.finishedAt)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {list.data && items.length === 0 && <p class="muted">No failed task matches.</p>}
      <nav class="pager" aria-label="Pages of failed tasks">
        <button type="button" disabled={cursors.length === 1} onClick={() => setCursors(cursors.slice(0, -1))}>
          Previous page
        </button>
        <span>Page {cursors.length}</span>
        <button type="button" disabled={!list.data?.nextCursor} onClick={() => list.data?.nextCursor && setCursors([...cursors, list.data.nextCursor])}>
          Next page
        </button>
      </nav>
      <Confirm open={confirming} title={`Requeue ${plural(dryRun?.matched ?? 0, 'failed task')}?`} confirmLabel={`Requeue ${plural(dryRun?.matched ?? 0, 'task')}`} onConfirm={() => void requeue()} onCancel={() => setConfirming(false)}>
        <p>Each gets a fresh set of attempts. Tasks that fail between the count and now are requeued too (up to 1,000 per call).</p>
      </Confirm>
    </>
  );
}

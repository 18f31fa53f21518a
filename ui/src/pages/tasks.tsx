import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, PRIORITIES, TASK_STATES, TERMINAL, api, query, type Page, type Role, type Task } from '../api';
import { Confirm, ErrorNote, StateBadge, formatTime, plural, shortId, useDebounced, useLive } from '../util';

interface Filter {
  state: string;
  type: string;
  tier: string;
  priority: string;
  since: string;
  until: string;
}
const EMPTY: Filter = { state: '', type: '', tier: '', priority: '', since: '', until: '' };
const PAGE_SIZE = 25;

/**
 * One page of the list. The API filters by state, type, tier and priority; the submitted-time
 * window is applied here, relying on the list being newest first: pages are followed past tasks
 * newer than `until`, and the list ends at the first task older than `since`.
 */
async function loadPage(filter: Filter, cursor: string | undefined): Promise<Page<Task>> {
  const since = filter.since ? new Date(filter.since).getTime() : null;
  const until = filter.until ? new Date(filter.until).getTime() : null;
  const items: Task[] = [];
  let next: string | null | undefined = cursor;
  for (let round = 0; round < 20; round++) {
    const page: Page<Task> = await api<Page<Task>>(
      `/v1/tasks${query({ state: filter.state, type: filter.type, tier: filter.tier, priority: filter.priority, limit: PAGE_SIZE, cursor: next ?? undefined })}`,
    );
    next = page.nextCursor;
    for (const t of page.items) {
      const at = new Date(t.submittedAt).getTime();
      if (since !== null && at < since) return { items, nextCursor: null };
      if (until === null || at <= until) items.push(t);
    }
    if (items.length > 0 || next === null) break;
  }
  return { items, nextCursor: next ?? null };
}

export function Tasks({ role }: { role: Role }) {
  const [form, setForm] = useState<Filter>(EMPTY);
  const [filter, setFilter] = useState<Filter>(EMPTY);
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  const [page, setPage] = useState<Page<Task>>();
  const [error, setError] = useState<Error>();
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [bulk, setBulk] = useState<'cancel' | 'requeue' | null>(null);
  const [outcome, setOutcome] = useState<string | null>(null);
  const cursor = cursors[cursors.length - 1];
  const seq = useRef(0);

  const reload = () => {
    const mine = ++seq.current;
    loadPage(filter, cursor).then(
      (p) => {
        if (mine !== seq.current) return;
        setPage(p);
        setError(undefined);
      },
      (e: Error) => mine === seq.current && setError(e),
    );
  };
  useEffect(() => {
    reload();
    // A safety net under the live feed (and all there is where the server has no feed).
    const timer = setInterval(reload, 5000);
    return () => clearInterval(timer);
  }, [filter, cursor]);

  // Live: a change to a task on this page, or a new task while on the first page, reloads it.
  const refresh = useDebounced(reload, 300);
  useLive('/v1/events', (e) => {
    if (cursor === undefined || page?.items.some((t) => t.id === e.taskId)) refresh();
  });

  const set = (k: keyof Filter) => (e: Event) => setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const apply = (e: Event) => {
    e.preventDefault();
    setFilter(form);
    setCursors([undefined]);
    setSelected(new Set());
  };
  const toggle = (id: string) => {
    const next = new Set(selected);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    setSelected(next);
  };
  const items = page?.items ?? [];
  const selectedTasks = items.filter((t) => selected.has(t.id));
  const cancellable = selectedTasks.filter((t) => !TERMINAL.has(t.state));
  const requeueable = selectedTasks.filter((t) => t.state === 'failed');
  const targets = bulk === 'cancel' ? cancellable : requeueable;

  const runBulk = async () => {
    const action = bulk;
    setBulk(null);
    let done = 0;
    const refused: string[] = [];
    for (const t of targets) {
      try {
        if (action === 'cancel') await api(`/v1/tasks/${t.id}/cancel`, { method: 'POST', body: { reason: 'cancelled from the dashboard' } });
        else await api(`/v1/tasks/${t.id}/requeue`, { method: 'POST' });
        done++;
      } catch (err) {
        refused.push(`${shortId(t.id)}: ${err instanceof ApiError ? err.message : String(err)}`);
      }
    }
    setOutcome(`${done} ${action === 'cancel' ? 'cancelled' : 'requeued'}${refused.length ? `, ${refused.length} refused (${refused.join('; ')})` : ''}`);
    setSelected(new Set());
    reload();
  };

  return (
    <>
      <h1 tabIndex={-1}>Tasks</h1>
      <form class="filters" onSubmit={apply} aria-label="Filter tasks">
        <div class="field">
          <label for="tasks-state">State</label>
          <select id="tasks-state" value={form.state} onChange={set('state')}>
            <option value="">any</option>
            {TASK_STATES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </div>
        <label>
          Type
          <input value={form.type} onInput={set('type')} maxLength={200} />
        </label>
        <label>
          Tier
          <input value={form.tier} onInput={set('tier')} maxLength={50} />
        </label>
        <div class="field">
          <label for="tasks-priority">Priority</label>
          <select id="tasks-priority" value={form.priority} onChange={set('priority')}>
            <option value="">any</option>
            {PRIORITIES.map((p) => (
              <option key={p}>{p}</option>
            ))}
          </select>
        </div>
        <label>
          Submitted from
          <input type="datetime-local" step={1} value={form.since} onInput={set('since')} />
        </label>
        <label>
          Submitted until
          <input type="datetime-local" step={1} value={form.until} onInput={set('until')} />
        </label>
        <button type="submit">Apply</button>
      </form>
      <ErrorNote error={error} />
      {role === 'operator' && (
        <div class="toolbar" role="group" aria-label="Bulk actions">
          <span>{selected.size} selected</span>
          <button type="button" disabled={cancellable.length === 0} onClick={() => setBulk('cancel')}>
            Cancel selected ({cancellable.length})
          </button>
          <button type="button" disabled={requeueable.length === 0} onClick={() => setBulk('requeue')}>
            Requeue selected ({requeueable.length})
          </button>
          {outcome && <span role="status">{outcome}</span>}
        </div>
      )}
      <table class="tasks">
        <caption class="visually-hidden">Tasks, newest first</caption>
        <thead>
          <tr>
            {role === 'operator' && (
              <th scope="col">
                <input
                  type="checkbox"
                  aria-label="Select all tasks on this page"
                  checked={items.length > 0 && selected.size === items.length}
                  onChange={(e) => setSelected(e.currentTarget.checked ? new Set(items.map((t) => t.id)) : new Set())}
                />
              </th>
            )}
            <th scope="col">id</th>
            <th scope="col">type</th>
            <th scope="col">state</th>
            <th scope="col">tier</th>
            <th scope="col">priority</th>
            <th scope="col">attempt</th>
            <th scope="col">node</th>
            <th scope="col">submitted</th>
            <th scope="col">updated</th>
          </tr>
        </thead>
        <tbody>
          {items.map((t) => (
            <tr key={t.id} data-task-id={t.id}>
              {role === 'operator' && (
                <td>
                  <input type="checkbox" aria-label={`Select task ${shortId(t.id)}`} checked={selected.has(t.id)} onChange={() => toggle(t.id)} />
                </td>
              )}
              <td>
                <a href={`#/tasks/${t.id}`} class="mono" title={t.id}>
                  {shortId(t.id)}
                </a>
              </td>
              <td>{t.type}</td>
              <td>
                <StateBadge state={t.state} />
              </td>
              <td>{t.tier}</td>
              <td>{t.priority}</td>
              <td>
                {t.attempt}/{t.maxAttempts}
              </td>
              <td>{t.nodeId ?? '—'}</td>
              <td>{formatTime(t.submittedAt)}</td>
              <td>{formatTime(t.updatedAt)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && items.length === 0 && <p class="muted">No task matches.</p>}
      <nav class="pager" aria-label="Pages of tasks">
        <button type="button" disabled={cursors.length === 1} onClick={() => setCursors(cursors.slice(0, -1))}>
          Previous page
        </button>
        <span>Page {cursors.length}</span>
        <button type="button" disabled={!page?.nextCursor} onClick={() => page?.nextCursor && setCursors([...cursors, page.nextCursor])}>
          Next page
        </button>
      </nav>
      <Confirm
        open={bulk !== null}
        title={bulk === 'cancel' ? `Cancel ${plural(targets.length, 'task')}?` : `Requeue ${plural(targets.length, 'task')}?`}
        confirmLabel={bulk === 'cancel' ? `Cancel ${plural(targets.length, 'task')}` : `Requeue ${plural(targets.length, 'task')}`}
        onConfirm={() => void runBulk()}
        onCancel={() => setBulk(null)}
      >
        <p>
          {bulk === 'cancel'
            ? `${targets.length} of the ${selected.size} selected tasks have not finished and will be cancelled.`
            : `${targets.length} of the ${selected.size} selected tasks failed and will be queued again with fresh attempts.`}
        </p>
      </Confirm>
    </>
  );
}

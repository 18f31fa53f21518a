import { useState } from 'preact/hooks';
import { api, query, type AuditQuery, type AuditResult } from '../api';
import { ErrorNote, usePoll } from '../util';

/** A result cell as text: objects (jsonb columns) as JSON. */
function cellText(cell: unknown): string {
  if (cell === null || cell === undefined) return '';
  if (typeof cell === 'string') return cell;
  return JSON.stringify(cell);
}

/** The documented audit questions (docs/audit.md), run read-only by the server with the parameters given. */
export function Audit() {
  const queries = usePoll(() => api<{ items: AuditQuery[] }>('/v1/audit/queries'), 600_000);
  const [name, setName] = useState('');
  const [params, setParams] = useState<Record<string, string>>({});
  const [result, setResult] = useState<AuditResult | null>(null);
  const [error, setError] = useState<Error>();
  const [busy, setBusy] = useState(false);
  const selected = queries.data?.items.find((q) => q.name === name) ?? queries.data?.items[0];

  const run = async (e: Event) => {
    e.preventDefault();
    if (!selected) return;
    setBusy(true);
    const values: Record<string, string> = {};
    for (const p of selected.params) {
      const v = params[`${selected.name}.${p.name}`];
      if (v) values[p.name] = p.type === 'timestamp' ? new Date(v).toISOString() : v;
    }
    try {
      setResult(await api<AuditResult>(`/v1/audit/queries/${encodeURIComponent(selected.name)}${query(values)}`));
      setError(undefined);
    } catch (err) {
      setResult(null);
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <h1 tabIndex={-1}>Audit</h1>
      <p class="muted">The questions of the audit guide, answered from the event log, read-only and for this tenant only.</p>
      <ErrorNote error={queries.error} />
      {selected && (
        <form class="filters" onSubmit={(e) => void run(e)} aria-label="Audit question">
          <div class="field">
            <label for="audit-question">Question</label>
            <select
              id="audit-question"
              value={selected.name}
              onChange={(e) => {
                setName(e.currentTarget.value);
                setResult(null);
              }}
            >
              {queries.data?.items.map((q) => (
                <option key={q.name} value={q.name}>
                  {q.title}
                </option>
              ))}
            </select>
          </div>
          {selected.params.map((p) => (
            <label key={`${selected.name}.${p.name}`}>
              {p.name}
              {p.required ? ' (required)' : ''}
              <input
                // One input element whose kind follows the parameter's type (the typings want one literal).
                type={(p.type === 'timestamp' ? 'datetime-local' : p.type === 'integer' ? 'number' : 'text') as 'text'}
                step={p.type === 'timestamp' ? 1 : undefined}
                required={p.required}
                value={params[`${selected.name}.${p.name}`] ?? ''}
                onInput={(e) => setParams({ ...params, [`${selected.name}.${p.name}`]: e.currentTarget.value })}
              />
            </label>
          ))}
          <button type="submit" disabled={busy}>
            Run
          </button>
        </form>
      )}
      {selected && <p>{selected.description}</p>}
      <ErrorNote error={error} />
      {result && (
        <section aria-labelledby="result-h">
          <h2 id="result-h">
            {result.rows.length} rows{result.truncated ? ' (truncated at the row cap)' : ''}
          </h2>
          <div class="scroll" tabIndex={0} role="region" aria-label="Query result">
            <table>
              <thead>
                <tr>
                  {result.columns.map((c) => (
                    <th scope="col" key={c}>
                      {c}
                    </th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {result.rows.map((row, i) => (
                  <tr key={i}>
                    {row.map((cell, j) => (
                      <td key={j}>{cellText(cell)}</td>
                    ))}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </section>
      )}
    </>
  );
}

import { useState } from 'preact/hooks';
import { api, query, type Cluster, type Role, type Stats } from '../api';
import { Bar, LineChart } from '../charts';
import type { LiveEvent } from '../sse';
import { ErrorNote, age, formatMs, formatTime, shortId, useDebounced, useLive, usePoll } from '../util';

const WINDOWS = [
  { seconds: 900, label: 'last 15 minutes' },
  { seconds: 3600, label: 'last hour' },
  { seconds: 6 * 3600, label: 'last 6 hours' },
  { seconds: 24 * 3600, label: 'last 24 hours' },
];

export function Overview({ role }: { role: Role }) {
  const [windowSeconds, setWindowSeconds] = useState(900);
  const bucketSeconds = Math.max(10, windowSeconds / 60);
  const stats = usePoll(() => api<Stats>(`/v1/stats${query({ windowSeconds, bucketSeconds })}`), 10_000, [windowSeconds]);
  const cluster = usePoll(() => (role === 'operator' ? api<Cluster>('/v1/cluster') : Promise.resolve(null)), 5000);
  const ready = usePoll(() => fetch('/readyz').then((r) => r.json() as Promise<{ status: string }>), 5000);
  const [recent, setRecent] = useState<LiveEvent[]>([]);
  const refresh = useDebounced(stats.reload, 1000);
  useLive('/v1/events', (e) => {
    if (e.streamType === undefined || e.streamType === 'task') setRecent((r) => [e, ...r].slice(0, 12));
    refresh();
  });

  const s = stats.data;
  const times = s?.buckets.map((b) => b.at) ?? [];
  const col = (k: keyof Stats['buckets'][number]) => s?.buckets.map((b) => Number(b[k])) ?? [];
  const maxDepth = Math.max(1, ...(s?.depth.map((d) => d.queued) ?? []));
  const c = cluster.data;

  return (
    <>
      <h1 tabIndex={-1}>Overview</h1>
      <section aria-labelledby="health-h" class="cards">
        <h2 id="health-h" class="visually-hidden">
          Health at a glance
        </h2>
        <div class="card">
          <span class="card-label">API</span>
          <span class={`card-value status-${ready.data?.status ?? 'unknown'}`}>{ready.data?.status ?? '…'}</span>
        </div>
        {c && (
          <>
            <div class="card">
              <span class="card-label">Brokers healthy</span>
              <span class="card-value">
                {c.brokers.filter((b) => b.healthy).length} / {c.brokers.length}
              </span>
            </div>
            <div class="card">
              <span class="card-label">Fog nodes up</span>
              <span class="card-value">{c.fogNodes.filter((n) => n.state === 'up').length}</span>
            </div>
            <div class="card">
              <span class="card-label">Redis</span>
              <span class={`card-value status-${c.redis}`}>{c.redis}</span>
            </div>
          </>
        )}
        {s && (
          <>
            <div class="card">
              <span class="card-label">Outbox pending</span>
              <span class="card-value">{s.outbox.pending}</span>
            </div>
            <div class="card">
              <span class="card-label">Outbox lag</span>
              <span class="card-value">{s.outbox.lagSeconds === null ? '—' : formatMs(s.outbox.lagSeconds * 1000)}</span>
            </div>
          </>
        )}
      </section>

      <section aria-labelledby="throughput-h">
        <div class="section-head">
          <h2 id="throughput-h">Throughput and outcomes</h2>
          <div class="field">
            <label for="overview-window">Window</label>
            <select id="overview-window" value={windowSeconds} onChange={(e) => setWindowSeconds(Number(e.currentTarget.value))}>
              {WINDOWS.map((w) => (
                <option key={w.seconds} value={w.seconds}>
                  {w.label}
                </option>
              ))}
            </select>
          </div>
        </div>
        <ErrorNote error={stats.error} />
        {s && (
          <LineChart
            title={`Tasks per ${bucketSeconds} s`}
            times={times}
            series={[
              { name: 'submitted', className: 's-submitted', values: col('submitted') },
              { name: 'succeeded', className: 's-succeeded', values: col('succeeded') },
              { name: 'failed', className: 's-failed', values: col('failed') },
              { name: 'cancelled', className: 's-cancelled', values: col('cancelled') },
              { name: 'dead-lettered', className: 's-dead', values: col('deadLettered') },
            ]}
          />
        )}
      </section>

      <div class="two">
        <section aria-labelledby="latency-h">
          <h2 id="latency-h">Queue wait and run time per tier</h2>
          <table>
            <thead>
              <tr>
                <th scope="col">tier</th>
                <th scope="col">wait p50</th>
                <th scope="col">wait p95</th>
                <th scope="col">run p50</th>
                <th scope="col">run p95</th>
              </tr>
            </thead>
            <tbody>
              {s?.tiers.map((t) => (
                <tr key={t.tier}>
                  <th scope="row">{t.tier}</th>
                  <td>{formatMs(t.queueWaitP50Ms)}</td>
                  <td>{formatMs(t.queueWaitP95Ms)}</td>
                  <td>{formatMs(t.runP50Ms)}</td>
                  <td>{formatMs(t.runP95Ms)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
        <section aria-labelledby="depth-h">
          <h2 id="depth-h">Queue depth</h2>
          <table>
            <thead>
              <tr>
                <th scope="col">tier</th>
                <th scope="col">priority</th>
                <th scope="col">queued</th>
                <th scope="col">
                  <span class="visually-hidden">bar</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {s?.depth.map((d) => (
                <tr key={`${d.tier}.${d.priority}`}>
                  <th scope="row">{d.tier}</th>
                  <td>{d.priority}</td>
                  <td>{d.queued}</td>
                  <td>
                    <Bar value={d.queued} max={maxDepth} label={`${d.queued} queued`} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {s && s.depth.length === 0 && <p class="muted">No task waits in a queue.</p>}
        </section>
      </div>

      <section aria-labelledby="recent-h">
        <h2 id="recent-h">Latest events</h2>
        {recent.length === 0 ? (
          <p class="muted">Events appear here as they are written.</p>
        ) : (
          <ul class="events" aria-live="polite">
            {recent.map((e) => (
              <li key={e.position}>
                <time dateTime={e.at}>{formatTime(e.at)}</time> <a href={`#/tasks/${e.taskId}`}>{shortId(e.taskId)}</a> {e.type}
                {e.state ? ` → ${e.state}` : ''}
              </li>
            ))}
          </ul>
        )}
        {c && c.fogNodes.length > 0 && <p class="muted">Last fog-node heartbeat {age(c.fogNodes.map((n) => n.lastSeen ?? '').sort().at(-1))}.</p>}
      </section>
    </>
  );
}

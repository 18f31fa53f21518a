import { useRef, useState } from 'preact/hooks';
import { api, type Cluster, type Page, type Role, type Schedule } from '../api';
import { Sparkline } from '../charts';
import { ErrorNote, age, formatTime, usePoll } from '../util';

const SAMPLES = 30;

export function ClusterPage({ role }: { role: Role }) {
  // CPU and memory per fog node from successive polls; a node gone from the answer is forgotten.
  const samples = useRef(new Map<string, { cpu: number[]; mem: number[] }>());
  const cluster = usePoll(async () => {
    if (role !== 'operator') return null;
    const c = await api<Cluster>('/v1/cluster');
    const next = new Map<string, { cpu: number[]; mem: number[] }>();
    for (const n of c.fogNodes) {
      const s = samples.current.get(n.id) ?? { cpu: [], mem: [] };
      next.set(n.id, { cpu: [...s.cpu, n.cpu ?? 0].slice(-SAMPLES), mem: [...s.mem, n.memMb ?? 0].slice(-SAMPLES) });
    }
    samples.current = next;
    return c;
  }, 3000);
  const schedules = usePoll(() => api<Page<Schedule>>('/v1/schedules?limit=100'), 5000);
  const [outcome, setOutcome] = useState<string | null>(null);
  const now = Date.now();
  const c = cluster.data;

  const toggle = async (s: Schedule) => {
    const action = s.state === 'paused' ? 'resume' : 'pause';
    try {
      await api(`/v1/schedules/${s.id}/${action}`, { method: 'POST' });
      setOutcome(`${s.name} ${action === 'pause' ? 'paused' : 'resumed'}`);
    } catch (e) {
      setOutcome(`Refused: ${(e as Error).message}`);
    }
    schedules.reload();
  };

  return (
    <>
      <h1 tabIndex={-1}>Cluster</h1>
      {role !== 'operator' && <p class="muted">Brokers and fog nodes are the whole deployment's: operators only.</p>}
      <ErrorNote error={cluster.error} />
      {c && (
        <>
          <p>
            Redis <strong>{c.redis}</strong> · coordinator leader <strong>{c.leader ?? 'none'}</strong>
          </p>
          <section aria-labelledby="brokers-h">
            <h2 id="brokers-h">Brokers</h2>
            <table>
              <thead>
                <tr>
                  <th scope="col">node</th>
                  <th scope="col">member</th>
                  <th scope="col">leader</th>
                  <th scope="col">healthy</th>
                  <th scope="col">heartbeat age</th>
                </tr>
              </thead>
              <tbody>
                {c.brokers.map((b) => (
                  <tr key={b.name}>
                    <th scope="row">{b.name}</th>
                    <td>{b.member ? 'yes' : 'no'}</td>
                    <td>{b.master ? 'leader' : ''}</td>
                    <td>
                      <span class={`badge ${b.healthy ? 'state-succeeded' : 'state-failed'}`}>{b.healthy ? 'healthy' : 'unhealthy'}</span>
                    </td>
                    <td>{age(b.lastHeartbeat, now)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
          <section aria-labelledby="nodes-h">
            <h2 id="nodes-h">Fog nodes</h2>
            {c.fogNodes.length === 0 && <p class="muted">No fog node is registered.</p>}
            <table class="nodes">
              <thead>
                <tr>
                  <th scope="col">node</th>
                  <th scope="col">state</th>
                  <th scope="col">tier</th>
                  <th scope="col">slots</th>
                  <th scope="col">in flight</th>
                  <th scope="col">CPU</th>
                  <th scope="col">memory</th>
                  <th scope="col">version</th>
                  <th scope="col">last seen</th>
                </tr>
              </thead>
              <tbody>
                {c.fogNodes.map((n) => {
                  const s = samples.current.get(n.id) ?? { cpu: [], mem: [] };
                  return (
                    <tr key={n.id} data-node-id={n.id}>
                      <th scope="row">{n.id}</th>
                      <td>
                        <span class={`badge ${n.state === 'up' ? 'state-succeeded' : 'state-cancelled'}`}>{n.state}</span>
                      </td>
                      <td>{n.tier ?? '—'}</td>
                      <td>{n.slots ?? '—'}</td>
                      <td>{n.inFlight ?? '—'}</td>
                      <td>
                        <Sparkline values={s.cpu} max={Math.max(1, ...s.cpu)} label={`CPU of ${n.id}: ${n.cpu === null ? 'unknown' : `${n.cpu.toFixed(2)} cores`}`} />{' '}
                        {n.cpu === null ? '—' : `${n.cpu.toFixed(2)} cores`}
                      </td>
                      <td>
                        <Sparkline values={s.mem} label={`memory of ${n.id}: ${n.memMb ?? 'unknown'} MB`} /> {n.memMb === null ? '—' : `${Math.round(n.memMb)} MB`}
                      </td>
                      <td>{n.version ?? '—'}</td>
                      <td>{age(n.lastSeen, now)}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </section>
        </>
      )}
      <section aria-labelledby="schedules-h">
        <h2 id="schedules-h">Schedules</h2>
        <ErrorNote error={schedules.error} />
        {outcome && <p role="status">{outcome}</p>}
        <table>
          <thead>
            <tr>
              <th scope="col">name</th>
              <th scope="col">cron</th>
              <th scope="col">task type</th>
              <th scope="col">state</th>
              <th scope="col">next run</th>
              <th scope="col">last run</th>
              <th scope="col">runs</th>
              {role === 'operator' && <th scope="col">action</th>}
            </tr>
          </thead>
          <tbody>
            {schedules.data?.items.map((s) => (
              <tr key={s.id}>
                <th scope="row">{s.name}</th>
                <td class="mono">
                  {s.cron} ({s.timezone})
                </td>
                <td>{s.template.type}</td>
                <td>{s.state}</td>
                <td>{formatTime(s.nextFireAt)}</td>
                <td>{formatTime(s.lastFiredAt)}</td>
                <td>{s.firedCount}</td>
                {role === 'operator' && (
                  <td>
                    <button type="button" onClick={() => void toggle(s)} aria-label={`${s.state === 'paused' ? 'Resume' : 'Pause'} schedule ${s.name}`}>
                      {s.state === 'paused' ? 'Resume' : 'Pause'}
                    </button>
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
        {schedules.data && schedules.data.items.length === 0 && <p class="muted">No schedule.</p>}
      </section>
    </>
  );
}

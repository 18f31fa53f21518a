import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, credential, onUnauthorized, probeRole, setCredential, type Role } from './api';
import { useFeedStatus } from './util';
import { Overview } from './pages/overview';
import { Tasks } from './pages/tasks';
import { TaskDetail } from './pages/task-detail';
import { Dlq } from './pages/dlq';
import { ClusterPage } from './pages/cluster';
import { Audit } from './pages/audit';
import './style.css';

/** Hash routes: #/ (overview), #/tasks, #/tasks/<id>, #/dlq, #/cluster, #/audit. */
function useRoute(): string[] {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const update = () => setHash(location.hash);
    addEventListener('hashchange', update);
    return () => removeEventListener('hashchange', update);
  }, []);
  return hash.replace(/^#\/?/, '').split('/').filter(Boolean);
}

const PAGES: { path: string; title: string; roles: Role[] }[] = [
  { path: '', title: 'Overview', roles: ['operator', 'auditor', 'submitter'] },
  { path: 'tasks', title: 'Tasks', roles: ['operator', 'auditor', 'submitter'] },
  { path: 'dlq', title: 'DLQ', roles: ['operator', 'auditor'] },
  { path: 'cluster', title: 'Cluster', roles: ['operator', 'auditor'] },
  { path: 'audit', title: 'Audit', roles: ['operator', 'auditor'] },
];

function SignIn({ onSignedIn, note }: { onSignedIn: (role: Role) => void; note: string | null }) {
  const [value, setValue] = useState('');
  const [error, setError] = useState<string | null>(note);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setCredential(value.trim());
    try {
      onSignedIn(await probeRole());
    } catch (err) {
      setCredential(null);
      setError(err instanceof ApiError && err.status === 401 ? 'This API key or token is not valid.' : (err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main id="main" class="signin">
      <h1>fogsched</h1>
      <form onSubmit={(e) => void submit(e)}>
        <label for="credential">API key or token</label>
        <input id="credential" type="password" autoComplete="off" value={value} onInput={(e) => setValue(e.currentTarget.value)} required />
        <p class="hint">Kept in this tab's session storage only; sent as a Bearer header.</p>
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
      </form>
    </main>
  );
}

function App() {
  const [role, setRole] = useState<Role | null>(null);
  const [checking, setChecking] = useState(true);
  const [note, setNote] = useState<string | null>(null);
  const route = useRoute();
  const feed = useFeedStatus();
  const heading = useRef<HTMLDivElement>(null);

  // An open API (or a credential kept from earlier in this tab) needs no sign-in.
  useEffect(() => {
    probeRole()
      .then(setRole, () => setRole(null))
      .finally(() => setChecking(false));
    return onUnauthorized(() => {
      setCredential(null);
      setNote('The server no longer accepts the credential; sign in again.');
      setRole(null);
    });
  }, []);
  useEffect(() => {
    heading.current?.querySelector<HTMLElement>('h1')?.focus();
  }, [route.join('/')]);

  if (checking) return <main id="main" aria-busy="true" />;
  if (role === null) return <SignIn note={note} onSignedIn={(r) => (setNote(null), setRole(r))} />;

  const [first = '', second] = route;
  const current = PAGES.find((p) => p.path === first) ?? PAGES[0]!;
  let page;
  if (!current.roles.includes(role)) page = <p>This page needs an operator or auditor credential.</p>;
  else if (first === 'tasks' && second) page = <TaskDetail id={second} role={role} />;
  else if (first === 'tasks') page = <Tasks role={role} />;
  else if (first === 'dlq') page = <Dlq role={role} />;
  else if (first === 'cluster') page = <ClusterPage role={role} />;
  else if (first === 'audit') page = <Audit />;
  else page = <Overview role={role} />;

  return (
    <>
      <a class="skip" href="#main" onClick={(e) => (e.preventDefault(), document.getElementById('main')?.focus())}>
        Skip to content
      </a>
      <header>
        <span class="brand">fogsched</span>
        <nav aria-label="Pages">
          <ul>
            {PAGES.filter((p) => p.roles.includes(role)).map((p) => (
              <li key={p.path}>
                <a href={`#/${p.path}`} aria-current={p.path === first ? 'page' : undefined}>
                  {p.title}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <span class={`feed feed-${feed}`} role="status" aria-label={feed === 'idle' ? 'no live feed on this page' : `live feed: ${feed}`}>
          {feed === 'idle' ? '' : feed === 'live' ? '● live' : feed === 'unavailable' ? '○ polling' : feed === 'ended' ? '○ task finished' : `○ ${feed}`}
        </span>
        <span class="role">{role}</span>
        {credential() && (
          <button
            type="button"
            onClick={() => {
              setCredential(null);
              setRole(null);
            }}
          >
            Sign out
          </button>
        )}
      </header>
      <main id="main" tabIndex={-1} ref={heading}>
        {page}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);

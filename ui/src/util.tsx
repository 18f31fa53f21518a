import { useEffect, useRef, useState } from 'preact/hooks';
import type { ComponentChildren } from 'preact';
import { subscribe, type FeedStatus, type LiveEvent } from './sse';

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** Local date and time, to the second. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A duration for people: 850 ms, 12.3 s, 4 min 05 s, 2 h 10 min. */
export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${pad(Math.floor((ms % 60_000) / 1000))} s`;
  return `${Math.floor(ms / 3_600_000)} h ${pad(Math.floor((ms % 3_600_000) / 60_000))} min`;
}

export function age(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '—';
  return `${formatMs(Math.max(0, now - new Date(iso).getTime()))} ago`;
}

/** The first 8 characters and the last 4: ids are UUIDv7, whose first 8 are the time (tasks of one minute share them). */
export const shortId = (id: string) => `${id.slice(0, 8)}…${id.slice(-4)}`;

/** Calls `load` now, every `intervalMs`, and whenever `deps` change; returns its last result or error. */
export function usePoll<T>(load: () => Promise<T>, intervalMs: number, deps: unknown[] = []): { data: T | undefined; error: Error | undefined; reload: () => void } {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<Error>();
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    let alive = true;
    const once = () =>
      loadRef.current().then(
        (value) => {
          if (!alive) return;
          setData(value);
          setError(undefined);
        },
        (e: unknown) => alive && setError(e instanceof Error ? e : new Error(String(e))),
      );
    void once();
    const timer = setInterval(() => void once(), intervalMs);
    return () => {
      alive = false;
      clearInterval(timer);
    };
  }, [intervalMs, tick, ...deps]);
  return { data, error, reload: () => setTick((t) => t + 1) };
}

const feedListeners = new Set<(status: FeedStatus) => void>();
let lastFeedStatus: FeedStatus = 'idle';
function broadcast(status: FeedStatus): void {
  lastFeedStatus = status;
  for (const l of feedListeners) l(status);
}
/** The live indicator in the header shows the status of the page's feed. */
export function useFeedStatus(): FeedStatus {
  const [status, setStatus] = useState(lastFeedStatus);
  useEffect(() => {
    feedListeners.add(setStatus);
    return () => void feedListeners.delete(setStatus);
  }, []);
  return status;
}

/** Subscribes to an SSE path while the component lives; `onEvent` is read fresh on every event. */
export function useLive(path: string | null, onEvent: (event: LiveEvent) => void): FeedStatus {
  const [status, setStatus] = useState<FeedStatus>('connecting');
  const handler = useRef(onEvent);
  handler.current = onEvent;
  useEffect(() => {
    if (path === null) return undefined;
    const close = subscribe(
      path,
      (e) => handler.current(e),
      (s) => {
        setStatus(s);
        broadcast(s);
      },
    );
    return () => {
      close();
      broadcast('idle');
    };
  }, [path]);
  return status;
}

/** Runs `fn` at most once per `ms`, trailing. */
export function useDebounced(fn: () => void, ms: number): () => void {
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => () => clearTimeout(timer.current), []);
  return () => {
    if (timer.current !== undefined) return;
    timer.current = setTimeout(() => {
      timer.current = undefined;
      ref.current();
    }, ms);
  };
}

export function ErrorNote({ error }: { error: Error | undefined | null }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {error.message}
    </p>
  );
}

export function StateBadge({ state }: { state: string }) {
  return <span class={`badge state-${state}`}>{state}</span>;
}

/** A modal confirmation (the native dialog: focus stays inside, Escape cancels). */
export function Confirm(props: { open: boolean; title: string; children: ComponentChildren; confirmLabel: string; onConfirm: () => void; onCancel: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (props.open && !dialog.open) dialog.showModal();
    if (!props.open && dialog.open) dialog.close();
  }, [props.open]);
  return (
    <dialog ref={ref} aria-labelledby="confirm-title" onCancel={props.onCancel}>
      <h2 id="confirm-title">{props.title}</h2>
      <div>{props.children}</div>
      <div class="actions">
        <button type="button" onClick={props.onCancel}>
          Back
        </button>
        <button type="button" class="danger" onClick={props.onConfirm}>
          {props.confirmLabel}
        </button>
      </div>
    </dialog>
  );
}

export function Json({ value, label }: { value: unknown; label: string }) {
  return (
    <pre class="json" tabIndex={0} aria-label={label}>
      {value === undefined || value === null ? 'null' : JSON.stringify(value, null, 2)}
    </pre>
  );
}

/** "1 task", "3 tasks". */
export const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

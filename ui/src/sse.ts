import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { authHeaders } from './api';

/** One event of the log as the SSE feed sends it (`data:` of each message). */
export interface LiveEvent {
  /** The stream's id: a task id for task events. */
  taskId: string;
  /** `task` for a task's events (others, such as a fog node's, may come on the feed too). */
  streamType?: string;
  /** The task's state after this event. */
  state?: string;
  type: string;
  position: number;
  at: string;
  data: unknown;
}

/** `idle`: the page shown reads no feed. */
export type FeedStatus = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'unavailable' | 'ended';

/**
 * Reads a server-sent event stream with fetch (EventSource cannot send the credential header),
 * resuming after a drop with Last-Event-ID so no event is missed or repeated. A 404 (a server
 * without the feed) or 401/403 stops it with status `unavailable`; pages then fall back to polling.
 * Returns a function that closes the stream.
 */
export function subscribe(path: string, onEvent: (event: LiveEvent) => void, onStatus: (status: FeedStatus) => void): () => void {
  const abort = new AbortController();
  let lastId: string | null = null;
  let failures = 0;

  const run = async (): Promise<void> => {
    while (!abort.signal.aborted) {
      onStatus(failures === 0 ? 'connecting' : 'reconnecting');
      let ended = false;
      try {
        const res = await fetch(path, {
          headers: { accept: 'text/event-stream', ...authHeaders(), ...(lastId !== null ? { 'last-event-id': lastId } : {}) },
          signal: abort.signal,
          cache: 'no-store',
        });
        if (res.status === 404 || res.status === 401 || res.status === 403) {
          onStatus('unavailable');
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        onStatus('live');
        failures = 0;
        const parser = createParser({
          onEvent(message: EventSourceMessage) {
            if (message.id) lastId = message.id;
            if (message.event === 'dropped') return; // the server let go of us: reconnect and resume
            try {
              onEvent(JSON.parse(message.data) as LiveEvent);
            } catch {
              // not an event of the log
            }
          },
        });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          parser.feed(value);
        }
        ended = true;
      } catch {
        if (abort.signal.aborted) return;
      }
      // A per-task stream ends after the task's terminal event: nothing more will come.
      if (ended && path.includes('/v1/tasks/')) {
        onStatus('ended');
        return;
      }
      failures++;
      onStatus('reconnecting');
      const delay = Math.min(15_000, 500 * 2 ** Math.min(failures, 5)) * (0.5 + Math.random() / 2);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  };
  void run();
  return () => abort.abort();
}

/** One server-sent event (https://html.spec.whatwg.org/multipage/server-sent-events.html). */
export interface ServerSentEvent {
  /** `event:` field; `message` when the server sent none. */
  readonly event: string;
  readonly data: string;
  /** `id:` field, or the last one seen on the stream (the spec's "last event ID"). */
  readonly id: string | undefined;
}

/**
 * Reads a `text/event-stream` body event by event, per the spec's parsing rules: lines end in
 * CRLF, LF or CR; `:` starts a comment (heartbeats: `: hb`); `data:` lines join with LF; an event
 * is dispatched at a blank line. Comments and field-less blocks yield nothing, but
 * `onActivity` hears every chunk so a caller can tell a live stream from a stalled one.
 */
export async function* readServerSentEvents(body: ReadableStream<Uint8Array>, onActivity?: () => void): AsyncGenerator<ServerSentEvent> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let lastId: string | undefined;
  let event = '';
  let data: string[] = [];
  let hasData = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onActivity?.();
      buffer += value;
      for (;;) {
        const end = /\r\n|\r|\n/.exec(buffer);
        // A lone CR at the end of a chunk may be the first half of CRLF: wait for the next chunk.
        if (!end || (end[0] === '\r' && end.index === buffer.length - 1)) break;
        const line = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        if (line === '') {
          if (hasData) yield { event: event || 'message', data: data.join('\n'), id: lastId };
          event = '';
          data = [];
          hasData = false;
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        let text = colon === -1 ? '' : line.slice(colon + 1);
        if (text.startsWith(' ')) text = text.slice(1);
        if (field === 'event') event = text;
        else if (field === 'data') {
          data.push(text);
          hasData = true;
        } else if (field === 'id' && !text.includes('\0')) lastId = text;
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

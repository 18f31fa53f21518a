import http from 'node:http';

/** One parsed server-sent event. */
export interface SseEvent {
  readonly id: string | undefined;
  readonly event: string;
  readonly data: string;
}

export interface SseConnection {
  readonly status: number;
  readonly contentType: string;
  /** The body when the answer is not a stream (a problem). */
  readonly body: string;
  readonly events: SseEvent[];
  /** Comment lines received (`: hb` heartbeats). */
  readonly comments: string[];
  /** Resolves when the server ends the stream (or the connection breaks). */
  readonly ended: Promise<void>;
  readonly isEnded: () => boolean;
  /** The events' data as JSON. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- test code reads arbitrary JSON
  json(): any[];
  close(): void;
}

/** Opens an event stream with node:http (a fetch-free client, as a dashboard or CLI would read it) and parses it as it arrives. */
export function openSse(url: string, headers: Record<string, string> = {}): Promise<SseConnection> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: { accept: 'text/event-stream', ...headers } }, (res) => {
      const events: SseEvent[] = [];
      const comments: string[] = [];
      let buffer = '';
      let body = '';
      let ended = false;
      const stream = String(res.headers['content-type'] ?? '').startsWith('text/event-stream');
      res.setEncoding('utf8');
      const endedPromise = new Promise<void>((done) => {
        const finish = () => {
          ended = true;
          done();
        };
        res.on('end', finish);
        res.on('close', finish);
        res.on('error', finish);
      });
      res.on('data', (chunk: string) => {
        if (!stream) {
          body += chunk;
          return;
        }
        buffer += chunk;
        let cut: number;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let id: string | undefined;
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) comments.push(line.slice(1).trim());
            else if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length > 0) events.push({ id, event, data: data.join('\n') });
        }
      });
      const connection: SseConnection = {
        status: res.statusCode ?? 0,
        contentType: String(res.headers['content-type'] ?? ''),
        get body() {
          return body;
        },
        events,
        comments,
        ended: endedPromise,
        isEnded: () => ended,
        json: () => events.filter((e) => e.event !== 'dropped').map((e) => JSON.parse(e.data) as unknown),
        close: () => {
          req.destroy();
          res.destroy();
        },
      };
      if (stream) resolve(connection);
      else res.on('end', () => resolve(connection));
    });
    req.on('error', reject);
  });
}

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createClient, readServerSentEvents } from '../../src/client/index.js';

/**
 * waitFor over `GET /v1/tasks/{id}/events` as the session's contract describes it (the API route
 * is built elsewhere): a server that speaks that contract and nothing more. Events carry `id:`
 * (log position), `event:` (event type) and `data:` JSON; `: hb` heartbeats; `Last-Event-ID`
 * resumes; a dropped client gets `event: dropped`.
 */

const ID = '0193a5b2-7c4e-7d1a-9f3e-2b8c6d0e4f11';
const task = (state: string) => ({ id: ID, type: 'noop', state, output: state === 'succeeded' ? { ok: 1 } : null });

interface Fake {
  base: string;
  log: string[];
  lastEventIds: (string | undefined)[];
  state: string;
  /** Called for each GET /events: write to the stream, end it or leave it open. */
  stream: (res: ServerResponse, n: number) => void;
}

let server: Server | undefined;
afterEach(async () => {
  const s = server;
  server = undefined;
  if (!s) return;
  s.closeAllConnections();
  await new Promise((r) => s.close(r));
});

async function fake(stream: Fake['stream']): Promise<Fake> {
  const f: Fake = { base: '', log: [], lastEventIds: [], state: 'queued', stream };
  let streams = 0;
  server = createServer((req: IncomingMessage, res) => {
    f.log.push(`${req.method} ${req.url} ${String(req.headers['x-api-key'] ?? '')}`);
    if (req.url === `/v1/tasks/${ID}`) {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(task(f.state)));
    } else if (req.url === `/v1/tasks/${ID}/events` && req.headers.accept === 'text/event-stream') {
      f.lastEventIds.push(req.headers['last-event-id'] as string | undefined);
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.flushHeaders();
      f.stream(res, streams++);
    } else {
      res.writeHead(404, { 'content-type': 'application/problem+json' }).end(JSON.stringify({ type: 'x', title: 'Not Found', status: 404, detail: 'no route', code: 'ROUTE_NOT_FOUND' }));
    }
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  f.base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return f;
}

const event = (position: number, type: string, data: object = {}) =>
  `id: ${position}\nevent: ${type}\ndata: ${JSON.stringify({ taskId: ID, type, position, at: new Date().toISOString(), data })}\n\n`;

describe('waitFor over the task event stream', () => {
  it('follows the stream (heartbeats, events in pieces) and resolves at the terminal event without polling', async () => {
    const f = await fake((res) => {
      res.write(': hb\n\n');
      res.write(event(10, 'TaskStarted').slice(0, 7)); // a line split across chunks
      setTimeout(() => {
        res.write(event(10, 'TaskStarted').slice(7));
        f.state = 'succeeded';
        res.write(event(11, 'TaskSucceeded', { output: { ok: 1 } }));
        res.end();
      }, 50);
    });
    const done = await createClient({ baseUrl: f.base, apiKey: 'k' }).waitFor(ID, { timeoutMs: 10_000, pollIntervalMs: 5 });
    expect(done).toMatchObject({ id: ID, state: 'succeeded' });
    const gets = f.log.filter((l) => l.startsWith(`GET /v1/tasks/${ID} `));
    // Before the stream, once the stream is open, at the terminal event: no polling loop.
    expect(gets).toHaveLength(3);
    expect(f.log.every((l) => l.endsWith(' k'))).toBe(true);
  });

  it('reconnects with Last-Event-ID after `dropped` or an early end, and resolves when the task ends', async () => {
    const f = await fake((res, n) => {
      if (n === 0) {
        res.write(event(20, 'TaskStarted'));
        res.end('event: dropped\ndata: {"reason":"slow client"}\n\n');
      } else if (n === 1) {
        res.end(event(21, 'TaskAttemptFailed')); // ends without a terminal event: the client looks and reconnects
      } else {
        f.state = 'failed';
        res.end(event(23, 'TaskFailed'));
      }
    });
    const done = await createClient({ baseUrl: f.base }).waitFor(ID, { timeoutMs: 20_000 });
    expect(done.state).toBe('failed');
    expect(f.lastEventIds).toEqual([undefined, '20', '21']);
  });

  it('resolves at once when the task ended before the stream opened', async () => {
    const f = await fake((res) => {
      f.state = 'cancelled'; // the cancel lands between the first look and the stream
      res.write(': hb\n\n'); // and the stream says nothing more
    });
    expect((await createClient({ baseUrl: f.base }).waitFor(ID, { timeoutMs: 10_000 })).state).toBe('cancelled');
  });

  it('falls back to polling when the stream keeps ending with nothing in it', async () => {
    const f = await fake((res) => res.end());
    const waiting = createClient({ baseUrl: f.base }).waitFor(ID, { timeoutMs: 20_000, pollIntervalMs: 10, maxPollIntervalMs: 50 });
    await expect.poll(() => f.lastEventIds.length, { timeout: 10_000 }).toBe(3);
    f.state = 'succeeded';
    expect((await waiting).state).toBe('succeeded');
    expect(f.lastEventIds).toHaveLength(3);
  });

  it('gives up with WAIT_TIMEOUT on a stream that never ends the task', async () => {
    const f = await fake((res) => res.write(': hb\n\n'));
    await expect(createClient({ baseUrl: f.base }).waitFor(ID, { timeoutMs: 300 })).rejects.toMatchObject({ code: 'WAIT_TIMEOUT' });
  });
});

describe('readServerSentEvents', () => {
  it('parses per the spec: CRLF/CR/LF, multi-line data, comments, the last id carried over, no dispatch without data', async () => {
    const text = ': hb\r\nid: 1\r\nevent: A\r\ndata: one\r\ndata: two\r\n\r\nevent: B\rdata:x\r\rid: 2\n\nretry: 5\n\ndata: {"k":1}\n\n';
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        const bytes = new TextEncoder().encode(text);
        for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.slice(i, i + 3));
        c.close();
      },
    });
    const events = [];
    for await (const e of readServerSentEvents(body)) events.push(e);
    expect(events).toEqual([
      { event: 'A', data: 'one\ntwo', id: '1' },
      { event: 'B', data: 'x', id: '1' },
      { event: 'message', data: '{"k":1}', id: '2' },
    ]);
  });
});

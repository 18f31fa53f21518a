/**
 * The brokers of AMQP_URL: one URL, or a comma-separated list for a cluster. Empty entries
 * and spaces around the commas are ignored.
 */
export function brokerUrls(list: string | readonly string[]): string[] {
  const items = typeof list === 'string' ? list.split(',') : list;
  return items.map((u) => u.trim()).filter((u) => u.length > 0);
}

/**
 * The list in a random order (Fisher–Yates with `random` in [0, 1)), a new array. Each process
 * shuffles its own copy once, so the connections of many processes spread over the cluster's
 * nodes instead of all landing on the first one of the list.
 */
export function shuffled<T>(items: readonly T[], random: () => number = Math.random): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.min(i, Math.floor(random() * (i + 1)));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

/**
 * The URL with an AMQP heartbeat of `heartbeatS` seconds, unless the URL sets its own
 * `heartbeat` (an operator's `?heartbeat=30` wins; `?heartbeat=0` turns heartbeats off).
 * The connection then notices a dead peer (a node gone from the network, a frozen
 * process) within about two heartbeats instead of waiting for TCP.
 */
export function withHeartbeat(url: string, heartbeatS: number): string {
  const u = new URL(url);
  if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(heartbeatS));
  return u.toString();
}

import { parseBrokers, type Config } from '../infra/config.js';
import { readClusterView, type ClusterView } from '../infra/cluster-view.js';
import { createLogger } from '../infra/logger.js';
import { createRedis, redisKeys, whenReady } from '../infra/redis.js';

/** Reads the membership keys once; Redis down gives `redis: 'unavailable'` (never throws for that). */
export async function readCluster(config: Config): Promise<ClusterView> {
  const redis = createRedis(config.REDIS_URL, { logger: createLogger('silent'), name: 'fogsched-cli', lazyConnect: true });
  try {
    redis.connect().catch(() => {});
    await whenReady(redis, 3000);
    return await readClusterView(redis, redisKeys(config.REDIS_PREFIX), {
      brokers: parseBrokers(config.COORDINATOR_BROKERS, config.AMQP_URL),
      staleAfterMs: 2 * config.COORDINATOR_INTERVAL_MS,
    });
  } finally {
    redis.disconnect();
  }
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}

const ago = (iso: string | null, now: number) => (iso ? `${((now - Date.parse(iso)) / 1000).toFixed(1)}s ago` : '-');

/** `fogsched cluster status`: the same as GET /v1/cluster, as two tables (like the seed's `make health`). */
export function formatClusterStatus(view: ClusterView, now = Date.now()): string {
  const lines: string[] = [];
  lines.push(view.redis === 'ok' ? `redis: ok   coordinator leader: ${view.leader ?? '(none)'}` : `redis: unavailable (${view.error}); membership unknown`);
  lines.push('', 'brokers');
  lines.push(
    ...table(
      ['NODE', 'MEMBER', 'MASTER', 'HEALTHY', 'LAST HEARTBEAT'],
      view.brokers.map((b) => [b.name, b.member ? 'yes' : 'no', b.master ? '*' : '', b.healthy ? 'yes' : 'no', ago(b.lastHeartbeat, now)]),
    ),
  );
  lines.push('', 'fog nodes');
  if (view.fogNodes.length === 0) lines.push('(none)');
  else {
    lines.push(
      ...table(
        ['ID', 'TIER', 'ZONE', 'LABELS', 'SLOTS', 'IN FLIGHT', 'CPU', 'MEM MB', 'STATE', 'LAST SEEN'],
        view.fogNodes.map((n) => [n.id, n.tier ?? '-', n.zone ?? '-', Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(',') || '-', String(n.slots ?? '-'), String(n.inFlight ?? '-'), String(n.cpu ?? '-'), String(n.memMb ?? '-'), n.state, ago(n.lastSeen, now)]),
      ),
    );
  }
  return `${lines.join('\n')}\n`;
}

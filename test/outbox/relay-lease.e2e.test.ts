import amqp from 'amqplib';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, spawnFogsched, type Spawned } from '../helpers/processes.js';

// Two relay processes on one database. The leader is frozen with SIGSTOP (it keeps its
// connections: PostgreSQL and the broker see nothing wrong) and thawed later with SIGCONT.

afterEach(dropE2eEnvs);

const alive = (p: Spawned) => p.proc.exitCode === null && p.proc.signalCode === null;

describe('relay leadership under SIGSTOP', () => {
  it('the standby publishes rows written after the leader froze within 15 s; thawed, the old leader marks nothing more, does not crash, and stands by', async () => {
    const t = await e2eEnv('relaystop');
    // RELAY_BATCH_SIZE 50: the backlog below takes the leader a while, so it is frozen mid-pipeline.
    const env = { ...t.env, RELAY_LEASE_MS: '5000', RELAY_BATCH_SIZE: '50', TASK_QUEUE_MAX_LENGTH: '100000' };
    const exchange = `${t.prefix}tasks`;
    const insert = async (n: number, label: string) =>
      (
        await t.q<{ message_id: string }>(
          `INSERT INTO outbox (message_id, stream_id, exchange, routing_key, headers, body)
           SELECT gen_random_uuid(), $3 || '-' || g, $1, 'light.normal', '{}'::jsonb, jsonb_build_object('seq', g)
             FROM generate_series(1, $2::int) g RETURNING message_id`,
          [exchange, n, label],
        )
      ).map((r) => r.message_id);
    const published = (ids: string[]) => t.count(`SELECT count(*) AS n FROM outbox WHERE message_id = ANY($1::uuid[]) AND published_at IS NOT NULL`, [ids]);
    const relayConnections = () => t.count(`SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'fogsched-relay%'`, [t.db]);

    // The first relay runs alone until it has published: it leads.
    const first = spawnFogsched(['start', '--roles', 'relay'], env);
    const probe = await eventually(() => insert(3, 'probe'), { timeoutMs: 30_000, message: `the database was never migrated:\n${first.output()}` });
    await eventually(async () => (await published(probe)) === 3, { timeoutMs: 15_000 });
    const alone = await relayConnections();
    const second = spawnFogsched(['start', '--roles', 'relay'], env);
    await eventually(async () => (await relayConnections()) > alone, { timeoutMs: 30_000, message: `the second relay never connected:\n${second.output()}` });

    // The first relay declared the topology: consume everything from here on.
    const connection = await amqp.connect(inject('amqpUrl'));
    connection.on('error', () => {});
    const received = new Set<string>();
    try {
      const channel = await connection.createChannel();
      await channel.prefetch(1000);
      await channel.consume(`${t.prefix}tasks.light.normal`, (msg) => {
        if (!msg) return;
        received.add(String(msg.properties.messageId));
        channel.ack(msg);
      });

      const backlog = await insert(5000, 'backlog');
      await eventually(async () => (await published(backlog)) >= 500, { timeoutMs: 30_000, intervalMs: 5 });
      const [before] = await t.q<{ holder: string; epoch: number }>(`SELECT holder, epoch::int AS epoch FROM relay_lease`);
      first.proc.kill('SIGSTOP');
      const frozenAt = Date.now();
      const atFreeze = await published(backlog);
      expect(atFreeze).toBeLessThan(backlog.length);

      // Written after the freeze: dispatched through the standby within 15 s of it.
      const after = await insert(20, 'after');
      const within15s = () => 15_000 - (Date.now() - frozenAt);
      const lease = async () => (await t.q<{ holder: string; epoch: number }>(`SELECT holder, epoch::int AS epoch FROM relay_lease`))[0];
      const markedBy = (epoch: number) =>
        t.q<{ n: number; last: string | null }>(`SELECT count(*)::int AS n, max(published_at)::text AS last FROM outbox WHERE published_epoch = $1`, [epoch]);
      // Thawed as soon as the standby has taken over, while the new leader starts on the rows the
      // old one had in flight: its confirms arrive and its timers fire late.
      const thawed = (async () => {
        const taken = await eventually(async () => {
          const now = await lease();
          return now && now.epoch !== before?.epoch ? now : null;
        }, { timeoutMs: within15s(), message: `the standby never took over:\n${second.output()}` });
        // Read after the takeover committed: everything the frozen leader's epoch will ever have marked.
        const atTakeover = await markedBy(before?.epoch ?? 0);
        first.proc.kill('SIGCONT');
        return { taken, atTakeover };
      })();
      thawed.catch(() => {}); // awaited below, after the check that names the failure
      await eventually(async () => (await published(after)) === after.length && after.every((id) => received.has(id)), {
        timeoutMs: within15s(),
        message: `rows written after the leader froze were not dispatched within 15 s:\n${second.output()}`,
      });
      const { taken, atTakeover } = await thawed;
      expect(before?.holder).toMatch(new RegExp(`-${first.proc.pid}-[0-9a-f]{6}$`));
      expect(taken.holder).toMatch(new RegExp(`-${second.proc.pid}-[0-9a-f]{6}$`));
      expect(taken.epoch).toBeGreaterThan(before?.epoch ?? Infinity);
      // It marks nothing more, does not crash, and stands by.
      const afterEpochs = await t.q<{ epoch: number }>(`SELECT DISTINCT published_epoch::int AS epoch FROM outbox WHERE message_id = ANY($1::uuid[])`, [after]);
      expect(afterEpochs).toEqual([{ epoch: taken.epoch }]);
      await eventually(() => first.output().includes('relay lease lost; standing by'), { timeoutMs: 15_000, message: `the old leader never stood down:\n${first.output()}` });
      expect(alive(first)).toBe(true);
      await eventually(async () => (await published(backlog)) === backlog.length, { timeoutMs: 30_000 });
      expect(await markedBy(before?.epoch ?? 0)).toEqual(atTakeover);
      const rows = await t.q<{ message_id: string; published_epoch: number }>(`SELECT message_id, published_epoch::int AS published_epoch FROM outbox`);
      expect(rows.every((r) => r.published_epoch !== null)).toBe(true);
      await eventually(() => rows.every((r) => received.has(r.message_id)), { timeoutMs: 15_000, message: 'a row marked published never reached the queue' });
      expect(await lease()).toEqual(taken);
      expect(first.output()).not.toMatch(/relay loop crashed|unhandled|"level":(50|60)/i);

      // A standby indeed: once the other relay is gone, it leads again and dispatches.
      await second.kill('SIGKILL');
      const later = await insert(5, 'later');
      await eventually(async () => (await published(later)) === later.length && later.every((id) => received.has(id)), { timeoutMs: 20_000 });
      const back = await lease();
      expect(back?.holder).toBe(before?.holder);
      expect(back?.epoch).toBeGreaterThan(taken.epoch);
      expect(await first.kill('SIGTERM')).toBe(0);
    } finally {
      await connection.close().catch(() => {});
    }
  });
});

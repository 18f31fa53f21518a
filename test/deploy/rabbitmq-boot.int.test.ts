import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/infra/config.js';
import { declareTopology } from '../../src/outbox/index.js';
import { topologyOf } from '../../src/cli/start.js';
import { KEYS_NEWER_THAN_3_13, localRabbitVersion, prepareLocalCluster, versionAtLeast, type LocalCluster } from './local-rabbit-cluster.js';

/**
 * Boots the deployment's broker configuration for real: three local RabbitMQ nodes with
 * deploy/swarm/rabbitmq.conf (node names, ports and paths remapped), finding each other
 * through its classic-config peer discovery, and importing at boot the definitions folder
 * the stack mounts: definitions.json (the topology) and the users file that
 * create-secrets.sh writes (the secret). Then the task queues must be quorum queues with
 * a replica on each of the three nodes, and the fogsched user must get in with its password.
 */
const SWARM = new URL('../../deploy/swarm/', import.meta.url);
const version = localRabbitVersion();
const isRoot = process.getuid?.() === 0;
const skipReason = !version ? 'no local RabbitMQ installation (/usr/lib/rabbitmq)' : !isRoot ? 'needs root to run nodes as user rabbitmq' : undefined;
if (skipReason) process.stdout.write(`skipping the broker boot test: ${skipReason}\n`);

describe.skipIf(skipReason !== undefined)('deploy/swarm rabbitmq.conf + definitions boot a 3-node cluster', () => {
  let cluster: LocalCluster & { dropped: string[] };
  let secrets: string;
  const definitions = JSON.parse(readFileSync(new URL('definitions.json', SWARM), 'utf8')) as { queues: { name: string; arguments: Record<string, unknown> }[] };
  const taskQueues = definitions.queues.filter((q) => q.name.startsWith('tasks.')).map((q) => q.name);

  beforeAll(async () => {
    secrets = mkdtempSync(join(tmpdir(), 'fogsched-secrets-'));
    execFileSync('sh', [new URL('create-secrets.sh', SWARM).pathname, '--out', secrets], { env: { ...process.env, RABBITMQ_ADMIN_PASSWORD: 'unused-admin', FOGSCHED_API_KEYS: 'unused-key' } });
    cluster = await prepareLocalCluster({
      count: 3,
      conf: readFileSync(new URL('rabbitmq.conf', SWARM), 'utf8'),
      enabledPlugins: readFileSync(new URL('enabled_plugins', SWARM), 'utf8'),
      // The names the stack mounts them under (stack.yml): topology first, then users.
      definitions: { '10-topology.json': readFileSync(new URL('definitions.json', SWARM), 'utf8'), '20-users.json': readFileSync(join(secrets, 'rabbitmq_users'), 'utf8') },
      dropKeys: versionAtLeast(version as string, '3.13.0') ? [] : KEYS_NEWER_THAN_3_13,
    });
    if (cluster.dropped.length > 0) process.stdout.write(`RabbitMQ ${version} is older than the pinned image: dropped ${cluster.dropped.join(', ')} from the local copy of rabbitmq.conf\n`);
    // Node 1 first, then the other two join it through peer discovery (as Swarm would start them).
    await cluster.start(0);
    await Promise.all([cluster.start(1), cluster.start(2)]);
  }, 300_000);

  afterAll(async () => {
    await cluster?.stop();
    if (secrets) rmSync(secrets, { recursive: true, force: true });
    const stray = execFileSync('ps', ['-eo', 'args']).toString().split('\n').filter((l) => l.includes('beam') && l.includes('fogsched-deploy-'));
    expect(stray).toEqual([]);
  }, 120_000);

  it('the three nodes form one cluster from the peer discovery in rabbitmq.conf', async () => {
    const status = JSON.parse(await cluster.ctl('rabbitmqctl', ['-n', cluster.nodes[0]!.name, 'cluster_status', '--formatter', 'json'])) as { running_nodes: string[] };
    expect([...status.running_nodes].sort()).toEqual(cluster.nodes.map((n) => n.name).sort());
  });

  it('the definitions created vhost /fog and every queue as a quorum queue with its arguments', async () => {
    const queues = JSON.parse(await cluster.ctl('rabbitmqctl', ['-n', cluster.nodes[1]!.name, 'list_queues', '-p', '/fog', 'name', 'type', 'arguments', '--formatter', 'json'])) as { name: string; type: string; arguments: unknown }[];
    expect(queues.map((q) => q.name).sort()).toEqual(definitions.queues.map((q) => q.name).sort());
    for (const q of queues) expect(q.type, q.name).toBe('quorum');
    const light = queues.find((q) => q.name === 'tasks.light.normal');
    expect(JSON.stringify(light?.arguments)).toContain('at-least-once');
  });

  it('the task queues have a replica on each of the three nodes', async () => {
    const members = async () =>
      new Map(
        (JSON.parse(await cluster.ctl('rabbitmqctl', ['-n', cluster.nodes[0]!.name, 'list_queues', '-p', '/fog', 'name', 'members', '--formatter', 'json'])) as { name: string; members: string[] }[]).map((q) => [q.name, [...q.members].sort()]),
      );
    let current = await members();
    const short = taskQueues.filter((q) => (current.get(q)?.length ?? 0) < 3);
    if (short.length > 0 && cluster.dropped.includes('quorum_queue.continuous_membership_reconciliation.enabled')) {
      // Node 1 imported the definitions alone. RabbitMQ >= 3.13 (the pinned image) adds the joiners
      // to every quorum queue by itself (continuous membership reconciliation in rabbitmq.conf);
      // this older local RabbitMQ gets the same from the runbook's command.
      process.stdout.write(`RabbitMQ ${version}: ${short.length} queues had fewer than 3 members after boot; running rabbitmq-queues grow (what continuous_membership_reconciliation does on >= 3.13)\n`);
      for (const node of cluster.nodes.slice(1)) await cluster.ctl('rabbitmq-queues', ['-n', node.name, 'grow', node.name, 'all', '--vhost-pattern', '^/fog$', '--queue-pattern', '.*']);
      current = await members();
    }
    const expected = cluster.nodes.map((n) => n.name).sort();
    for (const q of taskQueues) expect(current.get(q), q).toEqual(expected);
  });

  it('the fogsched user logs in to /fog with the password from the secret; the code declares the same topology without conflict and routes a task', async () => {
    const node = cluster.nodes[2]!;
    const env = { AMQP_URL: `amqp://fogsched@127.0.0.1:${node.amqpPort}/%2Ffog`, AMQP_PASSWORD_FILE: join(secrets, 'rabbitmq_password') };
    const config = loadConfig(env);
    const connection = await amqp.connect(config.AMQP_URL);
    try {
      const channel = await connection.createConfirmChannel();
      // Redeclaring with the code's arguments fails with PRECONDITION_FAILED if definitions.json differs.
      await declareTopology(channel, topologyOf(config));
      channel.publish('tasks', 'light.high', Buffer.from('{}'), { persistent: true });
      await channel.waitForConfirms();
      const q = await channel.checkQueue('tasks.light.high');
      expect(q.messageCount).toBe(1);
      await channel.purgeQueue('tasks.light.high');
      await channel.close();
    } finally {
      await connection.close();
    }
  });
});

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ClusterView } from '../../infra/cluster-view.js';
import type { ApiDeps } from '../app.js';
import { nodePlacement } from '../placement-warning.js';
import { Cluster, json, problems, ref } from '../schemas.js';

/** Reads the live membership picture (the api role wires it to Redis). */
export interface ClusterReader {
  read(): Promise<ClusterView>;
}

export const clusterRoutes: FastifyPluginAsyncTypebox<ApiDeps> = async (app, deps) => {
  app.get(
    '/v1/cluster',
    {
      config: { access: 'operator' },
      schema: {
        operationId: 'getCluster',
        summary: 'Broker cluster and fog-node membership',
        description: 'What the coordinator keeps in Redis. When Redis is down the answer is still 200, with `redis: "unavailable"`: membership is not needed for task flow.',
        tags: ['cluster'],
        response: {
          200: json(ref(Cluster), 'the membership', {
            redis: 'ok',
            leader: 'coordinator-1',
            brokers: [{ name: 'rabbit@rabbit-1', member: true, master: true, lastHeartbeat: '2026-11-27T10:15:30.000Z', healthy: true }],
            fogNodes: [{ id: 'fog-light-1', tier: 'light', zone: 'site-a', labels: { camera: 'yes' }, slots: 32, inFlight: 3, cpu: 0.4, memMb: 180, version: '0.1.0', lastSeen: '2026-11-27T10:15:30.000Z', state: 'up' }],
          }),
          ...problems(400, 401, 403, 503),
        },
      },
    },
    async () => {
      const view: ClusterView = deps.cluster ? await deps.cluster.read() : { redis: 'unavailable', error: 'no Redis configured for this api', leader: null, brokers: [], fogNodes: [] };
      return { ...view, fogNodes: view.fogNodes.map((n) => ({ ...n, ...nodePlacement(n) })) };
    },
  );
};

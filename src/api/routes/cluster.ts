import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ClusterView } from '../../infra/cluster-view.js';
import type { ApiDeps } from '../app.js';

const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()]);
const NullableNumber = Type.Union([Type.Number(), Type.Null()]);

const BrokerViewT = Type.Object({
  name: Type.String({ description: 'Erlang node name' }),
  member: Type.Boolean({ description: 'in rabbitmq:cluster:members' }),
  master: Type.Boolean({ description: 'rabbitmq:cluster:master names it' }),
  lastHeartbeat: Nullable(Type.String({ format: 'date-time' })),
  healthy: Type.Boolean({ description: 'its last successful probe is at most two coordinator intervals old' }),
});

const FogNodeViewT = Type.Object({
  id: Type.String(),
  tier: Nullable(Type.String()),
  slots: NullableNumber,
  inFlight: NullableNumber,
  cpu: NullableNumber,
  memMb: NullableNumber,
  version: Nullable(Type.String()),
  lastSeen: Nullable(Type.String({ format: 'date-time' })),
  state: Type.Union([Type.Literal('up'), Type.Literal('stopped'), Type.Literal('expired')]),
});

const ClusterViewT = Type.Object({
  redis: Type.Union([Type.Literal('ok'), Type.Literal('unavailable')]),
  error: Type.Optional(Type.String()),
  leader: Nullable(Type.String({ description: 'coordinator replica holding the lease' })),
  brokers: Type.Array(BrokerViewT),
  fogNodes: Type.Array(FogNodeViewT),
});

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
        summary: 'Broker cluster and fog-node membership',
        description: 'What the coordinator keeps in Redis. When Redis is down the answer is still 200, with `redis: "unavailable"`: membership is not needed for task flow.',
        tags: ['cluster'],
        response: { 200: ClusterViewT },
      },
    },
    async (): Promise<ClusterView> =>
      deps.cluster ? deps.cluster.read() : { redis: 'unavailable', error: 'no Redis configured for this api', leader: null, brokers: [], fogNodes: [] },
  );
};

import type { FastifyInstance } from 'fastify';
import { metricsText, recordHttpRequest, registerApiMetrics } from '../infra/metrics.js';

/**
 * Prometheus on the api's own port: `GET /metrics` (the process's registry, the same as on the
 * ops port) and the request histogram. The route label is the pattern the router matched
 * (`/v1/tasks/:id`), never the URL, so task ids never become series; a path no route matches is
 * `unmatched`. `/metrics` is for operators here: this port faces clients, and the metrics name the
 * tenants of METRICS_TENANTS. Prometheus scrapes the ops port, which takes no credentials.
 */
export function registerMetrics(app: FastifyInstance): void {
  registerApiMetrics();
  app.addHook('onResponse', async (request, reply) => {
    recordHttpRequest(request.routeOptions.url ?? 'unmatched', request.method, reply.statusCode, reply.elapsedTime / 1000);
  });
  app.get(
    '/metrics',
    {
      config: { access: 'operator' },
      // Not an API operation: left out of the OpenAPI document (its clients have no use for it).
      schema: { hide: true },
    },
    async (_request, reply) => {
      const m = await metricsText();
      return reply.type(m.contentType).send(m.body);
    },
  );
}

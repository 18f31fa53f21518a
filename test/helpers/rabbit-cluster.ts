/**
 * The local RabbitMQ cluster harness lives in src/chaos (the chaos run uses it too, outside
 * vitest); the tests import it from here.
 */
export { networkNamespacesUnavailable, rabbitClusterUnavailable, startRabbitCluster, type RabbitCluster, type RabbitClusterOptions } from '../../src/chaos/rabbit-cluster.js';

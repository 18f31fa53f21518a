/**
 * Everything fogsched says to RabbitMQ goes through here: connecting over a cluster's URLs
 * (shuffled per process, with reconnect and jittered backoff), channels with a generation
 * (a delivery of a channel that is gone is never settled), publishing with confirms (one
 * callback per message, and a batch helper), the topology as data, and health probes.
 *
 * Why not amqp-connection-manager: it re-creates channels behind one wrapper and buffers
 * publishes while the broker is away. A fog node must drop the acks of deliveries whose
 * channel is gone (the broker already returned them) and must see a publish fail instead of
 * having it queued in memory where nobody sees it; so the roles keep their channels
 * themselves, on this module.
 */
export * from './channel.js';
export * from './connection.js';
export * from './generations.js';
export * from './topology.js';
export { brokerUrls, shuffled, withHeartbeat } from './urls.js';
export { backoffMs, createBackoff, type Backoff, type BackoffSettings } from '../infra/backoff.js';

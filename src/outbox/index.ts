export * from './topology.js';
export * from './outbox-writer.js';
export * from './relay.js';

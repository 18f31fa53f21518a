export * from './topology.js';
export * from './outbox-writer.js';

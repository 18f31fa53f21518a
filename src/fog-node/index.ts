export * from './fog-node.js';
export * from './handlers.js';

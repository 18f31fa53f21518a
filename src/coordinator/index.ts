export * from './coordinator.js';
export * from './node-events.js';

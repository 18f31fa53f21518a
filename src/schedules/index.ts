export * from './schedules.js';
export * from './lease.js';
export * from './retention.js';

export * from './schedules.js';
export * from './lease.js';

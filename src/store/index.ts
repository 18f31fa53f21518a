export * from './db.js';
export * from './event-store.js';

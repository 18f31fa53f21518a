export * from './db.js';
export * from './event-store.js';
export * from './json-rows.js';
export * from './log-feed.js';

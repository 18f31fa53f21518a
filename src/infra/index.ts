export * from './config.js';
export * from './logger.js';
export * from './postgres.js';
export * from './role.js';
export * from './backoff.js';
export * from './pg-listener.js';

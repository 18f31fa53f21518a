export * from './task-projections.js';
export * from './task-queries.js';
export * from './rebuild.js';
export * from './dashboard-stats.js';
export * from './task-graph.js';

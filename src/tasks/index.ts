export * from './execute-commands.js';
export * from './group-commit.js';
export * from './task-service.js';

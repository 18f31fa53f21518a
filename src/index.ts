/**
 * fogsched's package entry (`import ... from 'fogsched'`): the typed client, as
 * `fogsched/client` has it. The handler SDK is `fogsched/worker`; the scheduler itself runs
 * through the `fogsched` command (`fogsched start`), not as a library.
 */
export * from './client/index.js';

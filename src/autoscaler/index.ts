/**
 * The autoscaler role (issue 17.5): fog-node replicas per tier from queue depth and wait,
 * with cooldowns and hysteresis, each decision a `FogTierScaled` event in the log.
 */
export * from './autoscaler.js';
export * from './backend.js';
export * from './decide.js';
export * from './events.js';
export * from './local-backend.js';
export * from './swarm-backend.js';

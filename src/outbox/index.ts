export * from './outbox-writer.js';
export * from './relay.js';
// The topology lives with the broker code (the fog node declares it too, and must not reach
// into outbox/); re-exported here for the roles and tests that know it from the outbox.
export {
  declarePlacement,
  declareTopology,
  placementTopology,
  topology,
  topologyNames,
  type BindingSpec,
  type ExchangeSpec,
  type QueueSpec,
  type Topology,
  type TopologyNames,
  type TopologyOptions,
} from '../broker/index.js';

/** Where fog-node replicas live: the autoscaler reads and sets their count per tier through this. */
export interface ScaleBackend {
  /** `swarm` or `local`, recorded in each FogTierScaled. */
  readonly name: string;
  /** Replicas the tier has now (desired by the backend, not yet necessarily running). */
  replicas(tier: string): Promise<number>;
  /** Sets the tier's replicas. */
  scale(tier: string, to: number): Promise<void>;
  /** Releases what the backend holds (the local backend stops its fog nodes gracefully). */
  close(): Promise<void>;
}

import { randomUUID } from 'node:crypto';
import { ConcurrencyError } from '../domain/errors.js';
import { appendToStream, type Executor } from '../store/index.js';

/** Stream of one fog node's membership: `node:<id>`, stream type `node`. */
export const nodeStreamId = (nodeId: string) => `node:${nodeId}`;

export interface FogNodeJoined {
  readonly type: 'FogNodeJoined';
  /** `zone` and `labels` (FOG_NODE_ZONE, FOG_NODE_LABELS) are absent in events of older versions. */
  readonly data: { nodeId: string; tier: string; slots: number; version: string; zone?: string | null; labels?: Record<string, string>; at: string };
}

export interface FogNodeLost {
  readonly type: 'FogNodeLost';
  readonly data: {
    nodeId: string;
    tier: string | null;
    /** When its heartbeat was last seen (ISO), if the coordinator saw one. */
    lastSeen: string | null;
    /** `heartbeat-expired` (its hash timed out) or `stopped` (it said goodbye). */
    reason: 'heartbeat-expired' | 'stopped';
    /** Tasks it held at its last heartbeat: one not yet started returns to its queue (unacked); the scheduler gives up a running one (node-lost). */
    inFlightTaskIds: string[];
    at: string;
  };
}

export type NodeEvent = FogNodeJoined | FogNodeLost;

export interface NodeStreamState {
  readonly version: number;
  readonly lastType: NodeEvent['type'] | null;
}

/** The stream's length and last event type (version 0 and null for a new stream). */
export async function readNodeStreamState(db: Executor, nodeId: string): Promise<NodeStreamState> {
  const row = await db
    .selectFrom('events')
    .select(['stream_version', 'type'])
    .where('stream_id', '=', nodeStreamId(nodeId))
    .orderBy('stream_version', 'desc')
    .limit(1)
    .executeTakeFirst();
  return { version: row?.stream_version ?? 0, lastType: (row?.type as NodeEvent['type'] | undefined) ?? null };
}

/**
 * Appends one event at `expected.version`. Returns the new state, or null when
 * another writer got there first (a replaced leader waking up): the caller
 * re-reads and decides again, so an event is never recorded twice.
 */
export async function appendNodeEvent(db: Executor, expected: NodeStreamState, event: NodeEvent, actor: string): Promise<NodeStreamState | null> {
  try {
    await appendToStream(db, { id: nodeStreamId(event.data.nodeId), type: 'node', expectedVersion: expected.version }, [
      { eventId: randomUUID(), type: event.type, data: event.data, metadata: { tenant: 'system', actor } },
    ]);
    return { version: expected.version + 1, lastType: event.type };
  } catch (error) {
    if (error instanceof ConcurrencyError) return null;
    throw error;
  }
}

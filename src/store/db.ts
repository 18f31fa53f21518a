import type { ColumnType, Generated } from 'kysely';

/** Written by PostgreSQL on insert; read as the given type. */
type Defaulted<T> = ColumnType<T, T | undefined, never>;
type Json = unknown;

export interface EventsTable {
  position: Generated<number>;
  stream_id: string;
  stream_type: string;
  stream_version: number;
  event_id: string;
  type: string;
  schema_version: Defaulted<number>;
  data: Json;
  metadata: Json;
  recorded_at: Defaulted<Date>;
  transaction_id: Defaulted<string>;
}

export interface OutboxTable {
  id: Generated<number>;
  message_id: string;
  stream_id: string;
  exchange: string;
  routing_key: string;
  headers: Json;
  body: Json;
  created_at: Defaulted<Date>;
  available_at: ColumnType<Date, Date | string | undefined, Date | string>;
  published_at: ColumnType<Date | null, never, Date | string | null>;
  attempts: ColumnType<number, never, number>;
  last_error: ColumnType<string | null, never, string | null>;
}

export interface InboxTable {
  message_id: string;
  source: string;
  received_at: Defaulted<Date>;
}

export interface IdempotencyKeysTable {
  tenant: string;
  key: string;
  task_id: string;
  request_hash: string;
  created_at: Defaulted<Date>;
}

export interface TaskCurrentTable {
  task_id: string;
  seq: Generated<number>;
  tenant: string;
  type: string;
  state: string;
  tier: string;
  priority: string;
  attempt: number;
  first_attempt: number;
  max_attempts: number;
  version: number;
  spec: Json;
  node_id: string | null;
  output: Json;
  last_error: Json;
  failure_reason: string | null;
  available_at: Date | null;
  submitted_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  updated_at: Date;
  deadline: ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
  /** The current run's last progress report {fraction, message, at} (migration 10). */
  progress: Json;
  /** The node's last report on the running attempt (start or progress); the running lease runs from it. */
  reported_at: Date | null;
}

export interface TaskHistoryTable {
  position: number;
  task_id: string;
  version: number;
  type: string;
  state: string;
  attempt: number;
  node_id: string | null;
  actor: string | null;
  reason: string | null;
  error: Json;
  at: Date;
  data: Json;
}

export interface NodeMetricsTable {
  node_id: string;
  at: Date;
  tier: string;
  cpu: number;
  rss_mb: number;
  in_flight: number;
  completed: number;
  failed: number;
}

export interface SchedulesTable {
  schedule_id: string;
  /** Position of the task's TaskSubmitted event: the list order, the same in a rebuilt table. */
  seq: number;
  tenant: string;
  name: string;
  cron: string;
  timezone: string;
  catch_up: string;
  template: Json;
  state: string;
  next_fire_at: Date | null;
  last_fired_at: Date | null;
  last_task_id: string | null;
  fired_count: number;
  version: number;
  created_at: Date;
  updated_at: Date;
}

export interface ProjectionVersionsTable {
  projection: string;
  version: number;
  rebuilt_at: Date | null;
  rebuilt_events: number | null;
}

/** One dependency edge (migration 13): `task_id` waits for `depends_on`. */
export interface TaskDependenciesTable {
  task_id: string;
  depends_on: string;
  tenant: string;
  /** Null until the dependency ended: succeeded, failed or cancelled. */
  resolved_state: string | null;
}

/** The unresolved dependency count of a task submitted waiting. */
/** Placement classes in use (migration 14): capped by PLACEMENT_MAX_CLASSES. */
export interface PlacementClassesTable {
  class: string;
  placement: ColumnType<unknown, string, string>;
  fallback_after_ms: number | null;
  first_tenant: string;
  created_at: ColumnType<Date, string | undefined, never>;
}

export interface TaskWaitsTable {
  task_id: string;
  pending: number;
}

export interface Database {
  schedules: SchedulesTable;
  events: EventsTable;
  outbox: OutboxTable;
  inbox: InboxTable;
  idempotency_keys: IdempotencyKeysTable;
  task_current: TaskCurrentTable;
  task_history: TaskHistoryTable;
  node_metrics: NodeMetricsTable;
  projection_versions: ProjectionVersionsTable;
  task_dependencies: TaskDependenciesTable;
  task_waits: TaskWaitsTable;
  placement_classes: PlacementClassesTable;
}

import { readFileSync } from 'node:fs';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { LEGACY_SUBMITTED_AT, seedAuditHistory, TASK_IDS, type Seed } from './seed.js';

type Row = Record<string, unknown>;

const AUDITOR = 'fogsched_auditor';
const AUDIT_VIEWS = [
  'capacity_changes',
  'message_dead_letters',
  'node_activity',
  'node_membership',
  'open_tasks',
  'result_records_set_aside',
  'task_attempts',
  'task_cancellations',
  'task_durations',
  'task_failures',
  'task_timeline',
  'tasks',
];

const DOC = readFileSync(new URL('../../docs/audit.md', import.meta.url), 'utf8');

interface DocQuery {
  readonly heading: string;
  readonly sql: string;
}

/** Every ```sql block of the doc, in order, with the `### ` heading above it. */
function docQueries(doc: string): DocQuery[] {
  const queries: DocQuery[] = [];
  let heading = '';
  let block: string[] | null = null;
  for (const line of doc.split('\n')) {
    if (block) {
      if (line.trim() === '```') {
        queries.push({ heading, sql: block.join('\n') });
        block = null;
      } else {
        block.push(line);
      }
    } else if (line.startsWith('### ')) {
      heading = line.slice(4).trim();
    } else if (line.trim() === '```sql') {
      block = [];
    }
  }
  return queries;
}

/** Replaces the doc's psql variables (`:'name'`) with quoted literals, as psql does. */
function substitute(text: string, values: Readonly<Record<string, string>>): string {
  return text.replace(/(?<!:):'([a-z_]+)'/g, (_, name: string) => {
    const value = values[name];
    if (value === undefined) throw new Error(`docs/audit.md uses :'${name}', which the test does not set`);
    return `'${value.replace(/'/g, "''")}'`;
  });
}

/** An interval as seconds (node-postgres parses intervals into their parts). */
function secs(value: unknown): number | null {
  if (value === null || value === undefined) return null;
  const i = value as { days?: number; hours?: number; minutes?: number; seconds?: number; milliseconds?: number };
  return (i.days ?? 0) * 86_400 + (i.hours ?? 0) * 3600 + (i.minutes ?? 0) * 60 + (i.seconds ?? 0) + (i.milliseconds ?? 0) / 1000;
}

const iso = (value: unknown) => (value instanceof Date ? value.toISOString() : value);

let tdb: TestDatabase;
let seed: Seed;
let auditor: pg.Client;

/** The seed time `seconds` after t0, as an ISO string. */
const t = (seconds: number) => seed.at(seconds).toISOString();

beforeAll(async () => {
  tdb = await createTestDatabase('audit');
  seed = await seedAuditHistory(tdb.db);
  auditor = new pg.Client({ connectionString: tdb.url });
  await auditor.connect();
  await auditor.query(`SET ROLE ${AUDITOR}`);
  const who = await auditor.query<{ current_user: string }>('SELECT current_user');
  expect(who.rows[0]?.current_user).toBe(AUDITOR);
});
afterAll(async () => {
  await auditor?.end();
  await tdb?.drop();
});

async function asAuditor(text: string): Promise<Row[]> {
  return (await auditor.query<Row>(text)).rows;
}

async function expectRefused(text: string): Promise<void> {
  const error = (await auditor.query(text).then(
    () => null,
    (e: unknown) => e,
  )) as { code?: string; message?: string } | null;
  expect(error, `${text} should be refused`).not.toBeNull();
  expect({ statement: text, code: error?.code, message: error?.message }).toMatchObject({ code: '42501', message: expect.stringMatching(/permission denied/) });
}

describe('the fogsched_auditor role', () => {
  it('reads events and every view of the audit schema', async () => {
    const [events] = await asAuditor('SELECT count(*) AS n FROM events');
    expect(events?.n).toBeGreaterThan(50);
    for (const view of AUDIT_VIEWS) {
      const [row] = await asAuditor(`SELECT count(*) AS n FROM audit.${view}`);
      expect({ view, n: row?.n }).toMatchObject({ view, n: expect.any(Number) });
      expect(row?.n, `audit.${view} has rows on the seed`).toBeGreaterThan(0);
    }
  });

  it('is refused the outbox, the inbox, the read models and every other table (42501)', async () => {
    for (const table of ['outbox', 'inbox', 'task_current', 'task_history', 'idempotency_keys', 'schedules', 'node_metrics', 'pgmigrations']) {
      await expectRefused(`SELECT * FROM ${table} LIMIT 1`);
    }
  });

  it('is refused writes: to events, the outbox, the read models, through the audit views, and new objects', async () => {
    await expectRefused(`INSERT INTO events (stream_id, stream_type, stream_version, event_id, type, data) VALUES ('x', 'task', 1, gen_random_uuid(), 'TaskSubmitted', '{}')`);
    // "permission denied", not the append-only trigger: the role has no UPDATE or DELETE at all.
    await expectRefused(`UPDATE events SET type = 'X' WHERE false`);
    await expectRefused('DELETE FROM events WHERE false');
    await expectRefused('TRUNCATE events');
    await expectRefused(`INSERT INTO outbox (message_id, stream_id, exchange, routing_key, body) VALUES (gen_random_uuid(), 'x', 'tasks', 'light.normal', '{}')`);
    await expectRefused(`UPDATE outbox SET published_at = now() WHERE false`);
    await expectRefused(`UPDATE task_current SET state = 'succeeded' WHERE false`);
    await expectRefused(`INSERT INTO inbox (message_id, source) VALUES ('x', 'test')`);
    await expectRefused(`DELETE FROM task_history WHERE false`);
    await expectRefused('CREATE TABLE public.auditor_was_here (a int)');
    await expectRefused('CREATE VIEW audit.auditor_was_here AS SELECT 1 AS a');
    // The views are not updatable (window functions, aggregates): PostgreSQL refuses before any privilege check.
    const viaView = await auditor.query(`DELETE FROM audit.task_timeline WHERE false`).then(
      () => null,
      (e: { code?: string }) => e.code,
    );
    expect(['42501', '55000']).toContain(viaView);
  });

  it('holds SELECT on events and the audit views and no other privilege on any table or sequence', async () => {
    const { rows } = await sql<{ name: string; can_select: boolean; can_write: boolean }>`
      SELECT n.nspname || '.' || c.relname AS name,
             CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(${AUDITOR}, c.oid, 'SELECT, USAGE')
                  ELSE has_table_privilege(${AUDITOR}, c.oid, 'SELECT') END AS can_select,
             CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(${AUDITOR}, c.oid, 'UPDATE')
                  ELSE has_table_privilege(${AUDITOR}, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') END AS can_write
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'`.execute(tdb.db);
    expect(rows.length).toBeGreaterThan(AUDIT_VIEWS.length + 5);
    expect(rows.filter((r) => r.can_write)).toEqual([]);
    expect(rows.filter((r) => r.can_select).map((r) => r.name).sort()).toEqual(['public.events', ...AUDIT_VIEWS.map((v) => `audit.${v}`)].sort());
    const { rows: schemas } = await sql<{ create_audit: boolean; create_public: boolean; login: boolean }>`
      SELECT has_schema_privilege(${AUDITOR}, 'audit', 'CREATE') AS create_audit,
             has_schema_privilege(${AUDITOR}, 'public', 'CREATE') AS create_public,
             (SELECT rolcanlogin FROM pg_roles WHERE rolname = ${AUDITOR}) AS login`.execute(tdb.db);
    expect(schemas[0]).toEqual({ create_audit: false, create_public: false, login: false });
  });
});

describe('the audit views', () => {
  it('are the documented ones, each listed in docs/audit.md and commented', async () => {
    const { rows } = await sql<{ name: string; comment: string | null }>`
      SELECT c.relname AS name, obj_description(c.oid, 'pg_class') AS comment
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'audit' ORDER BY c.relname`.execute(tdb.db);
    expect(rows.map((r) => r.name)).toEqual(AUDIT_VIEWS);
    for (const r of rows) {
      expect(r.comment, `comment on audit.${r.name}`).toMatch(/\w+/);
      expect(DOC, `docs/audit.md lists audit.${r.name}`).toContain(`| \`audit.${r.name}\` |`);
    }
  });

  it('depend on events only, never on the read models a rebuild swaps', async () => {
    const { rows } = await sql<{ referenced: string }>`
      SELECT DISTINCT n.nspname || '.' || t.relname AS referenced
        FROM pg_depend d
        JOIN pg_rewrite r ON r.oid = d.objid
        JOIN pg_class v ON v.oid = r.ev_class
        JOIN pg_namespace vn ON vn.oid = v.relnamespace
        JOIN pg_class t ON t.oid = d.refobjid
        JOIN pg_namespace n ON n.oid = t.relnamespace
       WHERE vn.nspname = 'audit' AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND t.oid <> v.oid
       ORDER BY 1`.execute(tdb.db);
    expect(rows.map((r) => r.referenced).filter((name) => !name.startsWith('audit.'))).toEqual(['public.events']);
  });

  it('read schema v1 events like current ones: resources.memory as memory_mb, a string error with its retryable flag', async () => {
    const failed = await asAuditor(`
      SELECT schema_version, error_message, error_code, error_retryable, node_id
        FROM audit.task_timeline WHERE task_id = '${TASK_IDS.legacy}' AND event_type = 'TaskAttemptFailed'`);
    expect(failed).toEqual([{ schema_version: 1, error_message: 'disk full', error_code: 'non_retryable', error_retryable: false, node_id: 'edge-old' }]);
    const tasks = await asAuditor(`
      SELECT task_id, memory_mb, state, failure_reason, last_error_message, submitted_at
        FROM audit.tasks WHERE task_id IN ('${TASK_IDS.legacy}', '${TASK_IDS.succeeded}') ORDER BY submitted_at`);
    expect(tasks.map((r) => ({ ...r, submitted_at: iso(r.submitted_at) }))).toEqual([
      { task_id: TASK_IDS.legacy, memory_mb: '512', state: 'failed', failure_reason: 'non-retryable', last_error_message: 'disk full', submitted_at: LEGACY_SUBMITTED_AT },
      { task_id: TASK_IDS.succeeded, memory_mb: '256', state: 'succeeded', failure_reason: null, last_error_message: null, submitted_at: t(0) },
    ]);
    const final = await asAuditor(`SELECT kind, reason, error_message, last_error_message, last_error_code FROM audit.task_failures WHERE task_id = '${TASK_IDS.legacy}' AND is_final`);
    expect(final).toEqual([{ kind: 'failed', reason: 'non-retryable', error_message: null, last_error_message: 'disk full', last_error_code: 'non_retryable' }]);
  });

  it('take the last lifecycle event as the state: a requeue after failed reopens, a dead letter and a cancel close', async () => {
    const states = await asAuditor(`SELECT task_id, state, finished_at FROM audit.tasks ORDER BY task_id`);
    const byId = Object.fromEntries(states.map((r) => [r.task_id, { state: r.state, finished_at: iso(r.finished_at) }]));
    expect(byId).toEqual({
      [TASK_IDS.succeeded]: { state: 'succeeded', finished_at: t(35) },
      [TASK_IDS.retried]: { state: 'succeeded', finished_at: t(170) },
      [TASK_IDS.exhausted]: { state: 'failed', finished_at: t(260) },
      [TASK_IDS.cancelled]: { state: 'cancelled', finished_at: t(400) },
      [TASK_IDS.deadLettered]: { state: 'failed', finished_at: t(700) },
      [TASK_IDS.requeued]: { state: 'queued', finished_at: null },
      [TASK_IDS.inFlight]: { state: 'succeeded', finished_at: t(1140) },
      [TASK_IDS.open]: { state: 'queued', finished_at: null },
      [TASK_IDS.fresh]: { state: 'running', finished_at: null },
      [TASK_IDS.legacy]: { state: 'failed', finished_at: new Date(Date.parse(LEGACY_SUBMITTED_AT) + 3000).toISOString() },
    });
    const open = await asAuditor(`SELECT task_id, state, last_node_id FROM audit.open_tasks ORDER BY submitted_at`);
    expect(open).toEqual([
      { task_id: TASK_IDS.requeued, state: 'queued', last_node_id: 'edge-1' },
      { task_id: TASK_IDS.open, state: 'queued', last_node_id: null },
      { task_id: TASK_IDS.fresh, state: 'running', last_node_id: 'edge-1' },
    ]);
    const attempts = await asAuditor(`SELECT attempt, queued_by_event, queued_by, outcome FROM audit.task_attempts WHERE task_id = '${TASK_IDS.requeued}' ORDER BY attempt`);
    expect(attempts).toEqual([
      { attempt: 1, queued_by_event: 'TaskQueued', queued_by: 'api-key:ops', outcome: 'failed' },
      { attempt: 2, queued_by_event: 'TaskRequeued', queued_by: 'bob', outcome: 'waiting' },
    ]);
  });
});

describe('docs/audit.md', () => {
  const queries = docQueries(DOC);
  const values = (): Record<string, string> => ({
    task_id: TASK_IDS.retried,
    node_id: 'edge-7',
    since: t(200),
    until: t(1200),
    trace_id: 'trace-b',
  });

  /** The answer each question must give on the seed, by its heading in the doc. */
  const answers: Record<string, (rows: Row[]) => void> = {
    '1. What happened to task X, in order?': (rows) => {
      expect(rows.map((r) => [r.version, r.event_type, r.attempt, r.state, r.node_id, r.actor, r.error_message, iso(r.at)])).toEqual([
        [1, 'TaskSubmitted', 0, 'submitted', null, 'api-key:ops', null, t(60)],
        [2, 'TaskQueued', 1, 'queued', null, 'api-key:ops', null, t(60)],
        [3, 'TaskStarted', 1, 'running', 'edge-1', 'node:edge-1', null, t(70)],
        [4, 'TaskAttemptFailed', 1, 'running', 'edge-1', 'node:edge-1', 'upstream timeout', t(80)],
        [5, 'TaskRetryScheduled', 2, 'retrying', null, 'node:edge-1', null, t(80)],
        [6, 'TaskStarted', 2, 'running', 'edge-7', 'node:edge-7', null, t(110)],
        [7, 'TaskSucceeded', 2, 'succeeded', 'edge-7', 'node:edge-7', null, t(170)],
      ]);
      expect(rows[0]?.trace_id).toBe('trace-b');
    },
    '2. How did each attempt of task X go: where it ran, how long it waited and ran, why it failed?': (rows) => {
      expect(rows.map((r) => ({ ...r, queue_wait: secs(r.queue_wait), run_time: secs(r.run_time) }))).toEqual([
        { attempt: 1, queued_by_event: 'TaskQueued', node_id: 'edge-1', outcome: 'failed', queue_wait: 10, run_time: 10, error_code: 'handler_error', error_message: 'upstream timeout' },
        { attempt: 2, queued_by_event: 'TaskRetryScheduled', node_id: 'edge-7', outcome: 'succeeded', queue_wait: 10, run_time: 60, error_code: null, error_message: null },
      ]);
    },
    '3. Which tasks failed in the last 24 hours, and why?': (rows) => {
      // The 2023 (schema v1) failure is older than 24 hours.
      expect(rows.map((r) => ({ ...r, failed_at: iso(r.failed_at) }))).toEqual([
        { task_id: TASK_IDS.exhausted, task_type: 'report', failed_at: t(260), kind: 'failed', reason: 'max-attempts', last_error_message: 'out of paper', state_now: 'failed' },
        { task_id: TASK_IDS.deadLettered, task_type: 'transcode', failed_at: t(700), kind: 'dead_lettered', reason: 'delivery-limit', last_error_message: null, state_now: 'failed' },
        { task_id: TASK_IDS.requeued, task_type: 'transcode', failed_at: t(820), kind: 'failed', reason: 'non-retryable', last_error_message: 'bad codec', state_now: 'queued' },
      ]);
    },
    '4. Which tasks were retried more than once?': (rows) => {
      // The retried task had one retry only.
      expect(rows.map((r) => ({ ...r, last_retry_at: iso(r.last_retry_at) }))).toEqual([
        { task_id: TASK_IDS.exhausted, task_type: 'report', retries: 2, last_retry_at: t(235), state_now: 'failed' },
      ]);
    },
    '5. Who cancelled what, and when?': (rows) => {
      expect(rows.map((r) => ({ ...r, cancelled_at: iso(r.cancelled_at), cancelled_after: secs(r.cancelled_after) }))).toEqual([
        { task_id: TASK_IDS.cancelled, task_type: 'thumbnail', cancelled_by: 'alice', cancelled_at: t(400), reason: 'wrong input', state_before: 'queued', running_on: null, cancelled_after: 100 },
      ]);
    },
    '6. Which tasks were requeued after failing, and by whom?': (rows) => {
      expect(rows.map((r) => ({ ...r, requeued_at: iso(r.requeued_at) }))).toEqual([
        { task_id: TASK_IDS.requeued, task_type: 'transcode', requeued_at: t(3600), requeued_by: 'bob', new_attempt: 2, state_before: 'failed' },
      ]);
    },
    '7. Which tasks ran on node N between two times?': (rows) => {
      // edge-7 also ran the retried task's attempt 2 (110-170 s), before the window (200-1200 s).
      expect(rows.map((r) => ({ ...r, started_at: iso(r.started_at), finished_at: iso(r.finished_at) }))).toEqual([
        { task_id: TASK_IDS.exhausted, task_type: 'report', attempt: 2, started_at: t(230), finished_at: t(235), outcome: 'failed' },
        { task_id: TASK_IDS.inFlight, task_type: 'thumbnail', attempt: 1, started_at: t(1010), finished_at: t(1130), outcome: 'redelivered' },
      ]);
    },
    '8. Which attempts were running on node N when it was lost, and what became of them?': (rows) => {
      expect(rows.map((r) => ({ ...r, lost_at: iso(r.lost_at), started_at: iso(r.started_at), finished_at: iso(r.finished_at) }))).toEqual([
        { lost_at: t(1100), reason: 'heartbeat-expired', task_id: TASK_IDS.inFlight, attempt: 1, started_at: t(1010), outcome: 'redelivered', finished_at: t(1130), reported_in_flight: true },
      ]);
    },
    '9. Which fog nodes were lost, how long had they been up, and with how much work in flight?': (rows) => {
      expect(rows.map((r) => ({ ...r, joined_at: iso(r.joined_at), lost_at: iso(r.lost_at), last_seen: iso(r.last_seen), up_for: secs(r.up_for) }))).toEqual([
        { node_id: 'edge-7', tier: 'medium', joined_at: t(100), lost_at: t(1100), up_for: 1000, reason: 'heartbeat-expired', last_seen: t(1080), in_flight: 1 },
      ]);
    },
    '10. What were the 95th percentile queue wait and run time per task type over the last 7 days?': (rows) => {
      // percentile_cont interpolates: thumbnail waits 2, 5, 10 s -> 9.5; runs 30, 130 s -> 125 (the running one has none).
      // report waits 5, 10, 10, 10, 10 -> 10; runs 5, 5, 10, 10, 60 -> 50. transcode waits 5, 10 -> 9.75; runs 10, 195 -> 185.75.
      expect(rows).toEqual([
        { task_type: 'report', attempts: 5, p95_queue_wait_s: '10.00', p95_run_time_s: '50.00' },
        { task_type: 'thumbnail', attempts: 3, p95_queue_wait_s: '9.50', p95_run_time_s: '125.00' },
        { task_type: 'transcode', attempts: 2, p95_queue_wait_s: '9.75', p95_run_time_s: '185.75' },
      ]);
    },
    '11. Which tasks that finished in the last 7 days took longest from submit to end, and where did the time go?': (rows) => {
      expect(rows.map((r) => ({ ...r, total_time: secs(r.total_time), first_queue_wait: secs(r.first_queue_wait), total_run_time: secs(r.total_run_time) }))).toEqual([
        { task_id: TASK_IDS.deadLettered, task_type: 'transcode', state: 'failed', total_time: 200, first_queue_wait: 5, total_run_time: 195, attempts: 1 },
        { task_id: TASK_IDS.inFlight, task_type: 'thumbnail', state: 'succeeded', total_time: 140, first_queue_wait: 10, total_run_time: 130, attempts: 1 },
        { task_id: TASK_IDS.retried, task_type: 'report', state: 'succeeded', total_time: 110, first_queue_wait: 10, total_run_time: 70, attempts: 2 },
      ]);
    },
    '12. Which tasks are still open more than an hour after they were submitted?': (rows) => {
      // The fresh task (five minutes old) is open too, but younger than an hour.
      expect(rows.map((r) => ({ task_id: r.task_id, task_type: r.task_type, state: r.state, attempt: r.attempt, submitted_at: iso(r.submitted_at), last_event_type: r.last_event_type, requeues: r.requeues }))).toEqual([
        { task_id: TASK_IDS.requeued, task_type: 'transcode', state: 'queued', attempt: 2, submitted_at: t(800), last_event_type: 'TaskRequeued', requeues: 1 },
        { task_id: TASK_IDS.open, task_type: 'report', state: 'queued', attempt: 1, submitted_at: t(3600), last_event_type: 'TaskQueued', requeues: 0 },
      ]);
      expect(secs(rows[1]?.age)).toBeGreaterThanOrEqual(2 * 3600);
      expect(secs(rows[0]?.idle_for)).toBeGreaterThanOrEqual(2 * 3600);
    },
    '13. What did the API request with trace id R write to the log?': (rows) => {
      expect(rows.map((r) => [r.task_id, r.event_type, iso(r.at), r.actor])).toEqual([
        [TASK_IDS.retried, 'TaskSubmitted', t(60), 'api-key:ops'],
        [TASK_IDS.retried, 'TaskQueued', t(60), 'api-key:ops'],
      ]);
    },
    '14. Why did the fog-node capacity of a tier change between two times?': (rows) => {
      // The seed's one decision, at 200 s, inside the window (200-1200 s).
      expect(rows.map((r) => ({ ...r, at: iso(r.at), oldest_wait: secs(r.oldest_wait) }))).toEqual([
        { tier: 'light', at: t(200), replicas_from: 1, replicas_to: 3, trigger: 'backlog', queue_depth: 25, queued: 27, running: 2, oldest_wait: 4, recorded_by: 'autoscaler-1' },
      ]);
    },
  };

  it('holds at least eight questions, each with SQL under its heading and an answer checked here', () => {
    expect(queries.length).toBeGreaterThanOrEqual(8);
    expect(queries.map((q) => q.heading)).toEqual(Object.keys(answers));
    expect(new Set(queries.map((q) => q.heading)).size).toBe(queries.length);
  });

  for (const query of queries) {
    it(`answers "${query.heading}" as the auditor, with the expected rows`, async () => {
      const check = answers[query.heading];
      if (!check) throw new Error(`docs/audit.md question "${query.heading}" has no assertion in this test`);
      const rows = await asAuditor(substitute(query.sql, values()));
      check(rows);
    });
  }
});

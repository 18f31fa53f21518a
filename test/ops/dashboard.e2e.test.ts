import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, opsPortOf, postJson, spawnFogsched, waitReady } from '../helpers/processes.js';
import { documentedRabbitMetrics, familyOf, usedMetrics } from './monitoring-files.js';

afterEach(dropE2eEnvs);

/** The metric families of a scrape (its `# TYPE` lines) and which of them are histograms. */
function families(text: string): { names: Set<string>; histograms: Set<string> } {
  const names = new Set<string>();
  const histograms = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(m[1] as string);
    if (m[2] === 'histogram') histograms.add(m[1] as string);
  }
  return { names, histograms };
}

describe('the Grafana dashboard and the alert rules against a real /metrics', () => {
  it('every metric a panel or an alert queries is in the scrape of running roles (rabbitmq_* in the documented list)', async () => {
    const t = await e2eEnv('opsdash');
    // Every role in one process, as `npm start` runs them: one ops server for all.
    const app = spawnFogsched(['start', '--fog-nodes', '1'], { ...t.env, LOG_LEVEL: 'info', FOG_HEARTBEAT_INTERVAL_MS: '500', COORDINATOR_INTERVAL_MS: '1000' });
    await waitReady(t.port, app, 60_000);
    const ops = await opsPortOf(app);

    // Work for every task metric: a success, a failure, a cancel, an API 404.
    for (const body of [{ type: 'noop' }, { type: 'fail', payload: { message: 'x', retryable: false }, maxAttempts: 1 }]) {
      expect((await postJson(`${t.base}/v1/tasks`, body)).status).toBe(202);
    }
    const delayed = await postJson(`${t.base}/v1/tasks`, { type: 'noop', notBefore: new Date(Date.now() + 86_400_000).toISOString() });
    const cancel = await postJson(`${t.base}/v1/tasks/${delayed.body.id}/cancel`, { reason: 'not needed' });
    expect(cancel.status, JSON.stringify(cancel.body) + JSON.stringify(delayed.body)).toBe(200);
    expect((await fetch(`${t.base}/v1/tasks/00000000-0000-7000-8000-000000000000`)).status).toBe(404);
    await eventually(async () => (await t.count(`SELECT count(*) AS n FROM task_current WHERE state IN ('succeeded', 'failed')`)) === 2, { timeoutMs: 60_000 });

    const scrape = await eventually(
      async () => {
        const text = await (await fetch(`http://127.0.0.1:${ops}/metrics`)).text();
        // The result batch is counted once ingest committed it; the live-node gauge once the coordinator's Redis read is cached.
        return /^fogsched_tasks_finished_total\{type="noop",tier="light",outcome="succeeded"\} 1$/m.test(text) && /^fogsched_fog_nodes_live\{tier="light"\} 1$/m.test(text) ? text : undefined;
      },
      { timeoutMs: 60_000, message: 'the scrape never showed the finished task and the live fog node' },
    );
    const { names, histograms } = families(scrape);
    const rabbit = documentedRabbitMetrics();
    // The local broker may lack the rabbitmq_prometheus plugin: its metrics are checked against docs/metrics.md's list.
    const missing = usedMetrics().filter(({ name }) => (name.startsWith('rabbitmq_') ? !rabbit.has(name) : name !== 'up' && !names.has(familyOf(name, histograms))));
    expect(missing).toEqual([]);

    // Series the panels need, not only their names.
    for (const line of [/^fogsched_tasks_submitted_total\{tier="light",priority="normal"\} 3$/m, /^fogsched_tasks_finished_total\{type="fail",tier="light",outcome="failed"\} 1$/m, /^fogsched_tasks_finished_total\{type="noop",tier="light",outcome="cancelled"\} 1$/m, /^fogsched_task_queue_wait_seconds_count\{tier="light"\} 2$/m, /^fogsched_task_run_seconds_count\{tier="light"\} 2$/m, /^fogsched_http_request_duration_seconds_count\{route="\/v1\/tasks\/:id",method="GET",status="404"\} 1$/m, /^fogsched_fog_node_slots\{tier="light",state="free"\} \d+$/m, /^fogsched_dlq_tasks 1$/m, /^fogsched_projection_lag_events 0$/m]) {
      expect(scrape).toMatch(line);
    }
    // The api serves the same registry on its own port (an operator: the API runs open here).
    const viaApi = await fetch(`${t.base}/metrics`);
    expect(viaApi.status).toBe(200);
    expect(await viaApi.text()).toContain('fogsched_tasks_submitted_total');
    expect(await app.kill('SIGTERM')).toBe(0);
  });
});

import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { alertRules, dashboard, documentedRabbitMetrics, metricNames, prometheus, read, usedMetrics } from '../ops/monitoring-files.js';

/**
 * deploy/prometheus and deploy/grafana held against the stack and docs/metrics.md without an
 * engine. test/ops/dashboard.e2e.test.ts checks the same metric names against a real scrape.
 */
const stack = parse(read('deploy/swarm/stack.yml'), { merge: true }) as {
  services: Record<string, { image: string; configs?: { source: string; target: string }[] }>;
  configs: Record<string, { file?: string }>;
};
const fogschedServices = Object.entries(stack.services).filter(([, s]) => /fogsched/.test(s.image)).map(([n]) => n);
const brokers = Object.keys(stack.services).filter((n) => /^rabbitmq-\d$/.test(n));
const job = (name: string) => prometheus.scrape_configs.find((j) => j.job_name === name);

describe('deploy/prometheus', () => {
  it('finds every fogsched service by Swarm DNS (tasks.<service>) on the ops port 9464', () => {
    const sd = job('fogsched')?.dns_sd_configs ?? [];
    expect(sd.flatMap((c) => c.names).sort()).toEqual(fogschedServices.map((s) => `tasks.${s}`).sort());
    for (const c of sd) expect(c.port).toBe(9464);
  });

  it('scrapes every broker on the plugin port 15692, aggregated and per queue of /fog', () => {
    for (const name of ['rabbitmq', 'rabbitmq-queues']) {
      const sd = job(name)?.dns_sd_configs ?? [];
      expect(sd.flatMap((c) => c.names).sort(), name).toEqual(brokers.map((b) => `tasks.${b}`).sort());
      for (const c of sd) expect(c.port).toBe(15692);
    }
    expect(job('rabbitmq-queues')).toMatchObject({ metrics_path: '/metrics/detailed', params: { family: ['queue_coarse_metrics'], vhost: ['/fog'] } });
    expect(read('deploy/swarm/enabled_plugins')).toContain('rabbitmq_prometheus');
  });

  it('has the alert rules the issue names, loaded from the file the stack mounts', () => {
    expect(alertRules.map((r) => r.alert)).toEqual(expect.arrayContaining(['FogschedOutboxLag', 'FogschedDlqGrowing', 'FogschedTierWithoutFogNode', 'FogschedProjectionLag', 'FogschedBrokerMemberDown']));
    expect(prometheus.rule_files).toEqual(['/etc/prometheus/alerts.yml']);
    expect(stack.services.prometheus?.configs).toEqual([
      { source: 'prometheus_conf', target: '/etc/prometheus/prometheus.yml' },
      { source: 'prometheus_alerts', target: '/etc/prometheus/alerts.yml' },
    ]);
    expect(stack.configs.prometheus_conf?.file).toBe('../prometheus/prometheus.yml');
    expect(stack.configs.prometheus_alerts?.file).toBe('../prometheus/alerts.yml');
  });
});

describe('deploy/grafana', () => {
  it('every panel queries at least one metric, from the provisioned Prometheus datasource', () => {
    const datasource = parse(read('deploy/grafana/provisioning/datasources/prometheus.yml')) as { datasources: { uid: string; url: string }[] };
    expect(datasource.datasources[0]).toMatchObject({ uid: 'prometheus', url: 'http://prometheus:9090' });
    expect(dashboard.panels.length).toBeGreaterThanOrEqual(10);
    for (const p of dashboard.panels) {
      const names = (p.targets ?? []).flatMap((t) => metricNames(t.expr ?? ''));
      expect(names.length, p.title).toBeGreaterThan(0);
    }
    expect(stack.configs.grafana_dashboard_fogsched?.file).toBe('../grafana/dashboards/fogsched.json');
  });

  it('covers the panels the issue asks for', () => {
    const all = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? '')).join('\n');
    for (const metric of ['fogsched_tasks_submitted_total', 'fogsched_tasks_finished_total', 'fogsched_task_queue_wait_seconds_bucket', 'fogsched_task_run_seconds_bucket', 'fogsched_outbox_lag_seconds', 'rabbitmq_detailed_queue_messages_ready', 'fogsched_fog_nodes_live', 'fogsched_fog_node_slots', 'fogsched_dlq_tasks', 'fogsched_http_request_duration_seconds_count']) {
      expect(all).toContain(metric);
    }
  });

  it('every metric of a panel or an alert is documented in docs/metrics.md', () => {
    const doc = read('docs/metrics.md');
    const rabbit = documentedRabbitMetrics();
    expect(rabbit.size).toBeGreaterThan(0);
    for (const { name, where } of usedMetrics()) {
      if (name.startsWith('rabbitmq_')) expect(rabbit.has(name), `${where}: ${name}`).toBe(true);
      else if (name === 'up') continue; // Prometheus's own
      else expect(doc, `${where}: ${name}`).toContain(`\`${name.replace(/_(bucket|sum|count)$/, '')}\``);
    }
  });
});

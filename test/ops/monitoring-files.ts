import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

/** The monitoring files of deploy/, read for the tests. */
const root = new URL('../../', import.meta.url);
export const read = (path: string) => readFileSync(new URL(path, root), 'utf8');

export interface Panel {
  readonly title: string;
  readonly targets?: { expr?: string }[];
}
export const dashboard = JSON.parse(read('deploy/grafana/dashboards/fogsched.json')) as { uid: string; panels: Panel[] };
export const prometheus = parse(read('deploy/prometheus/prometheus.yml')) as {
  rule_files: string[];
  scrape_configs: { job_name: string; metrics_path?: string; params?: Record<string, string[]>; dns_sd_configs?: { names: string[]; type: string; port: number }[] }[];
};
export const alerts = parse(read('deploy/prometheus/alerts.yml')) as { groups: { name: string; rules: { alert: string; expr: string }[] }[] };
export const alertRules = alerts.groups.flatMap((g) => g.rules);

/**
 * The metric names a PromQL expression reads. Every name we use has one of these prefixes
 * (fogsched's own, the RabbitMQ plugin's, prom-client's process metrics, Prometheus's `up`), so
 * a token with one is a metric and anything else (functions, labels, keywords) is not.
 */
export function metricNames(expr: string): string[] {
  const withoutStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  return [...new Set([...withoutStrings.matchAll(/\b(?:fogsched|rabbitmq|process|nodejs)_[a-z0-9_]+\b|\bup\b(?=\s*[{[)]|\s*$|\s*==)/g)].map((m) => m[0]))];
}

/** The RabbitMQ metrics docs/metrics.md lists (between its rabbitmq-metrics markers). */
export function documentedRabbitMetrics(): Set<string> {
  const doc = read('docs/metrics.md');
  const section = /<!-- rabbitmq-metrics[^>]*-->([\s\S]*?)<!-- \/rabbitmq-metrics -->/.exec(doc)?.[1] ?? '';
  return new Set([...section.matchAll(/^- `(rabbitmq_[a-z0-9_]+)`/gm)].map((m) => m[1] as string));
}

/** The metric a series name belongs to: a histogram's `_bucket`, `_sum` and `_count` are its own. */
export function familyOf(name: string, histograms: ReadonlySet<string>): string {
  const base = name.replace(/_(bucket|sum|count)$/, '');
  return base !== name && histograms.has(base) ? base : name;
}

/** Every metric name of a dashboard panel or alert rule, with where it is used. */
export function usedMetrics(): { name: string; where: string }[] {
  return [
    ...dashboard.panels.flatMap((p) => (p.targets ?? []).flatMap((t) => metricNames(t.expr ?? '').map((name) => ({ name, where: `panel "${p.title}"` })))),
    ...alertRules.flatMap((r) => metricNames(r.expr).map((name) => ({ name, where: `alert ${r.alert}` }))),
  ];
}

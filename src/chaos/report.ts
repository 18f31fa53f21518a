import { dispatchOf, type TaskEvent } from '../domain/index.js';
import { isTerminalEvent, outcomeOf, RULES, type LoggedEvent, type RuleName, type Violation } from './checker.js';
import { FAULT_KINDS, type FaultKind, type FaultRecord } from './nemesis.js';

/**
 * Figures of a chaos run, from the event log's commit times: how long each fault stalled the
 * system, and how far throughput dipped.
 *
 * A *stall* is two or more one-second buckets in a row in which no task completed although
 * tasks were waiting that the system did complete later (tasks that never completed are the
 * checker's business and would otherwise make every quiet second look stalled). Each stall
 * belongs to the last fault that began before it (one bucket of slack) if it began while that
 * fault was held or within 15 s after it was healed. A fault's recovery is the time from its
 * start to the end of the longest of its stalls; 0 when it caused none; clipped (`≥`) when the
 * stall still ran as the next fault began.
 */

export const STALL_ATTRIBUTION_MS = 15_000;

export interface Recovery {
  readonly fault: FaultRecord;
  /** ms from the fault's start until tasks completed again; 0 when no stall followed. */
  readonly recoveryMs: number;
  /** Still stalled when the next fault began: the recovery is at least recoveryMs. */
  readonly clipped: boolean;
}

export interface Throughput {
  /** Median completions/s over 5 s windows of the fault phase. */
  readonly medianPerS: number;
  /** The worst 5 s window. */
  readonly worstPerS: number;
  /** Its start (ms since epoch) and the fault held then, if any. */
  readonly worstAt: number;
  readonly worstDuring: FaultKind | null;
  /** 1 - worst/median. */
  readonly dip: number;
}

function completionTimes(tasks: ReadonlyMap<string, readonly LoggedEvent[]>): { done: number[]; waits: { from: number; to: number }[] } {
  const done: number[] = [];
  const waits: { from: number; to: number }[] = [];
  for (const events of tasks.values()) {
    const end = events.find((e) => isTerminalEvent(e.type));
    if (!end) continue;
    done.push(end.recordedAt);
    const first = events.map((e) => dispatchOf({ type: e.type, data: e.data } as unknown as TaskEvent)).find((d) => d !== null);
    const from = first ? Math.max(Date.parse(first.availableAt), events[0]?.recordedAt ?? 0) : (events[0]?.recordedAt ?? end.recordedAt);
    waits.push({ from, to: end.recordedAt });
  }
  done.sort((a, b) => a - b);
  return { done, waits };
}

export function recoveries(tasks: ReadonlyMap<string, readonly LoggedEvent[]>, faults: readonly FaultRecord[], until: number): Recovery[] {
  if (faults.length === 0) return [];
  const { done, waits } = completionTimes(tasks);
  const start = Math.min(...faults.map((f) => f.startedAt));
  const buckets = Math.max(0, Math.ceil((until - start) / 1000));
  const completions = new Array<number>(buckets).fill(0);
  for (const t of done) {
    const b = Math.floor((t - start) / 1000);
    if (b >= 0 && b < buckets) completions[b] = (completions[b] ?? 0) + 1;
  }
  // Waiting work at a bucket's start and end (a task waits from its first due time to its end).
  const waitingAt = (t: number) => waits.filter((w) => w.from <= t && w.to > t).length;
  const stalled = completions.map((n, b) => n === 0 && waitingAt(start + b * 1000) > 0 && waitingAt(start + (b + 1) * 1000) > 0);
  // Maximal runs of stalled buckets, [first, end) in ms; a single quiet second is noise.
  const stalls: { from: number; to: number }[] = [];
  for (let b = 0; b < buckets; b++) {
    if (!stalled[b]) continue;
    let e = b;
    while (e + 1 < buckets && stalled[e + 1]) e++;
    if (e > b) stalls.push({ from: start + b * 1000, to: start + (e + 1) * 1000 });
    b = e;
  }
  const ordered = [...faults].sort((a, b) => a.startedAt - b.startedAt);
  /** The fault a stall belongs to: the last one begun by the stall's first bucket's end. */
  const ownerOf = (stall: { from: number }) => {
    let owner = -1;
    ordered.forEach((f, k) => {
      if (f.startedAt <= stall.from + 1000) owner = k;
    });
    return owner;
  };
  return ordered.map((fault, k) => {
    const next = ordered[k + 1]?.startedAt ?? Infinity;
    const windowEnd = Math.max(fault.healedAt, fault.startedAt) + STALL_ATTRIBUTION_MS;
    // A stall under way when the fault began belongs to the earlier cause.
    const caused = stalls.filter((s) => ownerOf(s) === k && s.from >= fault.startedAt - 1000 && s.from < windowEnd);
    let recoveryMs = 0;
    let clipped = false;
    for (const s of caused) {
      const end = Math.min(s.to, next);
      if (end - fault.startedAt > recoveryMs) {
        recoveryMs = end - fault.startedAt;
        clipped = s.to > next;
      }
    }
    return { fault, recoveryMs, clipped };
  });
}

export function throughput(tasks: ReadonlyMap<string, readonly LoggedEvent[]>, faults: readonly FaultRecord[], from: number, to: number): Throughput | null {
  const { done } = completionTimes(tasks);
  const windows: { at: number; perS: number }[] = [];
  for (let t = from; t + 5000 <= to; t += 5000) {
    const n = done.filter((d) => d >= t && d < t + 5000).length;
    windows.push({ at: t, perS: n / 5 });
  }
  if (windows.length === 0) return null;
  const sorted = [...windows].sort((a, b) => a.perS - b.perS);
  const median = (sorted[Math.floor(sorted.length / 2)] as { perS: number }).perS;
  const worst = sorted[0] as { at: number; perS: number };
  const during = faults.find((f) => f.startedAt < worst.at + 5000 && Math.max(f.healedAt, f.startedAt + 1000) > worst.at);
  return { medianPerS: median, worstPerS: worst.perS, worstAt: worst.at, worstDuring: during?.kind ?? null, dip: median > 0 ? Math.max(0, 1 - worst.perS / median) : 0 };
}

export interface ReportInput {
  readonly tasks: ReadonlyMap<string, readonly LoggedEvent[]>;
  readonly faults: readonly FaultRecord[];
  readonly skippedFaults: readonly { kind: FaultKind; why: string }[];
  readonly violations: readonly Violation[];
  readonly recoveries: readonly Recovery[];
  readonly throughput: Throughput | null;
  readonly phaseStart: number;
  readonly recoveryBoundS: number;
  readonly recoveredInMs: number | null;
  readonly client: { readonly answers: Record<string, number>; readonly submits: number; readonly accepted: number; readonly rejected: number; readonly unknown: number; readonly cancels: number };
  readonly observedStarts: number;
  /** MessageDeadLettered events: messages ingest set aside. */
  readonly deadLetteredMessages: number;
  readonly duplicateRuns: number;
}

const s1 = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** The human report: faults, outcomes, recovery, throughput, violations with one example each; the last line is the summary. */
export function formatReport(r: ReportInput): string {
  const lines: string[] = [];
  const byKind = new Map<FaultKind, FaultRecord[]>();
  for (const f of r.faults) byKind.set(f.kind, [...(byKind.get(f.kind) ?? []), f]);
  lines.push(`faults injected: ${r.faults.length}`);
  for (const kind of FAULT_KINDS) {
    const list = byKind.get(kind);
    const skipped = r.skippedFaults.find((s) => s.kind === kind);
    if (!list) {
      lines.push(`  ${kind.padEnd(17)}  0${skipped ? `  skipped: ${skipped.why}` : ''}`);
      continue;
    }
    const rec = r.recoveries.filter((x) => x.fault.kind === kind);
    const longest = rec.reduce<Recovery | undefined>((m, x) => (!m || x.recoveryMs > m.recoveryMs ? x : m), undefined);
    const errors = list.filter((f) => f.error).length;
    const text = !longest || longest.recoveryMs === 0 ? '0 s (no stall)' : `${longest.clipped ? '≥ ' : ''}${s1(longest.recoveryMs)}${longest.clipped ? ' (still stalled when the next fault began)' : ''}`;
    lines.push(`  ${kind.padEnd(17)} ${String(list.length).padStart(2)}  longest recovery ${text}${errors ? `  (${errors} failed to inject: ${list.find((f) => f.error)?.error})` : ''}`);
  }
  const outcomes = new Map<string, number>();
  for (const [id, events] of r.tasks) outcomes.set(outcomeOf(id, events), (outcomes.get(outcomeOf(id, events)) ?? 0) + 1);
  lines.push(`tasks by outcome (${r.tasks.size}):`);
  for (const [o, n] of [...outcomes].sort((a, b) => b[1] - a[1])) lines.push(`  ${o.padEnd(34)} ${n}`);
  const c = r.client;
  lines.push(
    `client: ${c.submits} submits (${c.accepted} accepted, ${c.rejected} rejected, ${c.unknown} unknown), ${c.cancels} cancels acknowledged; answers ${Object.entries(c.answers)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, v]) => `${k}: ${v}`)
      .join(', ')}`,
  );
  lines.push(`messages ingest set aside (MessageDeadLettered): ${r.deadLetteredMessages}`);
  lines.push(`runs seen by the result spy: ${r.observedStarts} starts; ${r.duplicateRuns} attempts started on more than one node (at-least-once, not a violation)`);
  if (r.throughput) {
    const t = r.throughput;
    lines.push(
      `throughput: median ${t.medianPerS.toFixed(1)} tasks/s (5 s windows, fault phase); worst ${t.worstPerS.toFixed(1)}/s at +${s1(t.worstAt - r.phaseStart)}${t.worstDuring ? ` (during ${t.worstDuring})` : ''}: dip ${Math.round(t.dip * 100)} %`,
    );
  }
  lines.push(r.recoveredInMs === null ? `recovery: work still open after the ${r.recoveryBoundS} s bound` : `recovery: all tasks terminal and the outbox published ${s1(r.recoveredInMs)} after the last fault (bound ${r.recoveryBoundS} s)`);
  const byRule = new Map<RuleName, Violation[]>();
  for (const v of r.violations) byRule.set(v.rule, [...(byRule.get(v.rule) ?? []), v]);
  lines.push(`violations: ${r.violations.length}`);
  for (const [rule, list] of byRule) {
    const example = list[0] as Violation;
    lines.push(`  ${rule} (${list.length}): ${RULES[rule]}`);
    lines.push(`    e.g. ${example.taskId ? `task ${example.taskId}: ` : ''}${example.detail}`);
    const events = example.taskId ? r.tasks.get(example.taskId) : undefined;
    if (events) lines.push(...formatEvents(events).map((l) => `      ${l}`));
  }
  lines.push(`chaos: ${r.tasks.size} tasks, ${r.faults.length} faults, ${r.violations.length} violations`);
  return `${lines.join('\n')}\n`;
}

/** One line per event: version, type, attempt, node, reason, commit time. */
export function formatEvents(events: readonly LoggedEvent[]): string[] {
  return events.map((e) => {
    const d = e.data as { attempt?: number; nodeId?: string | null; reason?: string; error?: { code?: string } | null };
    const bits = [
      d.attempt !== undefined ? `attempt ${d.attempt}` : '',
      d.nodeId ? `node ${d.nodeId}` : '',
      d.reason ? `reason ${d.reason}` : '',
      d.error?.code ? `error ${d.error.code}` : '',
    ].filter(Boolean);
    return `v${e.version} ${e.type}${bits.length ? ` (${bits.join(', ')})` : ''} @ ${new Date(e.recordedAt).toISOString()}`;
  });
}

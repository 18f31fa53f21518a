/** Small SVG charts drawn from API data: no canvas and no library, so they scale and read out. */

export interface Series {
  name: string;
  /** A CSS class setting the stroke colour (see style.css). */
  className: string;
  values: number[];
}

function niceMax(value: number): number {
  if (value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

/** A top for four grid steps of a round size (1, 2 or 5 × 10^k, at least 1: the data are counts). */
function countAxisMax(value: number): number {
  const raw = Math.max(1, value / 4);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * magnitude).find((v) => v >= raw) ?? 10 * magnitude;
  return step * 4;
}

/** Lines over time; the label says what it shows and the totals, for screen readers. */
export function LineChart({ title, series, times }: { title: string; series: Series[]; times: string[] }) {
  const width = 640;
  const height = 200;
  const left = 44;
  const bottom = 22;
  const plotW = width - left - 8;
  const plotH = height - bottom - 8;
  const max = countAxisMax(Math.max(0, ...series.flatMap((s) => s.values)));
  const n = Math.max(1, times.length - 1);
  const x = (i: number) => left + (i / n) * plotW;
  const y = (v: number) => 8 + plotH - (v / max) * plotH;
  const summary = series.map((s) => `${s.name} ${s.values.reduce((a, b) => a + b, 0)}`).join(', ');
  const label = (iso: string | undefined) => (iso ? new Date(iso).toTimeString().slice(0, 5) : '');
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={`${title}: ${summary}`}>
        {[0, 0.25, 0.5, 0.75, 1].map((f) => (
          <g key={f}>
            <line class="grid" x1={left} x2={width - 8} y1={y(max * f)} y2={y(max * f)} />
            <text class="axis" x={left - 6} y={y(max * f) + 4} text-anchor="end">
              {Number.isInteger(max * f) ? max * f : (max * f).toFixed(1)}
            </text>
          </g>
        ))}
        {[0, Math.floor(n / 2), n].map((i) => (
          <text key={i} class="axis" x={x(i)} y={height - 6} text-anchor={i === 0 ? 'start' : i === n ? 'end' : 'middle'}>
            {label(times[i])}
          </text>
        ))}
        {series.map((s) => (
          <polyline key={s.name} class={`line ${s.className}`} points={s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ')} />
        ))}
      </svg>
      <figcaption>
        {title}:{' '}
        {series.map((s) => (
          <span key={s.name} class={`legend ${s.className}`}>
            {s.name} {s.values.reduce((a, b) => a + b, 0)}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}

/** A horizontal bar inside a table cell, `value` of `max`. */
export function Bar({ value, max, label }: { value: number; max: number; label: string }) {
  const pct = max > 0 ? Math.min(100, (value / max) * 100) : 0;
  return (
    <svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label={label}>
      <rect x="0" y="0" width={pct} height="10" />
    </svg>
  );
}

/** A sparkline of successive samples (the cluster page's CPU and memory per fog node). */
export function Sparkline({ values, label, max }: { values: number[]; label: string; max?: number }) {
  const width = 120;
  const height = 24;
  const top = max ?? niceMax(Math.max(0, ...values));
  const n = Math.max(1, values.length - 1);
  const points = values.map((v, i) => `${((i / n) * width).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`).join(' ');
  return (
    <svg class="spark" viewBox={`0 0 ${width} ${height}`} width={width} height={height} role="img" aria-label={label}>
      <polyline points={points} />
    </svg>
  );
}

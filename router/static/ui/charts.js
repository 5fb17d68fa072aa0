// Charts on the vendored Apache ECharts (/static/vendor/echarts/echarts.min.js, a global `echarts`).
import { TIERS, TIER_COLORS, fmtNum, fmtTime, h } from './api.js';

const charts = new Set();
window.addEventListener('resize', () => charts.forEach((c) => c.resize()));

// The chart of element `el` (made once), with its option replaced.
export function draw(el, option) {
  let chart = echarts.getInstanceByDom(el);
  if (!chart) {
    chart = echarts.init(el, null, { renderer: 'canvas' });
    charts.add(chart);
  }
  chart.setOption(option, { notMerge: true });
  return chart;
}

export function dispose(el) {
  const chart = echarts.getInstanceByDom(el);
  if (chart) { charts.delete(chart); chart.dispose(); }
}

export function chartBox(cls = 'chart') {
  return h('div', { class: cls });
}

// One rectangle per span: value [row index, from ms, to ms, label]; clipped to the grid.
function renderSpan(params, api, labels) {
  const row = api.value(0);
  const start = api.coord([api.value(1), row]);
  const end = api.coord([api.value(2), row]);
  const height = api.size([0, 1])[1] * 0.62;
  const grid = params.coordSys;
  const rect = echarts.graphic.clipRectByRect(
    { x: start[0], y: start[1] - height / 2, width: Math.max(end[0] - start[0], 2), height },
    { x: grid.x, y: grid.y, width: grid.width, height: grid.height },
  );
  if (!rect) return null;
  const children = [{ type: 'rect', shape: rect, style: api.style() }];
  const label = labels[params.dataIndex];
  if (label && rect.width > 8 * label.length) {
    children.push({
      type: 'text', silent: true,
      style: { text: label, x: rect.x + 6, y: rect.y + rect.height / 2, verticalAlign: 'middle', fill: '#fff',
        font: '12px system-ui, sans-serif' },
    });
  }
  return { type: 'group', children };
}

// Spans on a time axis, one row per tier. spans: [{tier, from, to (ms), label, tooltip, faded}].
export function tierSpans(el, spans, { min, max, marks = [], title } = {}) {
  const labels = spans.map((s) => s.label || '');
  return draw(el, {
    animation: false,
    title: title ? { text: title, left: 8, top: 0, textStyle: { fontSize: 13, fontWeight: 'normal' } } : undefined,
    grid: { left: 70, right: 24, top: title ? 28 : (marks.length ? 26 : 12), bottom: 28 },
    tooltip: { trigger: 'item', formatter: (p) => spans[p.dataIndex]?.tooltip || '' },
    xAxis: { type: 'time', min, max, axisLabel: { hideOverlap: true } },
    yAxis: { type: 'category', data: TIERS, axisTick: { show: false } },
    series: [{
      type: 'custom',
      renderItem: (params, api) => renderSpan(params, api, labels),
      encode: { x: [1, 2], y: 0 },
      data: spans.map((s) => ({
        value: [TIERS.indexOf(s.tier), s.from, s.to, s.label || ''],
        itemStyle: { color: TIER_COLORS[s.tier], opacity: s.faded ? 0.45 : 0.9, borderColor: '#fff', borderWidth: 1 },
      })),
      markLine: marks.length ? {
        symbol: 'none', silent: true, animation: false,
        label: { formatter: (p) => p.name, position: 'end', fontSize: 11 },
        lineStyle: { type: 'dashed', color: '#555' },
        data: marks.map((m) => ({ name: m.name, xAxis: m.at })),
      } : undefined,
    }],
  });
}

// A line chart of one series answer: points [{t, value}].
export function seriesChart(el, answer) {
  return draw(el, {
    animation: false,
    grid: { left: 64, right: 24, top: 24, bottom: 56 },
    tooltip: { trigger: 'axis', valueFormatter: (v) => fmtNum(v) },
    xAxis: { type: 'time' },
    yAxis: { type: 'value', scale: true, name: answer.agg, nameTextStyle: { align: 'right' } },
    dataZoom: [{ type: 'inside' }, { type: 'slider', height: 18, bottom: 8 }],
    series: [{
      name: `${answer.agg}${answer.key ? ` of ${answer.key}` : ''}`, type: 'line', showSymbol: answer.points.length < 80,
      connectNulls: false, areaStyle: { opacity: 0.12 }, color: '#2f6690',
      data: answer.points.map((p) => [Date.parse(p.t), p.value]),
    }],
  });
}

// Horizontal bars of a top-K answer, best on top: items [{rank, key, value}].
export function barsChart(el, items, by) {
  const shown = items.slice(0, 25).reverse();
  return draw(el, {
    animation: false,
    grid: { left: 8, right: 48, top: 8, bottom: 8, containLabel: true },
    tooltip: { trigger: 'item', formatter: (p) => `#${shown[p.dataIndex].rank} ${echarts.format.encodeHTML(shown[p.dataIndex].key)}: ${fmtNum(p.value)} (${by})` },
    xAxis: { type: 'value', show: false },
    yAxis: { type: 'category', data: shown.map((i) => i.key), axisLabel: { width: 160, overflow: 'truncate' } },
    series: [{
      type: 'bar', data: shown.map((i) => i.value), color: '#3f88c5',
      label: { show: true, position: 'right', formatter: (p) => fmtNum(p.value) },
    }],
  });
}

// meta.segments of an answer as coloured spans per tier.
export function segmentsChart(el, meta, title) {
  const spans = meta.segments.map((s) => {
    const from = Date.parse(s.from);
    const to = Date.parse(s.to);
    return {
      tier: s.tier, from, to, label: s.granularity, faded: s.cached,
      tooltip: `${s.tier} ${s.granularity}${s.cached ? ' (cached)' : ''}<br>${fmtTime(from)} → ${fmtTime(to)}`
        + `<br>took ${s.took_ms === null ? '—' : `${fmtNum(s.took_ms)} ms`}`,
    };
  });
  const min = Math.min(...spans.map((s) => s.from));
  const max = Math.max(...spans.map((s) => s.to));
  return tierSpans(el, spans, { min: spans.length ? min : undefined, max: spans.length ? max : undefined, title });
}

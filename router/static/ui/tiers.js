// Tiers: who owns which time (GET /v1/tiers) on a timeline with the boundaries, rows and bytes.
import { DAY, TIERS, api, finite, fmtBytes, fmtNum, fmtTime, h, settle, table } from './api.js';
import { chartBox, tierSpans } from './charts.js';

const REFRESH_MS = 10000;

export const title = 'Tiers';

function window_(boundaries, now) {
  const points = [now, ...boundaries.filter(finite)];
  let lo = Math.min(...points);
  let hi = Math.max(...points);
  const span = Math.max(hi - lo, DAY);
  lo -= span * 0.25;
  hi += span * 0.08;
  return [lo, hi];
}

// -inf and +inf (years 0001 and 9999) at the edges of the drawn window.
function clamp(ms, min, max) {
  return Math.min(Math.max(ms, min), max);
}

function timeline(el, body, now) {
  const b = body.boundaries;
  const marks = [['archive', b.archive], ['cold', b.cold], ['warm', b.warm]]
    .map(([name, t]) => ({ name: `b_${name}`, at: Date.parse(t) }))
    .filter((m) => finite(m.at));
  const [min, max] = window_(marks.map((m) => m.at), now);
  marks.push({ name: 'now', at: now });
  const spans = body.tiers.map((t) => {
    const from = Date.parse(t.owns.from);
    const to = Date.parse(t.owns.to);
    return {
      tier: t.name, from: clamp(from, min, max), to: clamp(to, min, max), faded: !t.healthy,
      label: `${t.name}: ${t.rows === null ? '? rows' : `${fmtNum(t.rows)} rows`} · ${fmtBytes(t.bytes)}`,
      tooltip: `${t.name} owns ${fmtTime(from)} → ${fmtTime(to)}<br>${fmtNum(t.rows)} rows, ${fmtBytes(t.bytes)}`
        + `<br>${t.healthy ? 'healthy' : 'UNHEALTHY'}`,
    };
  }).filter((s) => s.to > s.from);
  tierSpans(el, spans, { min, max, marks });
}

export function mount(root) {
  const chart = chartBox('chart timeline');
  const summary = h('p', { class: 'muted' });
  const rows = h('div');
  const status = h('div');
  root.append(
    h('div', { class: 'toolbar' }, h('button', { type: 'button', onclick: () => load() }, 'Refresh'), summary),
    status, chart, rows,
  );

  function load() {
    return settle(root, status, async () => {
      const body = await api('GET', '/v1/tiers');
      status.replaceChildren();
      const now = Date.now();
      summary.textContent = `catalog version ${body.catalog_version} · updated ${fmtTime(now)}`;
      timeline(chart, body, now);
      const ordered = [...body.tiers].sort((a, b) => TIERS.indexOf(a.name) - TIERS.indexOf(b.name));
      rows.replaceChildren(table(['tier', 'owns from', 'owns to', 'rows', 'bytes', 'health'], ordered.map((t) => h(
        'tr', { dataset: { tier: t.name } },
        h('td', {}, h('span', { class: `swatch ${t.name}` }), t.name),
        h('td', {}, fmtTime(t.owns.from)),
        h('td', {}, fmtTime(t.owns.to), t.owns.from === t.owns.to ? h('span', { class: 'muted' }, ' (owns nothing yet)') : null),
        h('td', { class: 'num', dataset: { value: t.rows ?? '' } }, fmtNum(t.rows)),
        h('td', { class: 'num', dataset: { value: t.bytes ?? '' } }, fmtBytes(t.bytes)),
        h('td', {}, h('span', { class: `badge ${t.healthy ? 'ok' : 'bad'}` },
          t.configured === false ? 'not configured' : t.healthy ? 'healthy' : 'unhealthy')),
      )), { class: 'tiers' }));
    });
  }

  load();
  const timer = setInterval(load, REFRESH_MS);
  return () => clearInterval(timer);
}

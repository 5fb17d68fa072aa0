// Query explorer: one stream and range (relative ranges allowed), its series chart, its top-K table,
// a rank lookup, and each answer's meta.segments drawn as coloured spans per tier.
import { api, autoStep, errorBox, field, fmtNum, fmtTime, h, lastStream, rememberStream, select, STEPS, table }
  from './api.js';
import { barsChart, chartBox, segmentsChart, seriesChart } from './charts.js';

export const title = 'Query explorer';

const PRESETS = [['now-15m', '15 min'], ['now-1h', '1 h'], ['now-6h', '6 h'], ['now-24h', '24 h'],
  ['now-7d', '7 d'], ['now-30d', '30 d'], ['now-365d', '1 y']];
const AGGS = ['count', 'sum', 'min', 'max', 'avg'];

function metaLine(meta) {
  const tiers = [...new Set(meta.segments.map((s) => s.tier))];
  return h('p', { class: 'muted meta' },
    `${meta.exact ? 'exact' : 'approximate'} · took ${fmtNum(meta.took_ms)} ms · catalog v${meta.catalog_version} · `
    + `${meta.segments.length} segments (${tiers.join(', ') || 'none'})`
    + `${meta.partial ? ` · PARTIAL, missing ${meta.missing.map((m) => m.tier).join(', ')}` : ''}`);
}

function segmentsPanel(name, meta) {
  const box = chartBox('chart segments');
  const panel = h('div', { class: 'segments-panel', dataset: { answer: name, segments: meta.segments.length } },
    h('h4', {}, `${name}: meta.segments`), metaLine(meta), box);
  return [panel, () => segmentsChart(box, meta)];
}

export function mount(root, params) {
  const q = (name, fallback) => params.get(name) || fallback;
  const form = {
    stream: h('input', { name: 'stream', list: 'streams', value: q('stream', lastStream()), required: true }),
    from: h('input', { name: 'from', value: q('from', 'now-1h'), size: 26 }),
    to: h('input', { name: 'to', value: q('to', 'now'), size: 26 }),
    step: select('step', ['auto', ...STEPS.map(([s]) => s)], q('step', 'auto')),
    agg: select('agg', AGGS, q('agg', 'sum')),
    key: h('input', { name: 'key', value: q('key', ''), placeholder: 'all keys' }),
    k: h('input', { name: 'k', type: 'number', min: 1, max: 10000, value: q('k', '10') }),
    by: select('by', ['count', 'sum'], q('by', 'count')),
  };
  const rankKey = h('input', { name: 'rank_key', value: q('rank', ''), placeholder: 'key' });
  const around = h('input', { name: 'around', type: 'number', min: 0, max: 100, value: '3' });
  const presets = PRESETS.map(([from, text]) => h('button', {
    type: 'button', class: 'preset', dataset: { from },
    onclick: () => { form.from.value = from; form.to.value = 'now'; run(); },
  }, text));

  const status = h('div');
  const seriesBox = chartBox('chart series');
  const seriesInfo = h('div');
  const points = h('details', { class: 'points' });
  const topBox = h('div');
  const topChart = chartBox('chart bars');
  const rankBox = h('div');
  const segments = h('div', { class: 'segments' });
  const panels = new Map();

  root.append(
    h('form', { class: 'toolbar explorer-form', onsubmit: (e) => { e.preventDefault(); run(); } },
      field('Stream', form.stream), field('From', form.from), field('To', form.to), field('Step', form.step),
      field('Agg', form.agg), field('Key (series)', form.key), field('k', form.k), field('Top-K by', form.by),
      h('button', { type: 'submit', class: 'run' }, 'Run')),
    h('div', { class: 'presets' }, h('span', { class: 'muted' }, 'Last: '), presets),
    status,
    h('section', {}, h('h3', {}, 'Series'), seriesInfo, seriesBox, points),
    h('section', {}, h('h3', {}, 'Top-K'), h('div', { class: 'split' }, topBox, topChart)),
    h('section', {}, h('h3', {}, 'Rank'),
      h('form', { class: 'toolbar rank-form', onsubmit: (e) => { e.preventDefault(); lookup(); } },
        field('Key', rankKey), field('Around', around), h('button', { type: 'submit' }, 'Look up')), rankBox),
    h('section', {}, h('h3', {}, 'Where each answer came from'),
      h('p', { class: 'muted small' }, 'One span per piece read (meta.segments), coloured by tier and labelled '
        + 'with its granularity; pale spans came from the results cache.'), segments),
  );

  function common() {
    return { stream: form.stream.value.trim(), from: form.from.value.trim(), to: form.to.value.trim() };
  }

  function showSegments(name, meta) {
    const [panel, drawIt] = segmentsPanel(name, meta);
    panels.set(name, panel);
    segments.replaceChildren(...['series', 'topk', 'rank'].filter((n) => panels.has(n)).map((n) => panels.get(n)));
    drawIt();
  }

  function keepInUrl() {
    const p = new URLSearchParams();
    for (const [name, input] of Object.entries(form)) if (input.value) p.set(name, input.value.trim());
    if (rankKey.value.trim()) p.set('rank', rankKey.value.trim());
    history.replaceState(null, '', `#/explore?${p}`);
  }

  async function runSeries() {
    const c = common();
    const step = form.step.value === 'auto' ? autoStep(c.from, c.to) : form.step.value;
    const body = await api('GET', '/v1/query/series', {
      params: { ...c, step, agg: form.agg.value, key: form.key.value.trim() },
    });
    const filled = body.points.filter((p) => p.value !== null);
    seriesInfo.replaceChildren(h('p', { class: 'muted' },
      `${fmtTime(body.from)} → ${fmtTime(body.to)} · step ${body.step} · ${body.points.length} buckets, `
      + `${filled.length} with events`));
    seriesChart(seriesBox, body);
    points.replaceChildren(h('summary', {}, `Points (${body.points.length})`),
      table(['bucket start', body.agg], body.points.map((p) => h('tr', { dataset: { t: p.t, value: p.value ?? '' } },
        h('td', {}, fmtTime(p.t)), h('td', { class: 'num' }, fmtNum(p.value)))), { class: 'series-points' }));
    showSegments('series', body.meta);
  }

  async function runTopk() {
    const body = await api('GET', '/v1/query/topk', { params: { ...common(), k: form.k.value, by: form.by.value } });
    topBox.replaceChildren(h('p', { class: 'muted' }, `${body.items.length} keys by ${body.by} (${body.mode})`),
      table(['rank', 'key', body.by], body.items.map((i) => h('tr', {
        dataset: { rank: i.rank, key: i.key, value: i.value },
        onclick: () => { rankKey.value = i.key; lookup(); },
      }, h('td', { class: 'num' }, i.rank), h('td', {}, i.key), h('td', { class: 'num' }, fmtNum(i.value)))),
      { class: 'topk clickable' }));
    barsChart(topChart, body.items, body.by);
    showSegments('topk', body.meta);
  }

  async function lookup() {
    const key = rankKey.value.trim();
    if (!key || !common().stream) return;
    keepInUrl();
    try {
      const body = await api('GET', '/v1/query/rank', {
        params: { ...common(), key, by: form.by.value, around: around.value },
      });
      rankBox.replaceChildren(
        h('p', { class: 'rank-answer', dataset: { rank: body.rank ?? '', value: body.value ?? '', total: body.total_keys } },
          body.rank === null ? `${key} has no events in this range (${fmtNum(body.total_keys)} keys do).`
            : `${key} is #${body.rank} of ${fmtNum(body.total_keys)} keys with ${body.value === null ? '—' : fmtNum(body.value)} (${form.by.value}).`),
        table(['rank', 'key', form.by.value], body.around.map((n) => h('tr', {
          class: n.key === key ? 'me' : '', dataset: { rank: n.rank, key: n.key, value: n.value },
        }, h('td', { class: 'num' }, n.rank), h('td', {}, n.key), h('td', { class: 'num' }, fmtNum(n.value)))),
        { class: 'around' }));
      showSegments('rank', body.meta);
    } catch (err) {
      rankBox.replaceChildren(errorBox(err));
    }
  }

  async function run() {
    if (!common().stream) { form.stream.focus(); return; }
    keepInUrl();
    rememberStream(common().stream);
    root.dataset.state = 'loading';
    status.replaceChildren();
    panels.clear();
    const results = await Promise.allSettled([runSeries(), runTopk()]);
    const failed = results.filter((r) => r.status === 'rejected');
    status.replaceChildren(...failed.map((r) => errorBox(r.reason)));
    if (rankKey.value.trim()) await lookup();
    root.dataset.state = failed.length ? 'error' : 'ready';
  }

  if (form.stream.value && params.has('stream')) run();
  else root.dataset.state = 'ready';
  return () => {};
}

// Live leaderboard: the top-K of a stream over a sliding window (now-W .. now), refreshed every few seconds.
import { api, errorBox, field, fmtNum, fmtTime, h, lastStream, rememberStream, select, table } from './api.js';
import { barsChart, chartBox } from './charts.js';

export const title = 'Live leaderboard';

const WINDOWS = [['now-5m', 'last 5 min'], ['now-15m', 'last 15 min'], ['now-1h', 'last hour'],
  ['now-6h', 'last 6 h'], ['now-24h', 'last 24 h'], ['now-7d', 'last 7 days'], ['now-30d', 'last 30 days']];
const INTERVALS = [['1000', '1 s'], ['3000', '3 s'], ['5000', '5 s'], ['10000', '10 s']];

export function mount(root, params) {
  const stream = h('input', { name: 'stream', list: 'streams', value: params.get('stream') || lastStream(),
    placeholder: 'stream', required: true });
  const win = select('window', WINDOWS, params.get('window') || 'now-1h');
  const k = h('input', { name: 'k', type: 'number', min: 1, max: 100, value: params.get('k') || '10' });
  const by = select('by', ['count', 'sum'], params.get('by') || 'count');
  const every = select('every', INTERVALS, params.get('every') || '3000');
  const pause = h('button', { type: 'button', class: 'pause' }, 'Pause');
  const status = h('div');
  const info = h('p', { class: 'muted live-info' });
  const chart = chartBox('chart bars');
  const rows = h('div');
  root.append(h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); restart(); } },
    field('Stream', stream), field('Window', win), field('k', k), field('By', by), field('Every', every),
    h('button', { type: 'submit' }, 'Show'), pause), status, info, h('div', { class: 'split' }, rows, chart));

  let timer = null;
  let paused = false;
  let busy = false;
  let previous = new Map();

  async function tick() {
    const name = stream.value.trim();
    if (!name || busy || paused) return;
    busy = true;
    try {
      const body = await api('GET', '/v1/query/topk', {
        params: { stream: name, from: win.value, to: 'now', k: k.value, by: by.value },
      });
      rememberStream(name);
      status.replaceChildren();
      const ranks = new Map(body.items.map((i) => [i.key, i.rank]));
      rows.replaceChildren(table(['rank', 'key', by.value, ''], body.items.map((i) => {
        const before = previous.get(i.key);
        const move = before === undefined ? 'new' : before > i.rank ? '▲' : before < i.rank ? '▼' : '';
        return h('tr', { dataset: { key: i.key, value: i.value, rank: i.rank } },
          h('td', { class: 'num' }, i.rank), h('td', {}, i.key), h('td', { class: 'num' }, fmtNum(i.value)),
          h('td', { class: `move ${move === 'new' ? 'new' : ''}` }, move));
      }), { class: 'leaderboard' }));
      previous = ranks;
      barsChart(chart, body.items, body.by);
      info.textContent = `${body.items.length} keys · ${fmtTime(body.from)} → ${fmtTime(body.to)} · `
        + `took ${fmtNum(body.meta.took_ms)} ms · updated ${fmtTime(Date.now())}`;
      info.dataset.updated = String(Date.now());
      root.dataset.state = 'ready';
    } catch (err) {
      status.replaceChildren(errorBox(err));
      root.dataset.state = 'error';
    } finally {
      busy = false;
    }
  }

  function restart() {
    clearInterval(timer);
    previous = new Map();
    timer = setInterval(tick, Number(every.value));
    tick();
  }

  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) tick();
  });
  every.addEventListener('change', restart);
  if (stream.value) restart();
  else root.dataset.state = 'ready';
  return () => clearInterval(timer);
}

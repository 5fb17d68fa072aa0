// Compliance reports: create (POST /v1/reports), follow progress (GET /v1/reports/{id}), download.
// The API has no list of reports, so the page keeps the ids it created (or was given) in sessionStorage.
import { api, errorBox, field, fmtNum, fmtTime, h, lastStream, select, table } from './api.js';

export const title = 'Reports';

const IDS_KEY = 'tierstore.reports';
const POLL_MS = 1000;

function ids() { return JSON.parse(sessionStorage.getItem(IDS_KEY) || '[]'); }
function keepId(id) { sessionStorage.setItem(IDS_KEY, JSON.stringify([id, ...ids().filter((x) => x !== id)].slice(0, 50))); }
function dropId(id) { sessionStorage.setItem(IDS_KEY, JSON.stringify(ids().filter((x) => x !== id))); }

async function download(report, button) {
  button.disabled = true;
  try {
    const resp = await api('GET', `/v1/reports/${encodeURIComponent(report.id)}/download`, { raw: true });
    const url = URL.createObjectURL(await resp.blob());
    const a = h('a', { href: url, download: `report-${report.id}.${report.format}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } finally {
    button.disabled = false;
  }
}

export function mount(root) {
  const form = {
    stream: h('input', { name: 'stream', list: 'streams', value: lastStream(), required: true }),
    from: h('input', { name: 'from', value: 'now-24h', size: 26 }),
    to: h('input', { name: 'to', value: 'now', size: 26 }),
    kind: select('kind', ['totals', 'events'], 'totals'),
    format: select('format', ['csv', 'json', 'parquet'], 'csv'),
  };
  const lookupId = h('input', { name: 'report_id', placeholder: 'report id', size: 34 });
  const status = h('div');
  const list = h('div');
  const known = new Map(); // id -> last status document (or {id, missing: true})
  let timer = null;

  root.append(
    h('form', { class: 'toolbar report-form', onsubmit: (e) => { e.preventDefault(); create(); } },
      field('Stream', form.stream), field('From', form.from), field('To', form.to), field('Kind', form.kind),
      field('Format', form.format), h('button', { type: 'submit', class: 'create' }, 'Create report')),
    h('p', { class: 'muted small' }, 'Reports are exact to the millisecond and read raw events from warm, cold '
      + 'and archive (events still in the hot log appear after the next flush).'),
    h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); add(lookupId.value.trim()); } },
      field('Open a report by id', lookupId), h('button', { type: 'submit' }, 'Open')),
    status, list,
  );

  function render() {
    const rows = ids().filter((id) => known.has(id)).map((id) => {
      const r = known.get(id);
      if (r.missing) {
        return h('tr', { dataset: { id } }, h('td', {}, h('code', {}, id)), h('td', { colspan: 6, class: 'muted' }, r.missing),
          h('td', {}, h('button', { type: 'button', onclick: () => { dropId(id); known.delete(id); render(); } }, 'Forget')));
      }
      const pct = Math.round(r.progress * 100);
      const bar = h('span', { class: 'bar' }, h('span'));
      bar.firstChild.style.width = `${pct}%`;
      const button = h('button', { type: 'button', class: 'download', disabled: r.status !== 'done' }, 'Download');
      button.addEventListener('click', () => download(r, button).catch((err) => status.replaceChildren(errorBox(err))));
      return h('tr', { dataset: { id, status: r.status, rows: r.rows ?? '' } },
        h('td', {}, h('code', {}, id.slice(0, 12)), h('div', { class: 'muted small' }, fmtTime(r.requested))),
        h('td', {}, r.stream, h('div', { class: 'muted small' }, `${fmtTime(r.from)} → ${fmtTime(r.to)}`)),
        h('td', {}, `${r.kind} · ${r.format}`),
        h('td', {}, h('span', { class: `badge ${r.status}` }, r.status), ' ', bar, ` ${pct}%`,
          r.error ? h('div', { class: 'error small' }, r.error) : null),
        h('td', { class: 'num' }, fmtNum(r.rows)),
        h('td', {}, r.sha256 ? h('code', { title: r.sha256 }, `${r.sha256.slice(0, 12)}…`) : '—',
          r.manifest?.length ? h('details', {}, h('summary', {}, `${r.manifest.length} source${r.manifest.length === 1 ? '' : 's'}`),
            h('ul', {}, r.manifest.map((m) => h('li', {}, `${m.tier}: ${m.source} (${fmtNum(m.rows)} rows)`)))) : null),
        h('td', {}, button));
    });
    list.replaceChildren(rows.length
      ? table(['report', 'stream and range', 'kind', 'status', 'rows', 'sha256 / sources', ''], rows, { class: 'reports' })
      : h('p', { class: 'muted empty' }, 'No reports created in this tab yet.'));
  }

  async function refresh(id) {
    try {
      known.set(id, await api('GET', `/v1/reports/${encodeURIComponent(id)}`));
    } catch (err) {
      if (err.status === 404) known.set(id, { id, missing: 'not found for these credentials' });
      else throw err;
    }
  }

  async function poll() {
    const pending = ids().filter((id) => !known.has(id) || ['queued', 'running'].includes(known.get(id).status));
    try {
      await Promise.all(pending.map(refresh));
      render();
      root.dataset.state = 'ready';
    } catch (err) {
      status.replaceChildren(errorBox(err));
      root.dataset.state = 'error';
    }
    const busy = ids().some((id) => ['queued', 'running'].includes(known.get(id)?.status));
    timer = busy ? setTimeout(poll, POLL_MS) : null;
  }

  function add(id) {
    if (!id) return;
    keepId(id);
    known.delete(id);
    clearTimeout(timer);
    poll();
  }

  async function create() {
    status.replaceChildren();
    try {
      const body = Object.fromEntries(Object.entries(form).map(([k, input]) => [k, input.value.trim()]));
      const { id } = await api('POST', '/v1/reports', { body });
      add(id);
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  }

  poll();
  return () => clearTimeout(timer);
}

// Alerts (issue 14, part 4): the tenant's rules (GET /v1/alerts, admin) with their state, last
// transition and last notifications (GET /v1/alerts/{id}), a form to create a threshold rule
// (POST /v1/alerts) and delete (DELETE /v1/alerts/{id}, a second click confirms). The `alerts` job
// evaluates the rules; this view re-reads them every REFRESH_MS.
import { api, errorBox, field, fmtNum, fmtTime, h, lastStream, rememberStream, select, table } from './api.js';

export const title = 'Alerts';

const REFRESH_MS = 5000;
const AGGREGATES = ['count', 'sum', 'avg', 'min', 'max'];
const COMPARISONS = ['>', '>=', '<', '<='];

function condition(r) {
  const what = `${r.aggregate} of ${r.key === null ? 'every key' : r.key} over ${r.window}`;
  return r.kind === 'rank' ? `${r.key} in the top ${r.top_n} by ${r.aggregate} over ${r.window}`
    : `${what} ${r.comparison} ${fmtNum(r.threshold)}`;
}

function notifications(list) {
  if (!list.length) return h('span', { class: 'muted' }, 'none yet');
  return h('ul', { class: 'notifications' }, list.slice(0, 3).map((n) => {
    const last = n.attempts[n.attempts.length - 1];
    const outcome = last ? (last.status_code ?? last.error ?? '') : '';
    return h('li', { dataset: { event: n.event, status: n.status, attempts: n.attempts.length } },
      `${n.event} `, h('span', { class: `badge ${n.status === 'sent' ? 'ok' : n.status}` }, n.status),
      ` ${n.attempts.length} attempt${n.attempts.length === 1 ? '' : 's'}${outcome !== '' ? ` (${outcome})` : ''}`,
      h('div', { class: 'muted small' }, fmtTime(n.created)));
  }));
}

export function mount(root) {
  const form = {
    name: h('input', { name: 'name', size: 16, placeholder: 'optional' }),
    stream: h('input', { name: 'stream', list: 'streams', value: lastStream(), required: true }),
    key: h('input', { name: 'key', size: 12, placeholder: 'every key' }),
    aggregate: select('aggregate', AGGREGATES, 'count'),
    window: h('input', { name: 'window', value: '5m', size: 6, required: true }),
    comparison: select('comparison', COMPARISONS, '>'),
    threshold: h('input', { name: 'threshold', type: 'number', step: 'any', required: true, size: 8 }),
    webhook_url: h('input', { name: 'webhook_url', type: 'url', size: 34, required: true,
      placeholder: 'https://example.net/hook' }),
  };
  const status = h('div');
  const list = h('div');
  const armed = new Set(); // rule ids whose Delete was clicked once (kept across refreshes)
  let timer = null;
  let alive = true;

  root.append(
    h('form', { class: 'toolbar alert-form', onsubmit: (e) => { e.preventDefault(); create(); } },
      field('Name', form.name), field('Stream', form.stream), field('Key', form.key),
      field('Aggregate', form.aggregate), field('Window', form.window), field('Comparison', form.comparison),
      field('Threshold', form.threshold), field('Webhook URL', form.webhook_url),
      h('button', { type: 'submit', class: 'create' }, 'Create rule')),
    h('p', { class: 'muted small' }, 'A threshold rule compares the aggregate over the last window (of one key, or '
      + 'every key) with the threshold each time the alerts job runs; each firing and resolved transition POSTs '
      + 'one JSON notification to the webhook.'),
    h('div', { class: 'toolbar' }, h('button', { type: 'button', onclick: () => load() }, 'Refresh')),
    status, list,
  );

  async function create() {
    status.replaceChildren();
    const body = { stream: form.stream.value.trim(), aggregate: form.aggregate.value, window: form.window.value.trim(),
      comparison: form.comparison.value, threshold: Number(form.threshold.value), webhook_url: form.webhook_url.value.trim() };
    if (form.name.value.trim()) body.name = form.name.value.trim();
    if (form.key.value.trim()) body.key = form.key.value.trim();
    try {
      const rule = await api('POST', '/v1/alerts', { body });
      rememberStream(rule.stream);
      status.replaceChildren(h('div', { class: 'notice' }, `created rule ${rule.id}`));
      load();
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  }

  async function remove(rule, button) {
    if (!armed.has(rule.id)) {
      armed.add(rule.id);
      button.dataset.armed = '1';
      button.textContent = 'Click again to delete';
      return;
    }
    armed.delete(rule.id);
    button.disabled = true;
    try {
      await api('DELETE', `/v1/alerts/${encodeURIComponent(rule.id)}`);
      status.replaceChildren(h('div', { class: 'notice' }, `deleted rule ${rule.id}`));
      load();
    } catch (err) {
      status.replaceChildren(errorBox(err));
      button.disabled = false;
    }
  }

  function row(r) {
    const del = h('button', { type: 'button', class: 'delete danger', dataset: armed.has(r.id) ? { armed: '1' } : {} },
      armed.has(r.id) ? 'Click again to delete' : 'Delete');
    del.addEventListener('click', () => remove(r, del));
    const badge = r.state === 'firing' ? 'bad' : 'ok';
    return h('tr', { dataset: { id: r.id, state: r.state, transitions: r.transitions } },
      h('td', {}, h('code', {}, String(r.id)), r.name ? h('div', {}, r.name) : null,
        r.enabled ? null : h('div', { class: 'muted small' }, 'disabled')),
      h('td', {}, r.stream, h('div', { class: 'muted small' }, condition(r))),
      h('td', { class: 'state' }, h('span', { class: `badge ${badge}` }, r.state),
        h('div', { class: 'muted small' }, `value ${fmtNum(r.last_value)}${r.last_rank ? ` · rank ${r.last_rank}` : ''}`)),
      h('td', {}, fmtTime(r.state_since),
        h('div', { class: 'muted small' }, `${r.transitions} transition${r.transitions === 1 ? '' : 's'} · evaluated `
          + `${fmtTime(r.last_evaluated)}`)),
      h('td', {}, notifications(r.notifications)),
      h('td', {}, h('code', { class: 'small' }, r.webhook_url)),
      h('td', { class: 'actions' }, del));
  }

  async function load() {
    clearTimeout(timer);
    try {
      const rules = await api('GET', '/v1/alerts');
      const detailed = await Promise.all(rules.map((r) => api('GET', `/v1/alerts/${encodeURIComponent(r.id)}`)
        .catch((err) => { if (err.status === 404) return null; throw err; })));
      if (!alive) return;
      const shown = detailed.filter((r) => r !== null);
      list.replaceChildren(shown.length
        ? table(['rule', 'stream and condition', 'state', 'last transition', 'last notifications', 'webhook', ''],
          shown.map(row), { class: 'alerts' })
        : h('p', { class: 'muted empty' }, 'No alert rules for this tenant.'));
      root.dataset.state = 'ready';
    } catch (err) {
      if (!alive) return;
      status.replaceChildren(errorBox(err));
      root.dataset.state = 'error';
    }
    if (alive) timer = setTimeout(load, REFRESH_MS);
  }

  load();
  return () => { alive = false; clearTimeout(timer); };
}

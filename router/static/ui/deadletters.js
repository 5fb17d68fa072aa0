// Dead letters: events a tier refused after ingest accepted them (GET /v1/deadletters), with replay
// and delete (admin, audited). Delete asks for a second click.
import { api, errorBox, fmtNum, fmtTime, h, settle, table } from './api.js';

export const title = 'Dead letters';

export function mount(root) {
  const status = h('div');
  const list = h('div');
  root.append(h('div', { class: 'toolbar' }, h('button', { type: 'button', onclick: () => load() }, 'Refresh')),
    status, list);

  async function act(dead, action, button) {
    if (action === 'delete' && button.dataset.armed !== '1') {
      button.dataset.armed = '1';
      button.textContent = 'Click again to delete';
      return;
    }
    button.disabled = true;
    try {
      const path = `/v1/deadletters/${encodeURIComponent(dead.id)}`;
      const done = action === 'replay' ? await api('POST', `${path}/replay`) : await api('DELETE', path);
      status.replaceChildren(h('div', { class: 'notice' },
        `${done.status} ${dead.id}: ${fmtNum(done.events)} events${done.entry ? ` (log entry ${done.entry})` : ''}`));
      load();
    } catch (err) {
      status.replaceChildren(errorBox(err));
      button.disabled = false;
    }
  }

  function load() {
    return settle(root, status, async () => {
      const found = await api('GET', '/v1/deadletters');
      list.replaceChildren(found.length ? table(['id', 'stream', 'events', 'reason', 'first seen', ''], found.map((d) => {
        const replay = h('button', { type: 'button', class: 'replay' }, 'Replay');
        const del = h('button', { type: 'button', class: 'delete danger' }, 'Delete');
        replay.addEventListener('click', () => act(d, 'replay', replay));
        del.addEventListener('click', () => act(d, 'delete', del));
        const keys = [...new Set(d.events.map((e) => e.key))].slice(0, 5);
        return h('tr', { dataset: { id: d.id } },
          h('td', {}, h('code', {}, d.id), h('div', { class: 'muted small' }, `entry ${d.entry}`)),
          h('td', {}, d.stream),
          h('td', { class: 'num' }, fmtNum(d.count),
            h('div', { class: 'muted small' }, `keys ${keys.join(', ')}${d.events_truncated ? ' …' : ''}`)),
          h('td', {}, d.reason, h('details', {}, h('summary', {}, 'per event'),
            h('ul', {}, d.events.slice(0, 20).map((e, i) => h('li', {}, `${e.key} @ ${fmtTime(e.ts)}: ${d.reasons[i] ?? ''}`))))),
          h('td', {}, fmtTime(d.first_seen)),
          h('td', { class: 'actions' }, replay, del));
      }), { class: 'deadletters' }) : h('p', { class: 'muted empty' }, 'No dead letters: every accepted event is where it belongs.'));
    });
  }

  load();
  return () => {};
}

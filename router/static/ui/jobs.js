// Jobs: last runs, next runs, lags (GET /v1/jobs), and "run now" (POST /v1/jobs/{name}/run, admin).
import { api, errorBox, field, fmtSeconds, fmtTime, h, settle } from './api.js';

const REFRESH_MS = 5000;
const POLL_MS = 700;

export const title = 'Jobs';

function runCell(run) {
  if (!run) return h('td', { class: 'muted' }, 'never');
  const took = run.started && run.finished ? (Date.parse(run.finished) - Date.parse(run.started)) / 1000 : null;
  return h('td', {},
    h('span', { class: `badge ${run.status}` }, run.status),
    ` #${run.run_id} `, h('span', { class: 'muted' }, fmtTime(run.started)),
    took === null ? null : h('span', { class: 'muted' }, ` (${fmtSeconds(took)})`),
    run.error ? h('div', { class: 'error small' }, run.error) : null);
}

export function mount(root) {
  const asOf = h('input', { name: 'as_of', placeholder: 'now (optional: now-1h, RFC 3339, epoch ms)', size: 36 });
  const status = h('div');
  const list = h('div');
  const runs = new Map(); // job name -> {run_id, status, progress} of a run started here
  let stopped = false;
  root.append(h('div', { class: 'toolbar' }, field('Run as of', asOf),
    h('button', { type: 'button', onclick: () => load() }, 'Refresh')), status, list);

  async function follow(name, runId) {
    while (!stopped) {
      try {
        const run = await api('GET', `/v1/jobs/runs/${encodeURIComponent(runId)}`);
        runs.set(name, run);
        render(lastJobs);
        if (run.status !== 'queued' && run.status !== 'running') { load(); return; }
      } catch (err) {
        status.replaceChildren(errorBox(err));
        return;
      }
      await new Promise((r) => { setTimeout(r, POLL_MS); });
    }
  }

  async function runNow(name, button) {
    button.disabled = true;
    try {
      const body = asOf.value.trim() ? { as_of: asOf.value.trim() } : {};
      const { run_id: runId } = await api('POST', `/v1/jobs/${encodeURIComponent(name)}/run`, { body });
      runs.set(name, { run_id: runId, status: 'queued', progress: 0 });
      status.replaceChildren();
      render(lastJobs);
      follow(name, runId);
    } catch (err) {
      status.replaceChildren(errorBox(err));
    } finally {
      button.disabled = false;
    }
  }

  function mine(name) {
    const run = runs.get(name);
    if (!run) return h('td');
    const pct = Math.round((run.progress || 0) * 100);
    const bar = h('span', { class: 'bar' }, h('span'));
    bar.firstChild.style.width = `${pct}%`;
    return h('td', { class: 'mine', dataset: { runId: run.run_id, status: run.status } },
      `#${run.run_id} `, h('span', { class: `badge ${run.status}` }, run.status), ' ', bar, ` ${pct}%`);
  }

  // Rows and their buttons are made once per job and updated in place, so a refresh never replaces
  // a button under the pointer.
  let lastJobs = [];
  const rows = new Map(); // job name -> {tr, buttonCell}
  const body = h('tbody');
  list.append(h('table', { class: 'jobs' }, h('thead', {}, h('tr', {},
    ['job', 'schedule', 'last run', 'next run', 'lag', 'run now', 'this page\'s run'].map((x) => h('th', {}, x)))), body));

  function row(name) {
    if (!rows.has(name)) {
      const button = h('button', { type: 'button', class: 'run-now', dataset: { job: name } }, 'Run now');
      button.addEventListener('click', () => runNow(name, button));
      rows.set(name, { tr: h('tr', { dataset: { job: name } }), buttonCell: h('td', {}, button) });
    }
    return rows.get(name);
  }

  function render(jobs) {
    lastJobs = jobs;
    const trs = jobs.map((j) => {
      const { tr, buttonCell } = row(j.name);
      const late = j.lag_seconds !== null && j.lag_seconds > 0;
      const cells = [
        h('td', {}, h('strong', {}, j.name), j.description ? h('div', { class: 'muted small' }, j.description) : null),
        h('td', {}, j.schedule === null || j.schedule === undefined ? 'on demand'
          : typeof j.schedule === 'string' ? j.schedule : JSON.stringify(j.schedule)),
        runCell(j.last_run),
        h('td', {}, fmtTime(j.next_run)),
        h('td', { class: `num${late ? ' late' : ''}` }, fmtSeconds(j.lag_seconds)),
        buttonCell,
        mine(j.name)];
      cells.forEach((cell, i) => {
        if (tr.children[i] !== cell) {
          if (tr.children[i]) tr.replaceChild(cell, tr.children[i]);
          else tr.append(cell);
        }
      });
      return tr;
    });
    if (trs.length !== body.children.length || trs.some((tr, i) => body.children[i] !== tr)) body.replaceChildren(...trs);
  }

  function load() {
    return settle(root, status, async () => {
      render(await api('GET', '/v1/jobs'));
    });
  }

  load();
  const timer = setInterval(load, REFRESH_MS);
  return () => { stopped = true; clearInterval(timer); };
}

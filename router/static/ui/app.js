// The page: asks for credentials, then shows one view per hash route (#/tiers, #/jobs, #/live,
// #/explore, #/reports, #/deadletters, #/alerts); /ui/<view> opens that view too.
import { credentials, h, loadStreams } from './api.js';
import * as alerts from './alerts.js';
import * as deadletters from './deadletters.js';
import * as explore from './explore.js';
import * as jobs from './jobs.js';
import * as live from './live.js';
import * as reports from './reports.js';
import * as tiers from './tiers.js';

const VIEWS = { tiers, jobs, live, explore, reports, deadletters, alerts };
const main = document.getElementById('view');
const login = document.getElementById('login');
const who = document.getElementById('who');
let unmount = () => {};

function route() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [name, query] = hash.split('?');
  if (VIEWS[name]) return { name, params: new URLSearchParams(query || '') };
  const fromPath = location.pathname.replace(/^\/ui\/?/, '').split('/')[0];
  return { name: VIEWS[fromPath] ? fromPath : 'tiers', params: new URLSearchParams() };
}

function showWho() {
  const token = credentials.token;
  who.replaceChildren(
    token ? `credentials …${token.slice(-4)}` : 'no credentials (auth disabled)',
    ' ', h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'),
  );
}

function signOut() {
  credentials.clear();
  render();
}

function askForCredentials(message) {
  unmount();
  unmount = () => {};
  main.replaceChildren();
  document.body.dataset.view = 'login';
  who.replaceChildren();
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', size: 48,
    placeholder: 'API key or JWT' });
  login.replaceChildren(h('form', { class: 'login', onsubmit: (e) => {
    e.preventDefault();
    if (!input.value.trim()) return;
    credentials.set(input.value.trim());
    render();
  } },
  h('h2', {}, 'Sign in'),
  h('p', {}, 'The dashboard calls the tierstore API with your API key or JWT (sent as Authorization: Bearer, '
    + 'kept in this tab only). Jobs, tiers and dead letters need the admin scope; queries and reports need query.'),
  message ? h('div', { class: 'error' }, message) : null,
  h('div', { class: 'toolbar' }, input, h('button', { type: 'submit' }, 'Use'),
    h('button', { type: 'button', class: 'secondary', onclick: () => { credentials.set(''); render(); } },
      'No credentials (auth disabled)'))));
  login.hidden = false;
  input.focus();
}

function render() {
  if (credentials.token === null) { askForCredentials(); return; }
  login.hidden = true;
  login.replaceChildren();
  showWho();
  const { name, params } = route();
  unmount();
  const view = VIEWS[name];
  document.body.dataset.view = name;
  document.title = `${view.title} · tierstore`;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === name);
  const root = h('div', { class: `view view-${name}`, dataset: { state: 'loading' } }, h('h2', {}, view.title));
  main.replaceChildren(root);
  unmount = view.mount(root, params) || (() => {});
  loadStreams();
}

window.addEventListener('hashchange', render);
window.addEventListener('tierstore:unauthorized', () => {
  credentials.clear();
  askForCredentials('The API refused these credentials (401): sign in again.');
});
render();

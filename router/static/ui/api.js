// The page's link to the /v1 API: credentials (sessionStorage), fetch, errors, times, formatting,
// and a tiny DOM builder (text is always set as text, never parsed as HTML: keys are user data).

const TOKEN_KEY = 'tierstore.token';
const STREAMS_KEY = 'tierstore.streams';

export const credentials = {
  // null: not chosen yet; '': no credentials (auth disabled); otherwise an API key or a JWT
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set(token) { sessionStorage.setItem(TOKEN_KEY, token); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); },
};

export class ApiError extends Error {
  constructor(status, error) {
    const code = error?.code || `http_${status}`;
    super(`${status} ${code}: ${error?.message || 'request failed'}`);
    this.status = status;
    this.code = code;
    this.details = error?.details || [];
  }
}

// method, path ('/v1/...'), {params, body, raw}: the parsed JSON answer (or the Response with raw).
// Throws ApiError for a non-2xx answer (401 also tells the page to ask for credentials again).
export async function api(method, path, { params, body, raw } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const headers = { Accept: 'application/json' };
  const token = credentials.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(url, {
    method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!resp.ok) {
    let error = null;
    try { error = (await resp.json()).error; } catch { /* not the JSON error shape */ }
    if (resp.status === 401) window.dispatchEvent(new CustomEvent('tierstore:unauthorized'));
    throw new ApiError(resp.status, error);
  }
  return raw ? resp : resp.json();
}

// ---- streams the inputs offer (the registry when the router has one, and those used here) ------

let documentPaths = null;

async function apiPaths() {
  if (documentPaths === null) {
    try {
      const doc = await (await fetch('/openapi.json', { cache: 'no-store' })).json();
      documentPaths = doc.paths || {};
    } catch {
      documentPaths = {};
    }
  }
  return documentPaths;
}

export function rememberStream(stream) {
  if (!stream) return;
  const seen = JSON.parse(sessionStorage.getItem(STREAMS_KEY) || '[]').filter((s) => s !== stream);
  sessionStorage.setItem(STREAMS_KEY, JSON.stringify([stream, ...seen].slice(0, 20)));
}

export function lastStream() {
  return JSON.parse(sessionStorage.getItem(STREAMS_KEY) || '[]')[0] || '';
}

// Fill <datalist id="streams"> with known stream names.
export async function loadStreams() {
  const list = document.getElementById('streams');
  const names = new Set(JSON.parse(sessionStorage.getItem(STREAMS_KEY) || '[]'));
  if ((await apiPaths())['/v1/streams']?.get) {
    try {
      for (const s of await api('GET', '/v1/streams')) names.add(s.stream);
    } catch { /* the registry is optional for the inputs */ }
  }
  list.replaceChildren(...[...names].sort().map((n) => h('option', { value: n })));
}

// ---- times ------------------------------------------------------------------------------------

const UNIT_MS = { s: 1e3, m: 6e4, h: 36e5, d: 864e5, w: 6048e5 };
export const MINUTE = 6e4;
export const HOUR = 36e5;
export const DAY = 864e5;

// A time as the API takes it (RFC 3339, epoch ms, now[-Nu]) -> epoch ms, or null.
export function parseTime(text, now = Date.now()) {
  const s = String(text ?? '').trim();
  const rel = /^now(?:([+-])(\d+)([smhdw]))?$/.exec(s);
  if (rel) return rel[1] ? now + (rel[1] === '-' ? -1 : 1) * Number(rel[2]) * UNIT_MS[rel[3]] : now;
  if (/^-?\d+$/.test(s)) return Number(s);
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : t;
}

export const STEPS = [['1m', MINUTE], ['5m', 5 * MINUTE], ['15m', 15 * MINUTE], ['1h', HOUR],
  ['6h', 6 * HOUR], ['1d', DAY], ['1w', 7 * DAY], ['1mo', 30 * DAY]];

// The finest step giving at most `points` buckets over [from, to).
export function autoStep(from, to, points = 240) {
  const f = parseTime(from);
  const t = parseTime(to);
  if (f === null || t === null || t <= f) return '1h';
  return (STEPS.find(([, ms]) => (t - f) / ms <= points) || STEPS[STEPS.length - 1])[0];
}

// Boundaries of -inf / +inf come as years 0001 / 9999.
export function finite(ms) {
  return ms !== null && ms > Date.UTC(1900, 0, 1) && ms < Date.UTC(9000, 0, 1);
}

// ---- formatting -------------------------------------------------------------------------------

export function fmtTime(value) {
  if (value === null || value === undefined) return '—';
  const ms = typeof value === 'number' ? value : Date.parse(value);
  if (Number.isNaN(ms)) return String(value);
  if (ms <= Date.UTC(1900, 0, 1)) return '−∞';
  if (ms >= Date.UTC(9000, 0, 1)) return '+∞';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.000Z$/, 'Z').replace(/\.(\d{3})Z$/, '.$1Z');
}

export function fmtNum(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v !== 'number') return String(v);
  return Number.isInteger(v) ? v.toLocaleString('en-US') : v.toLocaleString('en-US', { maximumFractionDigits: 6 });
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return '—';
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

// ---- DOM --------------------------------------------------------------------------------------

// h('tr', {class, dataset, onclick, ...}, ...children): strings become text nodes.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value' || k === 'checked' || k === 'disabled') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function errorBox(err) {
  return h('div', { class: 'error', role: 'alert' }, err instanceof ApiError ? err.message : `Error: ${err.message || err}`,
    err.details?.length ? h('code', {}, ` ${JSON.stringify(err.details)}`) : null);
}

// One load step of a view: root.dataset.state becomes 'ready' when `work` resolves, else 'error'
// with the error shown in `status` (the tests wait on that state). Resolves either way.
export async function settle(root, status, work) {
  try {
    await work();
    root.dataset.state = 'ready';
  } catch (err) {
    status.replaceChildren(errorBox(err));
    root.dataset.state = 'error';
  }
}

export function table(headers, rows, attrs = {}) {
  return h('table', attrs, h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))), h('tbody', {}, rows));
}

export function field(label, input) {
  return h('label', { class: 'field' }, h('span', {}, label), input);
}

export function select(name, options, value) {
  return h('select', { name }, options.map((o) => {
    const [v, text] = Array.isArray(o) ? o : [o, o];
    return h('option', { value: v, selected: v === value }, text);
  }));
}

export const TIER_COLORS = { archive: '#7d5ba6', cold: '#3f88c5', warm: '#f0a202', hot: '#d7263d' };
export const TIERS = ['archive', 'cold', 'warm', 'hot'];

// The REST API v1 from the browser: the bearer token (sessionStorage, gone
// when the tab closes), JSON calls with the API's error shape, the progress
// stream read with fetch (so the token travels in the Authorization header,
// never in a URL) and downloads saved as blobs for the same reason.
import { t, lang } from '/assets/i18n.js';

const TOKEN = 'gradeflow.token';

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN, value.trim());
}

export function signOut() {
  sessionStorage.removeItem(TOKEN);
}

// The token's payload, decoded for display only (the API verifies it).
export function claims(raw = token()) {
  if (!raw) return null;
  const parts = raw.trim().split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    if (!payload || typeof payload !== 'object') return null;
    payload.roles = Array.isArray(payload.roles) ? payload.roles : [];
    return payload;
  } catch {
    return null;
  }
}

export function expired(c = claims()) {
  return !c || (typeof c.exp === 'number' && c.exp * 1000 < Date.now());
}

// The roles a token grants, with `central` standing for every other one.
export function hasRole(role, c = claims()) {
  return !!c && c.roles.some((g) => g.role === role || g.role === 'central');
}

// An API refusal: status, code, the message in the UI's language, details.
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    const msg = (lang() === 'vi' ? e.message_vi || e.message : e.message || e.message_vi) ||
      t('error.http', { status });
    super(msg);
    this.status = status;
    this.code = e.code || 'http_' + status;
    this.details = e.details || {};
  }
}

// 128 random bits as hex (crypto.randomUUID exists only in secure
// contexts; a portal reached over plain http on a LAN is not one).
function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function headers(extra = {}) {
  const h = { Accept: 'application/json', ...extra };
  const tok = token();
  if (tok) h.Authorization = 'Bearer ' + tok;
  return h;
}

async function failure(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (res.status === 401) {
    document.dispatchEvent(new CustomEvent('gradeflow:unauthorized'));
  }
  return new ApiError(res.status, body);
}

async function call(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
    // A retry of the same submission (double click, flaky network) changes
    // nothing twice.
    init.headers['Idempotency-Key'] = 'ui-' + randomKey();
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, { error: { code: 'network', message: t('error.network', {}, 'en'), message_vi: t('error.network', {}, 'vi') } });
  }
  if (!res.ok) throw await failure(res);
  if (res.status === 204) return null;
  return res.json();
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body);

// Cached org lookups (code and name for ids the API answers with).
const orgs = new Map();
export function org(id) {
  if (!id) return Promise.resolve(null);
  if (!orgs.has(id)) {
    orgs.set(id, get('/api/v1/orgs/' + encodeURIComponent(id)).catch(() => null));
  }
  return orgs.get(id);
}

// Reads a Server-Sent Events response through fetch, calling
// `onEvent(type, data)` per event; reconnects after a pause when the stream
// ends or breaks, until `signal` aborts. `onState` hears 'open' / 'retry'.
export async function stream(path, onEvent, signal, onState = () => {}) {
  while (!signal.aborted) {
    try {
      const res = await fetch(path, { headers: headers({ Accept: 'text/event-stream' }), signal });
      if (!res.ok) throw await failure(res);
      onState('open');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n/g, '\n');
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let type = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) type = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (data.length) onEvent(type, data.join('\n'));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && (e.status === 401 || e.status === 403 || e.status === 404)) {
        onState('failed', e);
        return;
      }
    }
    if (signal.aborted) return;
    onState('retry');
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// Downloads `path` with the token and saves it under the server's file name.
export async function download(path, fallbackName) {
  const res = await fetch(path, { headers: headers({ Accept: '*/*' }) });
  if (!res.ok) throw await failure(res);
  const blob = await res.blob();
  const cd = res.headers.get('Content-Disposition') || '';
  const m = /filename="?([^";]+)"?/.exec(cd);
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = m ? m[1] : fallbackName;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  return a.download;
}

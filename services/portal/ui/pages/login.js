// Đăng nhập: paste a bearer token; or, at /ui/callback, take the token an
// identity provider's redirect carries in the URL fragment
// (`#access_token=…`, see docs/ui.md). The payload is decoded here for
// display only; the first API call verifies the token.
import { t } from '/assets/i18n.js';
import { claims, expired, setToken, signOut, get, org } from '/assets/api.js';
import { esc, errorBox, show } from '/assets/dom.js';
import { home } from '/assets/app.js';

function next(c) {
  const n = new URLSearchParams(location.search).get('next');
  return n && n.startsWith('/ui/') ? n : home(c);
}

// Checks the token against the API (any read within the first grant).
async function verify(c) {
  const g = c.roles[0];
  if (!g) throw new Error(t('login.no_roles'));
  await get('/api/v1/orgs/' + encodeURIComponent(g.org));
}

export async function render(view, ctx) {
  if (ctx.page === 'callback') return callback(view);
  const c = claims();
  if (c && !expired(c) && !new URLSearchParams(location.search).has('switch')) {
    const g = c.roles[0];
    const o = g ? await org(g.org) : null;
    view.innerHTML = `
      <section class="card">
        <p>${esc(t('login.signed_in_as'))} <strong>${esc(c.sub)}</strong></p>
        <ul class="roles">${c.roles
          .map((r) => `<li>${esc(t('role.' + r.role))} — <span class="org" data-org="${esc(r.org)}">${esc(r.org)}</span></li>`)
          .join('')}</ul>
        <p><a class="button primary" id="go" href="${esc(next(c))}">${esc(t('login.continue'))}</a>
           <a class="button" href="/?switch=1">${esc(t('login.other'))}</a></p>
      </section>`;
    if (o) view.querySelector(`.org[data-org="${g.org}"]`).textContent = `${o.name} (${o.code})`;
    return;
  }
  view.innerHTML = `
    <form class="card" id="login">
      <label for="token">${esc(t('login.token'))}</label>
      <textarea id="token" name="token" rows="5" required spellcheck="false" autocomplete="off"
        placeholder="eyJ…"></textarea>
      <p class="muted">${esc(t('login.hint'))} <code>gradeflow token --role submitter --org ORG_ID</code></p>
      <button type="submit" class="primary">${esc(t('login.submit'))}</button>
      <div class="slot"></div>
    </form>`;
  const form = view.querySelector('#login');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const slot = form.querySelector('.slot');
    const raw = form.token.value.trim();
    const c2 = claims(raw);
    if (!c2) return show(slot, errorBox(new Error(t('login.malformed'))));
    if (expired(c2)) return show(slot, errorBox(new Error(t('login.expired'))));
    setToken(raw);
    try {
      await verify(c2);
    } catch (e) {
      signOut();
      return show(slot, errorBox(e));
    }
    location.assign(next(c2));
  });
}

async function callback(view) {
  const frag = new URLSearchParams(location.hash.slice(1));
  const raw = frag.get('access_token') || frag.get('id_token');
  // Drop the token from the address bar and the history at once.
  history.replaceState(null, '', location.pathname);
  if (!raw) {
    view.innerHTML = `<p class="error">${esc(t('login.callback_missing'))}</p><p><a href="/">${esc(t('page.login'))}</a></p>`;
    return;
  }
  const c = claims(raw);
  if (!c || expired(c)) {
    view.innerHTML = `<p class="error">${esc(t('login.expired'))}</p><p><a href="/">${esc(t('page.login'))}</a></p>`;
    return;
  }
  setToken(raw);
  try {
    await verify(c);
  } catch (e) {
    signOut();
    view.innerHTML = '';
    view.append(errorBox(e));
    return;
  }
  location.replace(home(c));
}

// The UI's entry: the header (menu by role, who is signed in, the language
// switch), then the page the server named in <body data-page>. Each page
// module exports `render(view, ctx)`; `ctx.signal` aborts when the page is
// left or redrawn (the language switch redraws in place).
import { t, lang, setLang, applyStatic } from '/assets/i18n.js';
import { claims, expired, hasRole, signOut, org } from '/assets/api.js';
import { errorBox } from '/assets/dom.js';

const PAGES = {
  login: () => import('/assets/login.js'),
  callback: () => import('/assets/login.js'),
  worklist: () => import('/assets/worklist.js'),
  dossier: () => import('/assets/worklist.js'),
  appraisal: () => import('/assets/appraisal.js'),
  decision: () => import('/assets/decision.js'),
  dashboard: () => import('/assets/dashboard.js'),
  audit: () => import('/assets/audit.js'),
};

// Menu entries: page, title key, the role that needs it.
const MENU = [
  ['worklist', 'page.worklist', 'submitter'],
  ['appraisal', 'page.appraisal', 'appraiser'],
  ['decision', 'page.decision', 'authority'],
  ['dashboard', 'page.dashboard', null],
  ['audit', 'page.audit', 'auditor'],
];

// The home page of a token's first role.
export function home(c = claims()) {
  const role = c && c.roles[0] && c.roles[0].role;
  return (
    {
      submitter: '/ui/worklist',
      appraiser: '/ui/appraisal',
      authority: '/ui/decision',
      central: '/ui/dashboard',
      auditor: '/ui/audit',
    }[role] || '/ui/worklist'
  );
}

let controller = null;

async function draw() {
  const page = document.body.dataset.page;
  const view = document.getElementById('view');
  const title = document.getElementById('title');
  if (controller) controller.abort();
  controller = new AbortController();
  document.documentElement.lang = lang();
  applyStatic();
  const c = claims();
  const signedIn = c && !expired(c);
  if (!signedIn && page !== 'login' && page !== 'callback') {
    location.replace('/?next=' + encodeURIComponent(location.pathname + location.search));
    return;
  }
  drawHeader(page, signedIn ? c : null);
  if (page === 'notfound') {
    title.textContent = t('page.notfound');
    view.innerHTML = `<p><a href="/">${t('nav.home')}</a></p>`;
    return;
  }
  const key = 'page.' + (page === 'callback' ? 'login' : page);
  title.textContent = t(key);
  document.title = t(key) + ' · gradeflow';
  const mod = await PAGES[page]();
  try {
    await mod.render(view, { page, claims: c, signal: controller.signal, title, redraw: draw });
  } catch (e) {
    if (controller.signal.aborted) return;
    view.innerHTML = '';
    view.append(errorBox(e));
  }
}

function drawHeader(page, c) {
  const nav = document.getElementById('nav');
  nav.innerHTML = '';
  const who = document.getElementById('who');
  const out = document.getElementById('signout');
  out.hidden = !c;
  who.textContent = '';
  if (!c) return;
  for (const [p, key, role] of MENU) {
    if (role && !hasRole(role, c)) continue;
    const a = document.createElement('a');
    a.href = '/ui/' + p;
    a.textContent = t(key);
    if (p === page || (page === 'dossier' && p === 'worklist')) a.setAttribute('aria-current', 'page');
    nav.append(a);
  }
  const g = c.roles[0];
  who.textContent = c.sub + (g ? ' · ' + t('role.' + g.role) : '');
  if (g) {
    org(g.org).then((o) => {
      if (o) who.textContent = c.sub + ' · ' + t('role.' + g.role) + ' · ' + o.name;
    });
  }
}

document.getElementById('lang').addEventListener('click', () => {
  setLang(lang() === 'vi' ? 'en' : 'vi');
  draw();
});
document.getElementById('signout').addEventListener('click', () => {
  signOut();
  location.assign('/');
});
document.addEventListener('gradeflow:unauthorized', () => {
  const c = claims();
  if (c && expired(c)) {
    signOut();
    location.assign('/');
  }
});

draw();

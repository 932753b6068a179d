// Kiểm tra, giám sát: the decision log (GET /api/v1/audit/decisions) with
// the chain's verification (GET /api/v1/audit/verify), and one dossier's
// full history (GET /api/v1/dossiers/{id}) on the same page.
import { t, fmtNum, fmtDateTime } from '/assets/i18n.js';
import { get, org } from '/assets/api.js';
import { esc, errorBox, show, gradeBadge, stateBadge, shortId, total } from '/assets/dom.js';
import { historyList } from '/assets/worklist.js';

const PAGE = 50;

// Dossier names for the log's rows (the log names dossiers by id).
const names = new Map();
function dossierName(id) {
  if (!names.has(id)) names.set(id, get('/api/v1/dossiers/' + encodeURIComponent(id)).then((d) => d.name, () => null));
  return names.get(id);
}

export async function render(view, ctx) {
  const dossier = new URLSearchParams(location.search).get('dossier');
  view.innerHTML = `
    <section class="card" id="verify"><p class="muted">${esc(t('audit.verifying'))}</p></section>
    <section class="card" id="history-card">
      <h2>${esc(t('audit.history'))}</h2>
      <form id="lookup" class="inline"><label>${esc(t('audit.dossier_id'))}<input name="dossier" value="${esc(dossier || '')}" spellcheck="false"></label>
        <button class="primary">${esc(t('audit.show'))}</button></form>
      <div id="history"></div>
    </section>
    <section class="card">
      <h2>${esc(t('audit.log'))}</h2>
      <div class="table-wrap"><table class="list log">
        <thead><tr><th>#</th><th>${esc(t('audit.at'))}</th><th>${esc(t('field.decision_number'))}</th><th>${esc(t('col.name'))}</th>
        <th>${esc(t('decision.grade'))}</th><th>${esc(t('audit.authority'))}</th><th>${esc(t('audit.actor'))}</th><th>${esc(t('audit.hash'))}</th></tr></thead>
        <tbody id="log"></tbody></table></div>
      <p><button type="button" id="more" hidden>${esc(t('audit.more'))}</button></p>
      <div class="slot" id="log-error"></div>
    </section>`;
  const problems = new Map();
  try {
    const v = await get('/api/v1/audit/verify');
    for (const p of v.problems || []) problems.set(p.seq, p.problem);
    view.querySelector('#verify').innerHTML = `
      <h2>${esc(t('audit.verify'))}: ${v.ok ? `<span class="badge ok-badge">✓ ${esc(t('audit.ok'))}</span>` : `<span class="badge bad-badge">✗ ${esc(t('audit.broken'))}</span>`}</h2>
      <p>${esc(t('audit.records', { n: fmtNum(v.records) }))} · ${esc(t('audit.head'))} <code>${esc(String(v.head).slice(0, 16))}…</code></p>
      ${(v.problems || []).length ? `<ul class="warnings">${v.problems.map((p) => `<li>#${esc(p.seq)}: ${esc(p.problem)}</li>`).join('')}</ul>` : ''}`;
  } catch (e) {
    show(view.querySelector('#verify'), errorBox(e));
  }

  let after = null;
  const more = view.querySelector('#more');
  const load = async () => {
    try {
      const q = new URLSearchParams({ limit: String(PAGE) });
      if (after !== null) q.set('after', after);
      const page = await get('/api/v1/audit/decisions?' + q);
      if (ctx.signal.aborted) return;
      const records = page.records || [];
      const body = view.querySelector('#log');
      if (!records.length && after === null) body.innerHTML = `<tr><td colspan="8" class="muted">${esc(t('audit.empty'))}</td></tr>`;
      body.insertAdjacentHTML(
        'beforeend',
        records
          .map(
            (r) => `<tr class="${problems.has(r.seq) ? 'refused' : ''}" data-seq="${esc(r.seq)}">
          <td class="num">${esc(r.seq)}${r.supersedes != null ? ` <span class="tag" title="${esc(t('audit.supersedes'))}">↺${esc(r.supersedes)}</span>` : ''}</td>
          <td>${fmtDateTime(r.at)}</td><td>${esc(r.number || '')}</td>
          <td><a href="/ui/audit?dossier=${esc(r.dossier)}" data-dossier="${esc(r.dossier)}" class="dossier-name">${esc(shortId(r.dossier))}</a></td>
          <td>${gradeBadge(r.grade)}</td><td data-org="${esc(r.authority)}">${esc(shortId(r.authority))}</td>
          <td>${esc(typeof r.actor === 'object' && r.actor ? r.actor.sub : r.actor || '')}</td>
          <td><code title="${esc(r.hash)}">${esc(String(r.hash || '').slice(0, 12))}</code>${problems.has(r.seq) ? ` <span class="overdue">${esc(problems.get(r.seq))}</span>` : ''}</td>
        </tr>`,
          )
          .join(''),
      );
      for (const a of body.querySelectorAll('a.dossier-name:not(.done)')) {
        a.classList.add('done');
        dossierName(a.dataset.dossier).then((name) => name && (a.textContent = name));
      }
      for (const cell of body.querySelectorAll('td[data-org]:not(.done)')) {
        cell.classList.add('done');
        org(cell.dataset.org).then((o) => o && (cell.textContent = o.code));
      }
      after = page.next_after ?? (records.length ? records[records.length - 1].seq : after);
      more.hidden = !(page.next_after != null && records.length === PAGE);
    } catch (e) {
      show(view.querySelector('#log-error'), errorBox(e));
    }
  };
  more.addEventListener('click', load);
  await load();

  const showHistory = async (id) => {
    const slot = view.querySelector('#history');
    if (!id) return show(slot, null);
    try {
      const d = await get('/api/v1/dossiers/' + encodeURIComponent(id));
      const o = await org(d.org);
      const sr = d.self_review;
      slot.innerHTML = `
        <h3>${esc(d.name)} ${stateBadge(d.state)} ${gradeBadge(d.decision && d.decision.grade)}</h3>
        <p class="muted">${esc(t('category.' + d.category))} · ${esc(o ? `${o.code} — ${o.name}` : d.org)}
          ${sr ? ` · ${esc(t('score.total'))} ${fmtNum(total(sr.score))}` : ''}</p>
        ${historyList(d.history || [])}`;
    } catch (e) {
      show(slot, errorBox(e));
    }
  };
  view.querySelector('#lookup').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = ev.target.dossier.value.trim();
    history.replaceState(null, '', '/ui/audit' + (id ? '?dossier=' + encodeURIComponent(id) : ''));
    showHistory(id);
  });
  view.querySelector('#log').addEventListener('click', (ev) => {
    const a = ev.target.closest('a[data-dossier]');
    if (!a) return;
    ev.preventDefault();
    view.querySelector('#lookup').dossier.value = a.dataset.dossier;
    history.replaceState(null, '', '/ui/audit?dossier=' + a.dataset.dossier);
    showHistory(a.dataset.dossier);
    view.querySelector('#history-card').scrollIntoView({ behavior: 'smooth' });
  });
  if (dossier) await showHistory(dossier);
}

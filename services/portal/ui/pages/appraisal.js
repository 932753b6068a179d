// Thẩm định: the dossiers awaiting the caller's appraisal, the rulebook's
// warnings inline; per row, recommend a grade with the facts the rulebook
// needs (POST …/appraisal), or Trả lại hồ sơ with a Lý do (POST …/return).
import { t, fmtNum, lang } from '/assets/i18n.js';
import { get, post } from '/assets/api.js';
import { esc, errorBox, notice, show, gradeOptions, gradeBadge, total } from '/assets/dom.js';
import { fillOrgs } from '/assets/worklist.js';

function warningsList(warnings) {
  if (!warnings || !warnings.length) return '';
  return `<ul class="warnings">${warnings
    .map((w) => `<li data-rule="${esc(w.rule)}">⚠ ${esc(lang() === 'vi' ? w.message_vi || w.message : w.message || w.message_vi)}</li>`)
    .join('')}</ul>`;
}

export async function render(view, ctx) {
  const data = await get('/api/v1/worklist');
  if (ctx.signal.aborted) return;
  const items = data.items.filter((i) => i.action === 'appraise');
  view.innerHTML = `
    <p class="muted">${esc(t('appraisal.intro'))} <b>${fmtNum(items.length)}</b></p>
    ${items.length ? '' : `<p class="empty">${esc(t('worklist.empty'))}</p>`}
    <div class="rows">${items.map(row).join('')}</div>`;
  fillOrgs(view);
  for (const el of view.querySelectorAll('.appraise')) wire(el);
}

function row(i) {
  const tot = total(i.score);
  return `
  <article class="card appraise" data-dossier="${esc(i.dossier)}">
    <header>
      <h2><a href="/ui/audit?dossier=${esc(i.dossier)}">${esc(i.name)}</a></h2>
      <span class="muted">${esc(t('category.' + i.category))} · <span data-org="${esc(i.org)}">…</span></span>
    </header>
    <p>${esc(t('score.total'))}: <b>${tot === null ? '—' : fmtNum(tot)}</b>
       · ${esc(t('field.proposed_grade'))}: ${gradeBadge(i.proposed_grade)}</p>
    ${warningsList(i.warnings)}
    <form class="inline">
      <label>${esc(t('appraisal.recommend'))}<select name="grade">${gradeOptions(i.proposed_grade)}</select></label>
      <label>${esc(t('appraisal.notes'))}<input name="notes" type="text"></label>
      <div class="buttons">
        <button type="submit" class="primary" name="recommend">${esc(t('appraisal.submit'))}</button>
        <button type="button" class="danger" name="return">${esc(t('appraisal.return'))}</button>
      </div>
      <details><summary>${esc(t('appraisal.facts'))}</summary>
        <label>${esc(t('facts.discipline'))}<select name="discipline">
          <option value="">${esc(t('facts.none'))}</option>
          ${['reprimand', 'warning', 'removal', 'expulsion'].map((l) => `<option value="${l}">${esc(t('discipline.' + l))}</option>`).join('')}
        </select></label>
        <label class="check"><input type="checkbox" name="duty_related"> ${esc(t('facts.duty_related'))}</label>
        <label class="check"><input type="checkbox" name="degradation"> ${esc(t('facts.degradation'))}</label>
      </details>
      <div class="return-box" hidden>
        <label>${esc(t('field.reason'))}<input name="reason" type="text"></label>
        <button type="button" class="danger" name="confirm-return">${esc(t('appraisal.confirm_return'))}</button>
      </div>
      <div class="slot"></div>
    </form>
  </article>`;
}

function wire(card) {
  const id = card.dataset.dossier;
  const form = card.querySelector('form');
  const out = form.querySelector('.slot');
  const done = (text, extra) => {
    form.querySelectorAll('button, input, select').forEach((el) => (el.disabled = true));
    card.classList.add('done');
    show(out, notice(text));
    if (extra) out.insertAdjacentHTML('beforeend', extra);
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    const facts = { degradation: f.degradation.checked };
    if (f.discipline.value) facts.discipline = { level: f.discipline.value, duty_related: f.duty_related.checked, previous_unit: false };
    try {
      const r = await post(`/api/v1/dossiers/${id}/appraisal`, { recommended_grade: f.grade.value, facts, notes: f.notes.value });
      done(t('form.saved', { state: t('state.' + r.state) }), warningsList(r.warnings));
    } catch (e) {
      show(out, errorBox(e));
    }
  });
  form.elements.return.addEventListener('click', () => {
    const box = form.querySelector('.return-box');
    box.hidden = !box.hidden;
    if (!box.hidden) form.elements.reason.focus();
  });
  form.elements['confirm-return'].addEventListener('click', async () => {
    const reason = form.elements.reason.value.trim();
    if (!reason) return show(out, errorBox(new Error(t('appraisal.reason_required'))));
    try {
      const r = await post(`/api/v1/dossiers/${id}/return`, { reason });
      done(t('form.saved', { state: t('state.' + r.state) }));
    } catch (e) {
      show(out, errorBox(e));
    }
  });
}

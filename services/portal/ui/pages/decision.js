// Quyết định xếp loại: the appraised dossiers awaiting the caller's
// decision as a table; grades set per row with a meter per quota group
// (earlier decisions of the cycle + this batch, live), the triggers and the
// Lý do xem xét a row needs, the Số quyết định, and the batch submitted
// whole (POST /api/v1/decisions) — a 422's violations shown in place.
import { t, fmtNum, fmtPct, lang } from '/assets/i18n.js';
import { get, post, org } from '/assets/api.js';
import { esc, errorBox, notice, show, gradeOptions, gradeBadge, gradeForScore, gradeRank, total, shortId } from '/assets/dom.js';
import { fillOrgs } from '/assets/worklist.js';

const cycles = new Map();
function cycleOf(id) {
  if (!cycles.has(id)) cycles.set(id, get('/api/v1/cycles/' + id));
  return cycles.get(id);
}

export function maxExcellent(good, quota) {
  const x = good * quota.ratio;
  const r = quota.rounding || 'floor';
  // A small epsilon keeps 0.2 × 10 from flooring to 1.
  if (r === 'ceil') return Math.ceil(x - 1e-9);
  if (r === 'round' || r === 'nearest') return Math.round(x);
  return Math.floor(x + 1e-9);
}

export async function render(view, ctx) {
  const data = await get('/api/v1/worklist');
  if (ctx.signal.aborted) return;
  const items = data.items.filter((i) => i.action === 'decide');
  const authorities = [...new Set(items.map((i) => i.deciding_org))];
  if (!items.length) {
    view.innerHTML = `<p class="empty">${esc(t('decision.empty'))}</p>`;
    return;
  }
  const params = new URLSearchParams(location.search);
  const authority = authorities.includes(params.get('authority')) ? params.get('authority') : authorities[0];
  const rows = items.filter((i) => i.deciding_org === authority);
  const cycleId = rows[0].cycle;
  const cycle = await cycleOf(cycleId);
  const a = await org(authority);
  const earlier = data.quota.filter((q) => q.authority === authority && q.cycle === cycleId);
  view.innerHTML = `
    ${authorities.length > 1
      ? `<p><label>${esc(t('decision.authority'))} <select id="authority">${authorities
          .map((x) => `<option value="${esc(x)}"${x === authority ? ' selected' : ''} data-org="${esc(x)}">${esc(shortId(x))}</option>`)
          .join('')}</select></label></p>`
      : ''}
    <section class="card">
      <p>${esc(t('decision.authority'))}: <b>${esc(a ? `${a.code} — ${a.name}` : authority)}</b> · ${esc(t('cycle.label', { year: cycle.year }))}</p>
      <p class="muted">${esc(t('decision.quota_rule', { pct: fmtPct(cycle.quota.ratio) }))}</p>
      <div id="meters" class="meters" aria-live="polite"></div>
    </section>
    <form id="decision" class="card">
      <div class="table-wrap"><table class="list decide">
        <thead><tr>
          <th><input type="checkbox" id="all" checked aria-label="${esc(t('decision.select_all'))}"></th>
          <th>${esc(t('col.name'))}</th><th>${esc(t('col.group'))}</th><th>${esc(t('score.total'))}</th>
          <th>${esc(t('decision.recommended'))}</th><th>${esc(t('decision.grade'))}</th><th>${esc(t('decision.triggers'))}</th>
          <th>${esc(t('field.override_reason'))}</th>
        </tr></thead>
        <tbody>${rows.map(row).join('')}</tbody>
      </table></div>
      <fieldset class="exception">
        <label class="check"><input type="checkbox" name="exception"> ${esc(t('decision.exception'))}</label>
        <label class="exception-reason" hidden>${esc(t('field.reason'))}<input name="exception_reason" type="text"></label>
      </fieldset>
      <label>${esc(t('field.decision_number'))}<input name="number" type="text" required placeholder="12-QĐ/HU"></label>
      <button type="submit" class="primary">${esc(t('decision.submit'))}</button>
      <div class="slot"></div>
    </form>`;
  fillOrgs(view);
  if (authorities.length > 1) {
    for (const opt of view.querySelectorAll('#authority option')) {
      org(opt.value).then((o) => o && (opt.textContent = `${o.code} — ${o.name}`));
    }
    view.querySelector('#authority').addEventListener('change', (ev) => {
      history.replaceState(null, '', '/ui/decision?authority=' + ev.target.value);
      ctx.redraw();
    });
  }
  const form = view.querySelector('#decision');
  const meters = view.querySelector('#meters');
  const exceptionRatio = 0.25;

  const chosen = () =>
    [...form.querySelectorAll('tbody tr')]
      .filter((tr) => tr.querySelector('input.pick').checked)
      .map((tr) => ({ tr, item: rows.find((i) => i.dossier === tr.dataset.dossier) }));

  const update = () => {
    const quota = form.elements.exception.checked ? { ...cycle.quota, ratio: exceptionRatio } : cycle.quota;
    const groups = new Map();
    for (const q of earlier) groups.set(q.group, { excellent: q.excellent, good: q.good, earlier: true });
    for (const { tr, item } of chosen()) {
      const g = tr.querySelector('select.grade').value;
      const key = item.quota_group || 'individuals';
      if (!groups.has(key)) groups.set(key, { excellent: 0, good: 0 });
      const m = groups.get(key);
      if (g === 'excellent') m.excellent += 1;
      if (g === 'good') m.good += 1;
    }
    meters.innerHTML = [...groups.entries()]
      .map(([group, m]) => {
        const max = maxExcellent(m.good, quota);
        const over = m.excellent > max;
        const width = max > 0 ? Math.min(100, (m.excellent / max) * 100) : m.excellent > 0 ? 100 : 0;
        return `<div class="meter${over ? ' over' : ''}" data-group="${esc(group)}">
          <div class="meter-label"><b>${esc(t('group.' + group, {}, null, group))}</b>:
            ${esc(t('decision.meter', { excellent: fmtNum(m.excellent), max: fmtNum(max), pct: fmtPct(quota.ratio), good: fmtNum(m.good) }))}
            ${over ? `<span class="overdue">${esc(t('decision.over'))}</span>` : ''}</div>
          <div class="bar"><span style="width:${width}%"></span></div>
          <div class="violation"></div>
        </div>`;
      })
      .join('');
    // Triggers per row: a grade above the score's band, a grade other than
    // the recommended one (both need a Lý do xem xét), undecided children.
    for (const tr of form.querySelectorAll('tbody tr')) {
      const item = rows.find((i) => i.dossier === tr.dataset.dossier);
      const g = tr.querySelector('select.grade').value;
      const notes = [];
      const tot = total(item.score);
      if (tot !== null && gradeRank(g) > gradeRank(gradeForScore(tot))) notes.push(t('trigger.score_band', { score: fmtNum(tot) }));
      if (item.recommended_grade && g !== item.recommended_grade) notes.push(t('trigger.differs'));
      if (item.ready === false) notes.push(t('trigger.not_ready', { n: (item.waiting_for || []).length }));
      const found = item.appraisalTriggers || [];
      notes.push(...found);
      // A hard trigger forces Không hoàn thành nhiệm vụ unless overridden
      // with a reason.
      const needsReason =
        item.ready !== false && (notes.length > found.length || (found.length > 0 && g !== 'not_completed'));
      tr.querySelector('.triggers').innerHTML = notes.map((n) => `<span class="trigger">${esc(n)}</span>`).join('');
      const reason = tr.querySelector('input.reason');
      reason.required = needsReason;
      reason.classList.toggle('needed', needsReason);
      reason.placeholder = needsReason ? t('decision.reason_needed') : '';
    }
  };

  // The appraisal's facts and warnings (hard triggers: discipline,
  // degradation, …) from each dossier, a few at a time.
  (async () => {
    for (let at = 0; at < rows.length; at += 8) {
      await Promise.all(
        rows.slice(at, at + 8).map(async (item) => {
          const d = await get('/api/v1/dossiers/' + item.dossier).catch(() => null);
          if (!d || !d.appraisal) return;
          item.appraisalTriggers = appraisalTriggers(d.appraisal);
        }),
      );
      if (ctx.signal.aborted) return;
      update();
    }
  })();

  form.addEventListener('input', update);
  form.addEventListener('change', (ev) => {
    if (ev.target.id === 'all') form.querySelectorAll('input.pick').forEach((c) => (c.checked = ev.target.checked));
    if (ev.target.name === 'exception') form.querySelector('.exception-reason').hidden = !ev.target.checked;
    update();
  });
  update();

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const out = form.querySelector('.slot');
    form.querySelectorAll('.row-violation').forEach((el) => (el.textContent = ''));
    form.querySelectorAll('tr.refused').forEach((el) => el.classList.remove('refused'));
    const picked = chosen();
    if (!picked.length) return show(out, errorBox(new Error(t('decision.none_selected'))));
    const number = form.elements.number.value.trim();
    if (!number) return show(out, errorBox(new Error(t('decision.number_required'))));
    const grades = picked.map(({ tr, item }) => {
      const reason = tr.querySelector('input.reason').value.trim();
      return { dossier: item.dossier, grade: tr.querySelector('select.grade').value, override_reason: reason || null };
    });
    const exception = form.elements.exception.checked
      ? { ratio: exceptionRatio, reason: form.elements.exception_reason.value.trim() }
      : null;
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const r = await post('/api/v1/decisions', { cycle: cycleId, authority, number, grades, quota_exception: exception });
      show(out, notice(t('decision.done', { n: fmtNum(r.records.length), number })));
      for (const { tr } of picked) {
        tr.classList.add('decided');
        tr.querySelectorAll('input, select').forEach((el) => (el.disabled = true));
      }
      form.querySelector('#all').disabled = true;
    } catch (e) {
      button.disabled = false;
      const box = errorBox(e);
      show(out, box);
      placeViolations(form, meters, e);
    }
  });
}

// What an appraisal found that a grade must answer for: the facts that
// trigger the rulebook's hard rules, and its warnings other than the quota
// (which the meters show).
function appraisalTriggers(a) {
  const out = [];
  const f = a.facts || {};
  if (f.discipline) out.push(t('trigger.discipline', { level: t('discipline.' + f.discipline.level) }));
  if (f.degradation) out.push(t('facts.degradation'));
  if (f.wrongdoing_concluded) out.push(t('trigger.wrongdoing'));
  if (f.member_disciplined || f.subordinate_disciplined) out.push(t('trigger.member_disciplined'));
  for (const w of a.warnings || []) {
    if (w.rule === 'quota') continue;
    const text = lang() === 'vi' ? w.message_vi || w.message : w.message || w.message_vi;
    // The row names the dossier already.
    out.push(String(text).replace(/^(Hồ sơ|Dossier) [0-9a-f-]{36}: /, ''));
  }
  return out;
}

function row(i) {
  const tot = total(i.score);
  return `<tr data-dossier="${esc(i.dossier)}">
    <td><input type="checkbox" class="pick"${i.ready === false ? '' : ' checked'} aria-label="${esc(i.name)}"></td>
    <td><a href="/ui/audit?dossier=${esc(i.dossier)}">${esc(i.name)}</a><br><span class="muted small" data-org="${esc(i.org)}">…</span></td>
    <td>${esc(t('group.' + (i.quota_group || 'individuals'), {}, null, i.quota_group))}</td>
    <td class="num">${tot === null ? '—' : fmtNum(tot)}</td>
    <td>${gradeBadge(i.recommended_grade)}</td>
    <td><select class="grade" aria-label="${esc(t('decision.grade'))}">${gradeOptions(i.recommended_grade || 'good')}</select></td>
    <td class="triggers"></td>
    <td><input type="text" class="reason" aria-label="${esc(t('field.override_reason'))}"><div class="row-violation"></div></td>
  </tr>`;
}

// Shows a refusal's violations where they belong: quota at its meter, the
// others at their row.
function placeViolations(form, meters, e) {
  const violations = (e.details && e.details.violations) || [];
  for (const v of violations) {
    const text = t('violation.' + v.rule, {
      group: t('group.' + v.group, {}, null, v.group), excellent: fmtNum(v.excellent), good: fmtNum(v.good), max: fmtNum(v.max_excellent),
      trigger: v.trigger, score: v.score, grade: v.grade ? t('grade.' + v.grade) : '', n: (v.waiting_for || []).length,
    });
    if (v.rule === 'quota') {
      const m = meters.querySelector(`.meter[data-group="${CSS.escape(v.group || '')}"]`);
      if (m) {
        m.classList.add('over', 'refused');
        m.querySelector('.violation').textContent = text;
      }
      continue;
    }
    const tr = v.dossier && form.querySelector(`tr[data-dossier="${CSS.escape(v.dossier)}"]`);
    if (tr) {
      tr.classList.add('refused');
      tr.querySelector('.row-violation').textContent = text;
    }
  }
}

// Danh sách hồ sơ của đơn vị (the board's worklist) and one dossier's page:
// the Bản tự kiểm điểm form (30 + 70 points, the total and the grade it
// allows shown live), the Kết quả hội nghị kiểm điểm form, the reasons of a
// return, and the dossier's history.
import { t, fmtNum, fmtDateTime, fmtDate } from '/assets/i18n.js';
import { get, post, org } from '/assets/api.js';
import {
  esc, errorBox, notice, show, stateBadge, gradeBadge, gradeOptions, gradeForScore, gradeRank, total, GRADES,
} from '/assets/dom.js';

const BOARD_ACTIONS = new Set(['self_review', 'meeting']);
const QUEUE = 'gradeflow.queue';

// The dossier after `id` in the worklist last shown, for entering many
// members one after the other.
function nextInQueue(id) {
  let queue = [];
  try {
    queue = JSON.parse(sessionStorage.getItem(QUEUE) || '[]');
  } catch {
    queue = [];
  }
  const at = queue.indexOf(id);
  return at >= 0 && at + 1 < queue.length ? queue[at + 1] : null;
}

function savedNotice(state, id) {
  const box = notice(t('form.saved', { state: t('state.' + state) }));
  const next = nextInQueue(id);
  if (next) {
    const a = document.createElement('a');
    a.href = '/ui/dossier/' + next;
    a.className = 'button small next';
    a.textContent = t('form.next');
    box.append(' ', a);
  }
  return box;
}
const STATE_ORDER = ['returned', 'open', 'submitted', 'reviewed', 'appraised', 'decided', 'not_reviewed', 'regraded'];

export async function render(view, ctx) {
  if (ctx.page === 'dossier') return dossierPage(view, ctx);
  return worklistPage(view, ctx);
}

async function worklistPage(view, ctx) {
  const data = await get('/api/v1/worklist');
  if (ctx.signal.aborted) return;
  const items = data.items.filter((i) => BOARD_ACTIONS.has(i.action));
  const cycle = (items[0] || data.items[0] || {}).cycle;
  if (cycle) localStorage.setItem('gradeflow.cycle', cycle);
  const groups = new Map();
  for (const item of items) {
    if (!groups.has(item.state)) groups.set(item.state, []);
    groups.get(item.state).push(item);
  }
  const states = [...groups.keys()].sort((a, b) => STATE_ORDER.indexOf(a) - STATE_ORDER.indexOf(b));
  // Bulk entry: each dossier page offers the next one of this list.
  sessionStorage.setItem(QUEUE, JSON.stringify(states.flatMap((s) => groups.get(s).map((i) => i.dossier))));
  view.innerHTML = `
    <section class="card summary" id="unit-summary"></section>
    <p class="muted">${esc(t('worklist.intro'))}</p>
    <div class="chips">${states
      .map((s) => `<a class="chip" href="#state-${esc(s)}">${esc(t('state.' + s))} <b>${fmtNum(groups.get(s).length)}</b></a>`)
      .join('')}</div>
    ${items.length ? '' : `<p class="empty">${esc(t('worklist.empty'))}</p>`}
    ${data.truncated ? `<p class="muted">${esc(t('worklist.truncated'))}</p>` : ''}
    ${states
      .map(
        (s) => `
      <section class="group" id="state-${esc(s)}" data-state="${esc(s)}">
        <h2>${stateBadge(s)} <span class="count">${fmtNum(groups.get(s).length)}</span></h2>
        <div class="table-wrap"><table class="list worklist">
          <thead><tr><th>${esc(t('col.name'))}</th><th>${esc(t('col.category'))}</th><th>${esc(t('col.unit'))}</th><th>${esc(t('col.action'))}</th></tr></thead>
          <tbody>${groups
            .get(s)
            .map(
              (i) => `<tr data-dossier="${esc(i.dossier)}">
                <td><a href="/ui/dossier/${esc(i.dossier)}">${esc(i.name)}</a>${i.leader ? ` <span class="tag">${esc(t('worklist.leader'))}</span>` : ''}</td>
                <td>${esc(t('category.' + i.category))}</td>
                <td class="org" data-org="${esc(i.org)}">…</td>
                <td><a class="button small" href="/ui/dossier/${esc(i.dossier)}">${esc(t('action.' + i.action))}</a></td>
              </tr>`,
            )
            .join('')}</tbody>
        </table></div>
      </section>`,
      )
      .join('')}`;
  fillOrgs(view);
  // The unit's counts by state (the whole subtree), when a cycle is known.
  const grant = ctx.claims.roles[0];
  if (cycle && grant) {
    get(`/api/v1/cycles/${cycle}/progress?org=${grant.org}`)
      .then((node) => {
        if (ctx.signal.aborted) return;
        const keys = ['open', 'submitted', 'reviewed', 'appraised', 'returned', 'decided', 'not_reviewed'];
        view.querySelector('#unit-summary').innerHTML = `
          <h2>${esc(node.name || node.code)} <span class="muted">${esc(node.code)}</span></h2>
          <p>${esc(t('progress.subjects'))}: <b>${fmtNum(node.totals.subjects)}</b> · ${esc(t('progress.deadline'))}: ${fmtDate(node.deadline)}
          ${node.overdue ? `<span class="overdue">${esc(t('progress.overdue'))}</span>` : ''}</p>
          <div class="chips">${keys
            .map((k) => `<span class="chip state-${k}">${esc(t('state.' + k))} <b>${fmtNum(node.totals[k] || 0)}</b></span>`)
            .join('')}</div>`;
      })
      .catch(() => view.querySelector('#unit-summary')?.remove());
  } else {
    view.querySelector('#unit-summary').remove();
  }
}

export function fillOrgs(root) {
  for (const cell of root.querySelectorAll('[data-org]')) {
    org(cell.dataset.org).then((o) => {
      cell.textContent = o ? `${o.code} — ${o.name}` : cell.dataset.org.slice(0, 8);
    });
  }
}

async function dossierPage(view, ctx) {
  const id = location.pathname.split('/')[3] || '';
  const d = await get('/api/v1/dossiers/' + encodeURIComponent(id));
  if (ctx.signal.aborted) return;
  ctx.title.textContent = d.name;
  const o = await org(d.org);
  const returns = d.returns || [];
  view.innerHTML = `
    <p><a href="/ui/worklist">← ${esc(t('page.worklist'))}</a></p>
    <section class="card">
      <p>${stateBadge(d.state)} ${gradeBadge(d.decision && d.decision.grade)}</p>
      <dl class="facts">
        <dt>${esc(t('col.category'))}</dt><dd>${esc(t('category.' + d.category))}${d.leader ? ' · ' + esc(t('worklist.leader')) : ''}</dd>
        <dt>${esc(t('col.unit'))}</dt><dd>${esc(o ? `${o.code} — ${o.name}` : d.org)}</dd>
        <dt>${esc(t('col.status'))}</dt><dd>${esc(t('status.' + (d.status || 'active')))}</dd>
      </dl>
    </section>
    ${returns.length && d.state === 'returned'
      ? `<section class="card warn" id="returns"><h2>${esc(t('dossier.returned'))}</h2><ul>${returns
          .map((r) => `<li><b>${esc(t('field.reason'))}:</b> ${esc(r.reason)} <span class="muted">${fmtDateTime(r.at)}</span></li>`)
          .join('')}</ul><p>${esc(t('dossier.answer_return'))}</p></section>`
      : ''}
    <div id="form"></div>
    <section class="card"><h2>${esc(t('dossier.history'))}</h2>${historyList(d.history || [])}</section>`;
  const slot = view.querySelector('#form');
  if (d.state === 'open' || d.state === 'returned') selfReviewForm(slot, d, ctx);
  else if (d.state === 'submitted') meetingForm(slot, d, ctx);
  else slot.innerHTML = summary(d);
}

export function historyList(history) {
  if (!history.length) return `<p class="muted">—</p>`;
  return `<ol class="history">${history
    .map((h) => {
      const extra = ['state', 'proposed_grade', 'recommended_grade', 'grade', 'reason', 'number', 'warnings']
        .filter((k) => h[k] !== undefined && h[k] !== null)
        .map((k) => {
          const v = k === 'state' ? t('state.' + h[k]) : k.endsWith('grade') || k === 'grade' ? t('grade.' + h[k]) : h[k];
          return `<span class="kv"><span class="k">${esc(t('history.' + k))}</span> ${esc(v)}</span>`;
        })
        .join(' ');
      const actor = h.actor ? `${h.actor.sub} · ${t('role.' + h.actor.role)}` : '';
      return `<li><time>${fmtDateTime(h.at)}</time> <b>${esc(t('event.' + h.kind.replace(/\.v\d+$/, '')))}</b>
        <span class="muted">${esc(actor)}</span> ${extra}</li>`;
    })
    .join('')}</ol>`;
}

function summary(d) {
  const sr = d.self_review;
  const m = d.meeting;
  const a = d.appraisal;
  return `<section class="card"><h2>${esc(t('form.self_review'))}</h2>${
    sr
      ? `<p>${esc(t('score.total'))}: <b>${fmtNum(total(sr.score))}</b> · ${esc(t('field.proposed_grade'))}: ${gradeBadge(sr.proposed_grade)}</p><p class="pre">${esc(sr.report)}</p>`
      : '<p class="muted">—</p>'
  }${m ? `<h2>${esc(t('form.meeting'))}</h2><p>${esc(t('field.proposed_grade'))}: ${gradeBadge(m.proposed_grade)}</p><p class="pre">${esc(m.minutes)}</p>` : ''}${
    a ? `<h2>${esc(t('page.appraisal'))}</h2><p>${gradeBadge(a.recommended_grade)} ${esc(a.notes || '')}</p>` : ''
  }</section>`;
}

function num(form, name) {
  const v = form.elements[name].value;
  return v === '' ? NaN : Number(v);
}

function selfReviewForm(slot, d, ctx) {
  const prev = d.self_review || {};
  const score = prev.score || {};
  const tasks = prev.tasks || {};
  slot.innerHTML = `
    <form class="card" id="self-review" novalidate>
      <h2>${esc(t('form.self_review'))} <span class="muted">${esc(t('form.template', { form: d.category }))}</span></h2>
      <fieldset class="score">
        <label>${esc(t('score.general'))}
          <input type="number" name="general" min="0" max="30" step="0.5" required value="${esc(score.general ?? '')}"></label>
        <label>${esc(t('score.tasks'))}
          <input type="number" name="tasks" min="0" max="70" step="0.5" required value="${esc(score.tasks ?? '')}"></label>
        <div class="live" aria-live="polite">
          <span>${esc(t('score.total'))}: <b id="total">—</b> / 100</span>
          <span>${esc(t('score.allows'))}: <b id="allows">—</b></span>
        </div>
      </fieldset>
      <fieldset class="tasks">
        <legend>${esc(t('tasks.title'))}</legend>
        ${['total', 'on_time', 'exceeded', 'late', 'not_done']
          .map((k) => `<label>${esc(t('tasks.' + k))}<input type="number" name="t_${k}" min="0" step="1" value="${esc(tasks[k] ?? 0)}"></label>`)
          .join('')}
      </fieldset>
      <label class="check"><input type="checkbox" name="shortcomings_fixed"${prev.shortcomings_fixed === false ? '' : ' checked'}> ${esc(t('field.shortcomings_fixed'))}</label>
      <label>${esc(t('field.proposed_grade'))}
        <select name="proposed_grade">${gradeOptions(prev.proposed_grade || 'good')}</select></label>
      <p class="hint" id="grade-hint"></p>
      <label>${esc(t('field.report'))}
        <textarea name="report" rows="5">${esc(prev.report || '')}</textarea></label>
      <button type="submit" class="primary">${esc(t('form.submit_self_review'))}</button>
      <div class="slot"></div>
    </form>`;
  const form = slot.querySelector('form');
  const update = () => {
    const g = num(form, 'general');
    const k = num(form, 'tasks');
    const ok = !isNaN(g) && !isNaN(k);
    const tot = ok ? g + k : null;
    form.querySelector('#total').textContent = ok ? fmtNum(tot) : '—';
    const allowed = ok ? gradeForScore(tot) : null;
    const el = form.querySelector('#allows');
    el.textContent = allowed ? t('grade.' + allowed) : '—';
    el.className = allowed ? 'grade-' + allowed : '';
    const proposed = form.elements.proposed_grade.value;
    const hint = form.querySelector('#grade-hint');
    hint.textContent = allowed && gradeRank(proposed) > gradeRank(allowed) ? t('score.above_band') : '';
    hint.className = hint.textContent ? 'hint warn' : 'hint';
  };
  form.addEventListener('input', update);
  update();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const out = form.querySelector('.slot');
    const g = num(form, 'general');
    const k = num(form, 'tasks');
    if (isNaN(g) || isNaN(k) || g < 0 || g > 30 || k < 0 || k > 70) {
      return show(out, errorBox(new Error(t('score.invalid'))));
    }
    const body = {
      score: { general: g, tasks: k },
      proposed_grade: form.elements.proposed_grade.value,
      tasks: Object.fromEntries(['total', 'on_time', 'exceeded', 'late', 'not_done'].map((x) => [x, Number(form.elements['t_' + x].value) || 0])),
      shortcomings_fixed: form.elements.shortcomings_fixed.checked,
      report: form.elements.report.value,
    };
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const r = await post(`/api/v1/dossiers/${d.id}/self-review`, body);
      show(out, savedNotice(r.state, d.id));
      // The meeting outcome comes next: redraw the page into that form
      // (unless the user moves on to the next dossier).
      setTimeout(() => !ctx.signal.aborted && ctx.redraw(), 1500);
    } catch (e) {
      show(out, errorBox(e));
      button.disabled = false;
    }
  });
}

function meetingForm(slot, d, ctx) {
  const proposed = (d.self_review && d.self_review.proposed_grade) || 'good';
  slot.innerHTML = `
    <form class="card" id="meeting">
      <h2>${esc(t('form.meeting'))}</h2>
      <label>${esc(t('field.proposed_grade'))}<select name="proposed_grade">${gradeOptions(proposed)}</select></label>
      <fieldset class="votes"><legend>${esc(t('field.votes'))}</legend>
        ${GRADES.map((g) => `<label>${esc(t('grade.' + g))}<input type="number" min="0" step="1" name="v_${g}" value="0"></label>`).join('')}
      </fieldset>
      <label>${esc(t('field.minutes'))}<textarea name="minutes" rows="4"></textarea></label>
      <button type="submit" class="primary">${esc(t('form.submit_meeting'))}</button>
      <div class="slot"></div>
    </form>`;
  const form = slot.querySelector('form');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const out = form.querySelector('.slot');
    const votes = {};
    for (const g of GRADES) {
      const n = Number(form.elements['v_' + g].value) || 0;
      if (n > 0) votes[g] = n;
    }
    try {
      const r = await post(`/api/v1/dossiers/${d.id}/meeting`, {
        proposed_grade: form.elements.proposed_grade.value,
        votes,
        minutes: form.elements.minutes.value,
      });
      show(out, savedNotice(r.state, d.id));
      form.querySelector('button[type=submit]').disabled = true;
    } catch (e) {
      show(out, errorBox(e));
    }
  });
}

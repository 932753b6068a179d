// Theo dõi tiến độ: the progress tree from the caller's org (Central for
// central staff) down to the cells, with completion bars, Quá hạn in red
// against each tier's deadline, a grade distribution bar per subtree, live
// updates read from /progress/stream (fetch streaming, the token in the
// header), and the report downloads (CSV / XLSX saved as blobs).
import { t, fmtNum, fmtDate, fmtDateTime, fmtPct } from '/assets/i18n.js';
import { get, stream, download } from '/assets/api.js';
import { esc, errorBox, show, GRADES } from '/assets/dom.js';

const CYCLE = 'gradeflow.cycle';

// The cycle to show: ?cycle=, else the last one seen, else one from the
// caller's worklist.
async function findCycle() {
  const q = new URLSearchParams(location.search).get('cycle');
  if (q) return q;
  const kept = localStorage.getItem(CYCLE);
  if (kept) return kept;
  const w = await get('/api/v1/worklist?limit=1');
  return w.items.length ? w.items[0].cycle : null;
}

function settled(n) {
  const s = n.totals;
  return s.settled ?? (s.decided || 0) + (s.regraded || 0) + (s.not_reviewed || 0);
}

function completion(n) {
  return n.totals.subjects ? settled(n) / n.totals.subjects : 0;
}

function bar(fraction, cls = '') {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 1000) / 10;
  return `<div class="bar ${cls}" role="img" aria-label="${esc(fmtPct(fraction))}"><span style="width:${pct}%"></span></div>`;
}

function distribution(n) {
  const sum = GRADES.reduce((a, g) => a + (n.grades[g] || 0), 0);
  if (!sum) return `<div class="dist empty" title="${esc(t('progress.no_grades'))}"></div>`;
  return `<div class="dist" role="img" aria-label="${esc(GRADES.map((g) => `${t('grade.' + g)}: ${n.grades[g] || 0}`).join(', '))}">${GRADES.map((g) => {
    const c = n.grades[g] || 0;
    return c ? `<span class="grade-${g}" style="flex:${c}" title="${esc(t('grade.' + g))}: ${fmtNum(c)}">${esc(t('grade_short.' + g))} ${fmtNum(c)}</span>` : '';
  }).join('')}</div>`;
}

function stateLine(n) {
  return ['open', 'submitted', 'reviewed', 'appraised', 'returned', 'decided', 'not_reviewed']
    .map((k) => `<span class="chip state-${k}" data-count="${k}">${esc(t('state.' + k))} <b>${fmtNum(n.totals[k] || 0)}</b></span>`)
    .join('');
}

// Past the tier's deadline with work left (an empty unit has none).
function isOverdue(n) {
  return n.overdue && !n.complete && n.totals.subjects > 0;
}

function rowHtml(n, level) {
  const overdue = isOverdue(n);
  const leaf = n.tier === 'cell' || level > 6;
  return `<tr class="node${overdue ? ' is-overdue' : ''}" data-org="${esc(n.org)}" data-level="${level}">
    <td class="name" style="padding-left:${0.5 + level * 1.2}rem">
      ${leaf ? '<span class="twisty"></span>' : `<button type="button" class="twisty" aria-expanded="false" aria-label="${esc(t('progress.expand'))}">▸</button>`}
      <a href="/ui/dashboard?org=${esc(n.org)}">${esc(n.code)}</a> <span class="muted">${esc(n.name || '')}</span>
    </td>
    <td>${esc(t('tier.' + n.tier, {}, null, n.tier))}</td>
    <td class="num">${fmtNum(settled(n))} / ${fmtNum(n.totals.subjects)}</td>
    <td class="progress-cell">${bar(completion(n), overdue ? 'late' : n.complete ? 'complete' : '')}<small>${fmtPct(completion(n))}</small></td>
    <td>${fmtDate(n.deadline)} ${overdue ? `<span class="overdue">${esc(t('progress.overdue'))}</span>` : ''}</td>
    <td class="dist-cell">${distribution(n)}</td>
  </tr>`;
}

export async function render(view, ctx) {
  const cycle = await findCycle();
  if (ctx.signal.aborted) return;
  if (!cycle) {
    view.innerHTML = `<form class="card" id="pick"><label>${esc(t('progress.cycle_id'))}<input name="cycle" required></label>
      <button class="primary">${esc(t('progress.show'))}</button></form>`;
    view.querySelector('#pick').addEventListener('submit', (ev) => {
      ev.preventDefault();
      location.assign('/ui/dashboard?cycle=' + encodeURIComponent(ev.target.cycle.value.trim()));
    });
    return;
  }
  localStorage.setItem(CYCLE, cycle);
  const orgParam = new URLSearchParams(location.search).get('org') || ctx.claims.roles[0].org;
  const info = await get('/api/v1/cycles/' + cycle).catch(() => null);
  view.innerHTML = `
    <section class="card top-node" id="top"><p class="muted">${esc(t('loading'))}</p></section>
    <p class="live-line"><span id="live" class="live-dot">${esc(t('progress.connecting'))}</span>
      <span id="updated" class="muted"></span>
      <span class="downloads">
        <button type="button" class="small" data-format="csv">${esc(t('progress.download', { format: 'CSV' }))}</button>
        <button type="button" class="small" data-format="xlsx">${esc(t('progress.download', { format: 'XLSX' }))}</button>
      </span></p>
    <div class="slot" id="dl"></div>
    <div class="table-wrap"><table class="list tree">
      <thead><tr><th>${esc(t('col.unit'))}</th><th>${esc(t('col.tier'))}</th><th>${esc(t('progress.settled'))}</th>
      <th>${esc(t('progress.completion'))}</th><th>${esc(t('progress.deadline'))}</th><th>${esc(t('progress.distribution'))}</th></tr></thead>
      <tbody id="tree"></tbody>
    </table></div>`;
  ctx.title.textContent = `${t('page.dashboard')} — ${info ? t('cycle.label', { year: info.year }) : ''}`;
  const expanded = new Set();
  const tree = view.querySelector('#tree');

  const drawTop = (n) => {
    const overdue = isOverdue(n);
    view.querySelector('#top').innerHTML = `
      <h2>${esc(n.name || n.code)} <span class="muted">${esc(n.code)} · ${esc(t('tier.' + n.tier, {}, null, n.tier))}</span>
        ${overdue ? `<span class="overdue">${esc(t('progress.overdue'))}</span>` : ''}${n.complete ? `<span class="badge state-decided">${esc(t('progress.complete'))}</span>` : ''}</h2>
      <div class="big-numbers">
        <div><b id="n-subjects">${fmtNum(n.totals.subjects)}</b><span>${esc(t('progress.subjects'))}</span></div>
        <div><b id="n-decided">${fmtNum(n.totals.decided || 0)}</b><span>${esc(t('state.decided'))}</span></div>
        <div><b id="n-pct">${fmtPct(completion(n))}</b><span>${esc(t('progress.completion'))}</span></div>
        <div><b>${fmtDate(n.deadline)}</b><span>${esc(t('progress.deadline'))}</span></div>
      </div>
      ${bar(completion(n), overdue ? 'late' : '')}
      <div class="chips">${stateLine(n)}</div>
      <h3>${esc(t('progress.distribution'))}</h3>${distribution(n)}
      <ul class="legend">${GRADES.map((g) => `<li><span class="swatch grade-${g}"></span>${esc(t('grade.' + g))}: ${fmtNum(n.grades[g] || 0)}</li>`).join('')}</ul>`;
  };

  const drawChildren = async (n) => {
    const rows = [];
    const walk = async (node, level) => {
      for (const child of node.children || []) {
        rows.push(rowHtml(child, level));
        if (expanded.has(child.org)) {
          const sub = await get(`/api/v1/cycles/${cycle}/progress?org=${child.org}&depth=1`).catch(() => null);
          if (sub) await walk(sub, level + 1);
        }
      }
    };
    await walk(n, 0);
    if (ctx.signal.aborted) return;
    tree.innerHTML = rows.join('') || `<tr><td colspan="6" class="muted">—</td></tr>`;
    for (const id of expanded) {
      const b = tree.querySelector(`tr[data-org="${id}"] button.twisty`);
      if (b) {
        b.setAttribute('aria-expanded', 'true');
        b.textContent = '▾';
      }
    }
  };

  let last = null;
  tree.addEventListener('click', (ev) => {
    const b = ev.target.closest('button.twisty');
    if (!b) return;
    const id = b.closest('tr').dataset.org;
    if (expanded.has(id)) expanded.delete(id);
    else expanded.add(id);
    if (last) drawChildren(last);
  });

  const live = view.querySelector('#live');
  stream(
    `/api/v1/cycles/${cycle}/progress/stream?org=${orgParam}&depth=1`,
    (type, data) => {
      if (type === 'error') {
        live.className = 'live-dot off';
        live.textContent = t('progress.stream_error');
        return;
      }
      if (type !== 'progress') return;
      last = JSON.parse(data);
      drawTop(last);
      drawChildren(last);
      live.className = 'live-dot on';
      live.textContent = t('progress.live');
      view.querySelector('#updated').textContent = t('progress.updated', { at: fmtDateTime(new Date().toISOString(), true) });
    },
    ctx.signal,
    (state, e) => {
      if (state === 'retry') {
        live.className = 'live-dot off';
        live.textContent = t('progress.reconnecting');
      }
      if (state === 'failed') show(view.querySelector('#top'), errorBox(e));
    },
  );

  for (const b of view.querySelectorAll('.downloads button')) {
    b.addEventListener('click', async () => {
      const format = b.dataset.format;
      const slot = view.querySelector('#dl');
      try {
        const name = await download(`/api/v1/cycles/${cycle}/report?org=${orgParam}&format=${format}`, `gradeflow-report.${format}`);
        show(slot, Object.assign(document.createElement('p'), { className: 'ok', textContent: t('progress.downloaded', { name }) }));
      } catch (e) {
        show(slot, errorBox(e));
      }
    });
  }
}

// Small DOM helpers shared by the pages: escaping, error and notice boxes,
// grade and state labels, the grade a score allows.
import { t } from '/assets/i18n.js';

export const GRADES = ['excellent', 'good', 'completed', 'not_completed'];

export function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

// The best grade a total score allows (≥90, ≥70, ≥50, else not completed).
export function gradeForScore(total) {
  if (total >= 90) return 'excellent';
  if (total >= 70) return 'good';
  if (total >= 50) return 'completed';
  return 'not_completed';
}

export function gradeRank(g) {
  return GRADES.length - GRADES.indexOf(g);
}

export function gradeOptions(selected) {
  return GRADES.map(
    (g) => `<option value="${g}"${g === selected ? ' selected' : ''}>${esc(t('grade.' + g))}</option>`,
  ).join('');
}

export function stateBadge(state) {
  return `<span class="badge state-${esc(state)}">${esc(t('state.' + state))}</span>`;
}

export function gradeBadge(grade) {
  if (!grade) return '';
  return `<span class="badge grade-${esc(grade)}" title="${esc(t('grade.' + grade))}">${esc(t('grade_short.' + grade, {}, null, grade))}</span>`;
}

export function errorBox(e) {
  const box = document.createElement('div');
  box.className = 'error';
  box.setAttribute('role', 'alert');
  box.innerHTML = `<strong>${esc(t('error.title'))}</strong> <span class="msg"></span>`;
  box.querySelector('.msg').textContent = (e && e.message) || String(e);
  if (e && e.code) {
    const code = document.createElement('span');
    code.className = 'code';
    code.textContent = ` (${e.code}${e.status ? ' · ' + e.status : ''})`;
    box.append(code);
  }
  return box;
}

export function notice(text, kind = 'ok') {
  const box = document.createElement('div');
  box.className = kind;
  box.setAttribute('role', 'status');
  box.textContent = text;
  return box;
}

// Puts `node` (or nothing) into the slot element, replacing what it held.
export function show(slot, node) {
  slot.innerHTML = '';
  if (node) slot.append(node);
}

export function shortId(id) {
  return String(id || '').slice(0, 8);
}

export function total(score) {
  if (!score) return null;
  return (Number(score.general) || 0) + (Number(score.tasks) || 0);
}

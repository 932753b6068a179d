// End-to-end test of gradeflow's web UI (issue 8) in Debian's headless
// Chromium, driven by playwright-core over CDP (no browser download),
// against a fresh `gradeflow up --demo` (own NATS prefix, data dir, port).
//
// Scenario: a board files a self-review and the meeting outcome; the board
// cannot open another unit's dossier; an appraiser recommends two dossiers
// and returns one with a reason, which its board answers; an authority decides a batch, sees the
// quota refusal in place, then succeeds; the central dashboard's numbers
// change without a reload; the language switch works; the auditor sees the
// decision log verified and a dossier's history; a phone; a cycle past its
// deadlines shows Quá hạn. Screenshots of each screen go to a
// temporary folder, or to docs/screenshots/ with UPDATE_SCREENSHOTS=1 (so a
// test run leaves the checked-in pictures alone).
//
// Run by scripts/test.sh (before nextest); alone: `cargo build -p gradeflow
// && node tests/e2e/run.mjs`. GRADEFLOW_BIN names another binary.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer, connect } from 'node:net';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.GRADEFLOW_BIN || join(ROOT, 'target/debug/gradeflow');
const SHOTS = process.env.UPDATE_SCREENSHOTS
  ? join(ROOT, 'docs/screenshots')
  : mkdtempSync(join(tmpdir(), 'gradeflow-shots-'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT = 20_000;

let checks = 0;
function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
  checks += 1;
  console.log('e2e: ok  ' + what);
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

// Deletes the JetStream streams `gradeflow up` made under `prefix`
// (`<prefix>_EVENTS`, `_AUDIT`, `_DLQ`), speaking the NATS protocol over a
// plain socket: the test leaves nothing behind on the shared server. Resolves
// with the names deleted; gives up after 5 s.
function deleteStreams(prefix) {
  const url = new URL(process.env.GRADEFLOW_NATS_URL || 'nats://127.0.0.1:4222');
  const names = ['EVENTS', 'AUDIT', 'DLQ'].map((s) => `${prefix}_${s}`);
  return new Promise((res) => {
    const deleted = [];
    let answers = 0;
    let buf = '';
    const sock = connect(Number(url.port || 4222), url.hostname);
    const done = () => {
      sock.destroy();
      res(deleted);
    };
    const timer = setTimeout(done, 5_000);
    sock.on('error', () => {
      clearTimeout(timer);
      done();
    });
    sock.once('data', () => {
      let cmds = 'CONNECT {"verbose":false}\r\nSUB _e2e_cleanup.* 1\r\n';
      names.forEach((n, i) => {
        cmds += `PUB $JS.API.STREAM.DELETE.${n} _e2e_cleanup.${i} 0\r\n\r\n`;
      });
      sock.write(cmds);
      sock.on('data', (d) => {
        buf += d;
        for (;;) {
          const m = /MSG _e2e_cleanup\.(\d+) 1 (\d+)\r\n/.exec(buf);
          if (!m || buf.length < m.index + m[0].length + Number(m[2])) break;
          const body = buf.slice(m.index + m[0].length, m.index + m[0].length + Number(m[2]));
          buf = buf.slice(m.index + m[0].length + Number(m[2]));
          if (body.includes('"success":true')) deleted.push(names[Number(m[1])]);
          answers += 1;
          if (answers === names.length) {
            clearTimeout(timer);
            done();
          }
        }
      });
    });
  });
}

// Starts `gradeflow up --demo` and waits for its ready lines.
async function up(dataDir, port, prefix) {
  const env = { ...process.env, GRADEFLOW_DATA_DIR: dataDir, GRADEFLOW_HTTP_ADDR: `127.0.0.1:${port}`, GRADEFLOW_PREFIX: prefix };
  const child = spawn(BIN, ['up', '--demo'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => {
    err = (err + d).slice(-20000);
  });
  const ready = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error('gradeflow up did not get ready in 120 s:\n' + out + err.slice(-4000))), 120_000);
    child.stdout.on('data', (d) => {
      out += d;
      if (/token:\s+\S+/.test(out)) {
        clearTimeout(timer);
        res(out);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`gradeflow up exited (${code}):\n${out}${err.slice(-4000)}`));
    });
  });
  const m = (re) => (re.exec(ready) || [])[1];
  return {
    child,
    stderr: () => err,
    base: m(/portal:\s+(\S+)/),
    root: m(/root:\s+(\S+)/),
    cycle: m(/cycle\s+([0-9a-f-]{36})/),
    token: m(/token:\s+(\S+)/),
  };
}

function mint(dataDir, role, org, name) {
  return execFileSync(BIN, ['token', '--role', role, '--org', org, '--name', name, '--data-dir', dataDir], { encoding: 'utf8' }).trim();
}

async function api(g, path, token = g.token) {
  const r = await fetch(g.base + path, { headers: { Authorization: 'Bearer ' + token } });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

async function apiPost(g, path, body) {
  const r = await fetch(g.base + path, {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + g.token, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

async function orgId(g, code) {
  const found = await api(g, '/api/v1/orgs?code=' + encodeURIComponent(code));
  if (!found.length) throw new Error('no org ' + code);
  return found[0].id;
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, name + '.png'), fullPage: true });
}

async function signIn(context, g, token, expectPath) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on('pageerror', (e) => console.log('e2e: page error: ' + e.message));
  await page.goto(g.base + '/');
  await page.fill('#token', token);
  await page.click('#login button[type=submit]');
  await page.waitForURL('**' + expectPath + '**');
  return page;
}

// The services learn of each other's steps from events, a moment later:
// reload (as a user would) until `n` elements match, for at most 10 s
// (`drawn` matches once the page is drawn without them).
async function reloadUntil(page, selector, n, drawn = '#view .empty') {
  for (let i = 0; i < 20; i++) {
    await page.waitForSelector(`${selector}, ${drawn}`);
    if ((await page.locator(selector).count()) === n) return;
    await page.waitForTimeout(500);
    await page.reload();
  }
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'gradeflow-e2e-'));
  const dataDir = join(work, 'data');
  const port = await freePort();
  const prefix = 'e2e' + randomBytes(4).toString('hex');
  let g;
  let context;
  try {
    g = await up(dataDir, port, prefix);
    check(g.base && g.token && g.cycle, `gradeflow up --demo is ready at ${g.base} (prefix ${prefix})`);

    // The orgs and dossiers of the scenario, through the API.
    const district = await orgId(g, 'P01.D01');
    const otherCell = await orgId(g, 'P02.D01.C01');
    // The appraisal service learns of the demo's meetings from events: wait
    // until the district's ten are on the worklist.
    let toAppraise = [];
    for (let i = 0; i < 60 && toAppraise.length < 10; i++) {
      if (i) await new Promise((r) => setTimeout(r, 500));
      const work0 = await api(g, '/api/v1/worklist');
      toAppraise = work0.items.filter((x) => x.action === 'appraise' && x.deciding_org === district);
    }
    const byTasks = (t) => toAppraise.find((i) => i.score && i.score.tasks === t);
    const excellent = byTasks(66); // 27 + 66 = 93
    const good = byTasks(62); // 27 + 62 = 89
    const toReturn = byTasks(38); // 27 + 38 = 65
    check(excellent && good && toReturn, 'the demo has dossiers of P01.D01 awaiting appraisal (93, 89 and 65 points)');

    const tokens = {
      board: mint(dataDir, 'submitter', otherCell, 'chi-bo-p02'),
      appraiser: mint(dataDir, 'appraiser', district, 'ban-to-chuc'),
      authority: mint(dataDir, 'authority', district, 'ban-thuong-vu'),
      auditor: mint(dataDir, 'auditor', g.root, 'uy-ban-kiem-tra'),
    };

    const profile = join(work, 'chromium-profile');
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1280, height: 860 },
      locale: 'vi-VN',
      timezoneId: 'Asia/Ho_Chi_Minh',
      acceptDownloads: true,
    });

    // Sign-in screen, then the central dashboard (kept open: live numbers).
    const login = await context.newPage();
    await login.goto(g.base + '/');
    await login.waitForSelector('#token');
    check((await login.textContent('h1')) === 'Đăng nhập', 'the sign-in page is in Vietnamese by default');
    await shot(login, '1-dang-nhap');
    await login.close();
    const central = await signIn(context, g, g.token, '/ui/dashboard');
    await central.waitForSelector('#n-decided');
    const decidedBefore = await central.textContent('#n-decided');
    check(decidedBefore === '0', 'the central dashboard shows 0 dossiers decided');
    await central.waitForSelector('#tree tr.node');
    check((await central.locator('#tree tr.node').count()) === 2, 'the dashboard lists the two provinces under Central');

    // The board of cell P02.D01.C01: its worklist, a self-review, a meeting.
    const board = await signIn(context, g, tokens.board, '/ui/worklist');
    await board.waitForSelector('section.group');
    await board.waitForFunction(() => [...document.querySelectorAll('td.org')].every((td) => td.textContent !== '…'));
    const units = await board.$$eval('td.org', (tds) => tds.map((td) => td.textContent));
    check(units.length === 6 && units.every((u) => u.startsWith('P02.D01.C01')), `the board sees only its own unit's dossiers (${units.length})`);
    await shot(board, '2-danh-sach-ho-so');
    await board.click('section.group[data-state=open] tbody tr:nth-child(2) a.button');
    await board.waitForSelector('#self-review');
    await board.fill('input[name=general]', '28');
    await board.fill('input[name=tasks]', '65');
    await board.fill('input[name=t_total]', '12');
    await board.fill('input[name=t_on_time]', '12');
    await board.fill('input[name=t_exceeded]', '4');
    await board.selectOption('select[name=proposed_grade]', 'excellent');
    await board.fill('textarea[name=report]', 'Hoàn thành xuất sắc các nhiệm vụ được giao.');
    check((await board.textContent('#total')) === '93', 'the self-review form adds 28 + 65 = 93 live');
    check((await board.textContent('#allows')) === 'Hoàn thành xuất sắc nhiệm vụ', 'and shows the grade 93 points allow');
    await shot(board, '3-ban-tu-kiem-diem');
    await board.click('#self-review button[type=submit]');
    await board.waitForSelector('#self-review .ok');
    check((await board.textContent('#self-review .ok')).includes('Đã nộp bản tự kiểm điểm'), 'the self-review is filed (state submitted)');
    await board.waitForSelector('#meeting');
    await board.fill('input[name=v_excellent]', '9');
    await board.fill('textarea[name=minutes]', 'Hội nghị chi bộ thống nhất.');
    await shot(board, '4-ket-qua-hoi-nghi');
    await board.click('#meeting button[type=submit]');
    await board.waitForSelector('#meeting .ok');
    check((await board.textContent('#meeting .ok')).includes('Đã kiểm điểm tại hội nghị'), 'the meeting outcome is recorded (state reviewed)');
    // Another unit's dossier: the API refuses, the page says so.
    await board.goto(g.base + '/ui/dossier/' + excellent.dossier);
    await board.waitForSelector('.error');
    check((await board.textContent('.error .code')).includes('403'), "the board cannot open another unit's dossier (403 shown)");
    await shot(board, '5-ngoai-pham-vi');

    // The appraiser of P01.D01: recommend two, return one with a reason.
    const appraiser = await signIn(context, g, tokens.appraiser, '/ui/appraisal');
    await reloadUntil(appraiser, '.appraise', 10);
    check((await appraiser.locator('.appraise').count()) === 10, 'the appraiser sees the 10 dossiers of P01.D01');
    check((await appraiser.locator(`.appraise[data-dossier="${excellent.dossier}"] .warnings li`).count()) >= 1, "the rulebook's warning shows inline");
    await shot(appraiser, '6-tham-dinh');
    for (const [item, grade] of [[excellent, 'excellent'], [good, 'good']]) {
      const card = appraiser.locator(`.appraise[data-dossier="${item.dossier}"]`);
      await card.locator('select[name=grade]').selectOption(grade);
      await card.locator('button[name=recommend]').click();
      await card.locator('.ok').waitFor();
    }
    check(true, 'the appraiser recommends the 93- and 89-point dossiers');
    const ret = appraiser.locator(`.appraise[data-dossier="${toReturn.dossier}"]`);
    await ret.locator('button[name=return]').click();
    await ret.locator('button[name=confirm-return]').click();
    await ret.locator('.error').waitFor();
    check((await ret.locator('.error').textContent()).includes('Lý do'), 'returning without a Lý do is refused in place');
    await ret.locator('input[name=reason]').fill('Thiếu biên bản hội nghị kiểm điểm.');
    await ret.locator('button[name=confirm-return]').click();
    await ret.locator('.ok').waitFor();
    check((await ret.locator('.ok').textContent()).includes('Bị trả lại'), 'a dossier is returned with its reason');

    // The board of the returned dossier's cell answers the return.
    const boardP01 = await signIn(context, g, mint(dataDir, 'submitter', toReturn.org, 'chi-bo-p01'), '/ui/worklist');
    await boardP01.goto(g.base + '/ui/dossier/' + toReturn.dossier);
    await reloadUntil(boardP01, '#returns', 1, '#form > *');
    check((await boardP01.textContent('#returns')).includes('Thiếu biên bản hội nghị kiểm điểm.'), "the board sees the return's Lý do");
    check((await boardP01.inputValue('input[name=tasks]')) === '38', 'the self-review form is filled with what was filed before');
    await boardP01.fill('textarea[name=report]', 'Bổ sung biên bản hội nghị kiểm điểm.');
    await shot(boardP01, '5b-tra-loi-ho-so-bi-tra-lai');
    await boardP01.click('#self-review button[type=submit]');
    await boardP01.waitForSelector('#self-review .ok');
    check((await boardP01.textContent('#self-review .ok')).includes('Đã nộp bản tự kiểm điểm'), 'the returned dossier is filed again');
    await boardP01.close();

    // The authority of P01.D01: the quota refusal, then the batch.
    const authority = await signIn(context, g, tokens.authority, '/ui/decision');
    await reloadUntil(authority, 'table.decide tbody tr', 2);
    check((await authority.locator('table.decide tbody tr').count()) === 2, 'the decision screen lists the two appraised dossiers');
    const meter = authority.locator('.meter').first();
    check((await meter.getAttribute('class')).includes('over'), 'the quota meter is red: 1 excellent for 1 good');
    check((await meter.textContent()).includes('Xuất sắc 1 / tối đa 0 — 20 % của 1 Hoàn thành tốt'), 'the meter reads "Xuất sắc 1 / tối đa 0 — 20 % của 1 Hoàn thành tốt"');
    await authority.fill('input[name=number]', '15-QĐ/ĐU');
    await authority.click('#decision button[type=submit]');
    await authority.waitForSelector('.meter.refused .violation:not(:empty)');
    check((await authority.textContent('#decision .error')).includes('Vượt tỷ lệ'), 'the 422 refusal is shown in place (Vượt tỷ lệ)');
    await shot(authority, '7-quyet-dinh-bi-tu-choi');
    const row = authority.locator(`tr[data-dossier="${excellent.dossier}"]`);
    await row.locator('select.grade').selectOption('good');
    check(!(await authority.locator('.meter').first().getAttribute('class')).includes('over'), 'the meter turns back when the grade changes');
    check((await row.locator('.triggers').textContent()).length > 0, 'the row shows why a Lý do xem xét is needed');
    await row.locator('input.reason').fill('Điều chỉnh theo tỷ lệ của cấp ủy.');
    await authority.click('#decision button[type=submit]');
    await authority.waitForSelector('#decision .ok');
    check((await authority.textContent('#decision .ok')).includes('15-QĐ/ĐU'), 'the batch is decided (201)');
    await shot(authority, '8-quyet-dinh-xep-loai');

    // The dashboard moved without a reload.
    await central.waitForFunction(() => document.querySelector('#n-decided')?.textContent === '2', null, { timeout: 30_000 });
    check(true, 'the central dashboard shows 2 decided without a reload');
    await central.click('#tree tr.node button.twisty');
    await central.waitForSelector('#tree tr.node[data-level="1"]');
    const [download] = await Promise.all([central.waitForEvent('download'), central.click('.downloads button[data-format=csv]')]);
    check(download.suggestedFilename().endsWith('.csv'), 'the CSV report downloads with the token');
    await shot(central, '9-theo-doi-tien-do');

    // The language switch.
    await central.click('#lang');
    await central.waitForFunction(() => document.querySelector('h1').textContent.startsWith('Progress'));
    check((await central.textContent('#nav')).includes('Grading decision'), 'the language switch turns the UI to English');
    await central.waitForSelector('#n-decided');
    await shot(central, '10-progress-en');
    await central.click('#lang');
    await central.waitForFunction(() => document.querySelector('h1').textContent.startsWith('Theo dõi tiến độ'));
    check(true, 'and back to Vietnamese');

    // The auditor: the decision log verified, a dossier's history.
    // (signed in the production way: a redirect to /ui/callback with the
    // token in the fragment, which the page takes out of the address bar)
    const auditor = await context.newPage();
    auditor.setDefaultTimeout(STEP_TIMEOUT);
    await auditor.goto(`${g.base}/ui/callback#access_token=${tokens.auditor}&token_type=Bearer`);
    await auditor.waitForURL('**/ui/audit');
    check(!auditor.url().includes('access_token'), 'the callback page signs in from the fragment and drops the token from the URL');
    await auditor.waitForSelector('#verify .ok-badge');
    await auditor.waitForSelector('#log tr[data-seq]');
    check((await auditor.locator('#log tr[data-seq]').count()) === 2, 'the auditor sees 2 records, chain verified');
    await auditor.click('#log tr[data-seq] a');
    await auditor.waitForSelector('#history .history li');
    check((await auditor.textContent('#history')).includes('Quyết định xếp loại'), "a dossier's full history shows on the same page");
    await shot(auditor, '11-kiem-tra-giam-sat');

    // A phone.
    const phone = await context.newPage();
    await phone.setViewportSize({ width: 390, height: 844 });
    await phone.goto(g.base + '/');
    await phone.fill('#token', tokens.board);
    await phone.click('#login button[type=submit]');
    await phone.waitForSelector('section.group');
    const overflow = await phone.evaluate(() => {
      const wide = [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1);
      return { by: document.documentElement.scrollWidth - window.innerWidth, wide: wide.slice(0, 5).map((e) => e.tagName + '.' + e.className) };
    });
    check(overflow.by <= 1, 'the board worklist fits a phone screen' + (overflow.by > 1 ? ' ' + JSON.stringify(overflow) : ''));
    await shot(phone, '12-dien-thoai');

    // Overdue: a cycle whose deadlines have passed, one dossier open in P02.
    const late = await apiPost(g, '/api/v1/cycles', {
      year: 2025, kind: 'annual', rulebook: 'qd366-2025', tiers: ['cell', 'district', 'province', 'central'],
      deadlines: { cell: '2025-12-15', district: '2025-12-25', province: '2026-01-15', central: '2026-02-01' },
      quota: { ratio: 0.2, rounding: 'floor' },
    });
    await apiPost(g, `/api/v1/cycles/${late.id}/subjects`, {
      kind: 'individual', org: otherCell, name: 'Lê Thị Mai', category: '2B', leader: false, status: 'active',
    });
    await central.goto(`${g.base}/ui/dashboard?cycle=${late.id}`);
    await central.waitForSelector('#tree tr.node.is-overdue .overdue');
    check((await central.textContent('#top')).includes('Quá hạn'), 'units past their tier\'s deadline show Quá hạn in red');
    await central.click('#tree tr.node:nth-child(2) button.twisty');
    await central.waitForSelector('#tree tr.node[data-level="1"]');
    await shot(central, '13-qua-han');
  } finally {
    if (context) await context.close().catch(() => {});
    if (g) {
      g.child.kill('SIGINT');
      await new Promise((r) => {
        const t = setTimeout(() => {
          g.child.kill('SIGKILL');
          r();
        }, 15_000);
        g.child.once('exit', () => {
          clearTimeout(t);
          r();
        });
      });
    }
    rmSync(work, { recursive: true, force: true });
    const deleted = await deleteStreams(prefix);
    console.log(`e2e: removed ${deleted.length} of the prefix's 3 streams (${deleted.join(', ') || 'none'})`);
  }
}

const started = Date.now();
main().then(
  () => console.log(`e2e: web UI scenario done — ${checks} checks held in ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${SHOTS} (the suite's summary comes from nextest)`),
  (e) => {
    console.error('e2e: FAILED after ' + checks + ' checks: ' + (e && e.stack ? e.stack : e));
    process.exit(1);
  },
);

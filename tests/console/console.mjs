#!/usr/bin/env node
// Drives phigate's web console in a real browser: Debian's chromium (/usr/bin/chromium, or
// $PHIGATE_CHROMIUM) through playwright-core — never a downloaded browser — and checks every
// page with axe (no serious or critical violation) and for Content-Security-Policy violations.
//
// Usage (PHIGATE_BIN: the phigate binary, for `phigate token revoke`):
//   PHIGATE_BIN=target/debug/phigate node tests/console/console.mjs demo READY_JSON SCREENSHOT_DIR
//     `phigate demo`'s ready file: sign in on the development issuer's page; an agent's held
//     UPDATE (psql) shows in the reviewer's inbox without a reload; a reason-less denial is
//     refused; an approval with a reason lets the agent's psql finish with UPDATE 1; the
//     requester sees no decision controls and a forged POST is refused; audit, sessions and
//     a session's replay.
//   node tests/console/console.mjs oidc CONSOLE_URL SUBJECT IDLE_SECS SCREENSHOT_DIR
//     Sign in through the real OpenID provider (tests/idp/server.mjs) as SUBJECT; left idle
//     longer than IDLE_SECS (console.idle_timeout_secs), the browser is signed out.
//   node tests/console/console.mjs saml CONSOLE_URL USER SUBJECT SCREENSHOT_DIR
//     Sign in through the SAML identity provider (tests/saml-idp/idp.py, `[[auth.saml]]` named
//     hospital) as its USER: the IdP's page posts the signed response to the gateway's ACS, the
//     browser lands in the console signed in as SUBJECT; signing out ends the session.
//
// Prints one JSON line with what it measured to stdout; exits non-zero on the first failure.

import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import AxeBuilder from '@axe-core/playwright';
import { chromium } from 'playwright-core';

const [mode, ...args] = process.argv.slice(2);
const cspViolations = [];
const measured = {};

function fail(message) {
  process.stderr.write(`console test: FAILED: ${message}\n`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) fail(message);
}

function log(message) {
  process.stderr.write(`console test: ${message}\n`);
}

let shots = '.';

async function newPage(context) {
  const page = await context.newPage();
  // Runs before any page script, outside the page's CSP (a DevTools-injected script).
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP-VIOLATION ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  page.on('console', (m) => {
    const t = m.text();
    if (t.startsWith('CSP-VIOLATION') || t.includes('Content Security Policy')) {
      cspViolations.push(`${page.url()}: ${t}`);
    }
  });
  return page;
}

// axe on the page as it is, then a screenshot for the docs.
async function audit(page, name) {
  await page.waitForLoadState('load');
  const result = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']).analyze();
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(bad.length === 0, `${name}: axe found ${JSON.stringify(bad.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target) })))}`);
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  log(`${name}: axe ok (${result.passes.length} rules passed), screenshot written`);
}

function checkHeaders(response, what) {
  const h = response.headers();
  const csp = h['content-security-policy'] ?? '';
  check(csp.includes("default-src 'none'") && csp.includes("frame-ancestors 'none'"), `${what}: CSP ${csp}`);
  check(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval'), `${what}: CSP allows inline code: ${csp}`);
  check(h['cache-control'] === 'no-store', `${what}: cache-control ${h['cache-control']}`);
  check(h['referrer-policy'] === 'no-referrer', `${what}: referrer-policy ${h['referrer-policy']}`);
}

async function launch() {
  return chromium.launch({
    executablePath: process.env.PHIGATE_CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
}

// The development issuer's sign-in, as a person would: the console's sign-in page, the
// issuer's list of demo identities, one button.
async function devSignIn(browser, consoleUrl, subject, screenshots) {
  const context = await browser.newContext();
  const page = await newPage(context);
  const first = await page.goto(consoleUrl);
  checkHeaders(first, 'sign-in page');
  check(page.url().endsWith('/console/signin'), `not on the sign-in page: ${page.url()}`);
  if (screenshots) await audit(page, 'signin');
  await page.getByRole('link', { name: /development issuer/ }).click();
  await page.waitForURL(/\/dev\/authorize/);
  // A sign-in in flight is a sealed cookie of its own; no session exists before sign-in.
  const before = await sessionCookie(context);
  const inFlight = (await context.cookies()).find((c) => c.name.endsWith('phigate-signin'));
  check(!before && inFlight, 'a session before sign-in, or no sign-in cookie in flight');
  if (screenshots) await audit(page, 'dev-signin');
  await page.getByRole('button', { name: `Sign in as ${subject}` }).click();
  await page.waitForURL(/\/console\/(inbox|audit|requests)/);
  await page.getByText(`Signed in as ${subject}`).waitFor();
  // The session id is made at sign-in (nothing planted before can be fixed); the sign-in
  // cookie is gone; the cookie is HttpOnly, Lax.
  const after = await sessionCookie(context);
  check(after, 'no session cookie after sign-in');
  check(!(await context.cookies()).some((c) => c.name.endsWith('phigate-signin')), 'the sign-in cookie outlived the sign-in');
  check(after.httpOnly && after.sameSite === 'Lax' && after.path === '/', `cookie flags: ${JSON.stringify({ ...after, value: '…' })}`);
  check(Buffer.from(after.value, 'base64url').length === 32, 'the session id is not 256 bits');
  return { context, page };
}

// psql as a demo identity; resolves with its exit code and output once it ends. `held`
// resolves with the review id once the NOTICE that names it arrives.
function psql(ready, identity, sql) {
  const id = ready.identities[identity];
  const { host, port, database } = ready.postgres;
  const child = spawn('psql', ['-X', '-v', 'ON_ERROR_STOP=1', '-c', sql,
    `host=${host} port=${port} dbname=${database} user=${id.user} sslmode=disable`],
  { env: { ...process.env, PGPASSWORD: id.password }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let resolveHeld;
  const held = new Promise((resolve) => { resolveHeld = resolve; });
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => {
    err += d;
    const m = /held for review (r-[0-9a-f]+)/.exec(err);
    if (m) resolveHeld(m[1]);
  });
  const done = new Promise((resolve) => {
    child.on('close', (code) => resolve({ code, out, err }));
  });
  return { held, done, child };
}

async function sessionCookie(context) {
  return (await context.cookies()).find((c) => c.name.endsWith('phigate-console'));
}

function sha256(text) {
  return createHash('sha256').update(text).digest('hex');
}

async function demo(readyPath, screenshotDir) {
  shots = screenshotDir;
  const ready = JSON.parse(fs.readFileSync(readyPath, 'utf8'));
  check(typeof ready.console === 'string' && ready.console.endsWith('/console/'), `ready file console: ${ready.console}`);
  const base = ready.console.replace(/\/console\/$/, '');
  const browser = await launch();

  // The reviewer signs in and lands on the live inbox.
  const reviewer = await devSignIn(browser, ready.console, 'privacy.officer@demo.phigate', true);
  const rp = reviewer.page;
  check(rp.url().includes('/console/inbox'), `reviewer landed on ${rp.url()}`);
  const nav = rp.getByRole('navigation', { name: 'Main' });
  for (const name of ['Inbox', 'Audit', 'Sessions']) {
    check(await nav.getByRole('link', { name, exact: true }).count() === 1, `no navigation link ${name}`);
  }
  await rp.locator('body[data-live="on"]').waitFor();
  await audit(rp, 'inbox-empty');

  // The agent's UPDATE is held; the inbox shows it without a reload.
  const statement = "UPDATE encounters SET diagnosis_code = 'I10' WHERE id = 1";
  const first = psql(ready, 'agent', statement);
  const reviewId = await first.held;
  const shownAt = Date.now();
  const row = rp.getByRole('link', { name: `Review ${reviewId}` });
  await row.waitFor({ timeout: 2000 });
  measured.inbox_ms = Date.now() - shownAt;
  log(`held statement ${reviewId} appeared in the inbox after ${measured.inbox_ms} ms (no reload)`);
  await audit(rp, 'inbox');

  // Its review page: the statement, Reason, Approve, Deny.
  await row.click();
  await rp.waitForURL(new RegExp(`/console/reviews/${reviewId}$`));
  await rp.getByText(statement).waitFor();
  const reason = rp.getByRole('textbox', { name: 'Reason' });
  check(await reason.count() === 1, 'no Reason textbox');
  await audit(rp, 'review');

  // Deny without a reason: the browser's own check is bypassed; the server refuses.
  await rp.evaluate(() => {
    const t = document.getElementById('reason');
    t.removeAttribute('required');
    t.removeAttribute('minlength');
  });
  await rp.getByRole('button', { name: 'Deny' }).click();
  await rp.getByRole('alert').filter({ hasText: 'reason' }).waitFor();
  check(await rp.getByText('pending', { exact: true }).count() === 1, 'the review is no longer pending after a reason-less denial');
  await audit(rp, 'review-refused');

  // Approve with a reason: the agent's psql finishes with UPDATE 1.
  await rp.getByRole('textbox', { name: 'Reason' }).fill('Checked with the ward: I10 is the right code.');
  await rp.getByRole('button', { name: 'Approve' }).click();
  await rp.getByText('approved', { exact: true }).waitFor();
  const ran = await first.done;
  check(ran.code === 0 && ran.out.includes('UPDATE 1'), `agent's psql: ${JSON.stringify(ran)}`);
  log('approved in the browser; the agent got UPDATE 1');
  await audit(rp, 'review-approved');

  // The requester: no decision controls on their own review; a forged POST is refused.
  const agent = await devSignIn(browser, ready.console, 'coding-agent@demo.phigate', false);
  const ap = agent.page;
  check(await ap.getByRole('link', { name: 'Inbox', exact: true }).count() === 0, 'the agent has an Inbox link');
  // Its text carries markup (class B: client-originated text): shown as text, never run.
  const payload = '<img src=x onerror=alert(1)><script>alert(2)</script>';
  const hostile = `${statement} /* phigate: reason=${payload} */`;
  const second = psql(ready, 'agent', hostile);
  const ownId = await second.held;
  const own = await ap.goto(`${base}/console/reviews/${ownId}`);
  checkHeaders(own, 'review page');
  await ap.getByText(hostile).waitFor();
  await ap.getByText(payload, { exact: true }).waitFor();
  check(await ap.locator('img').count() === 0, 'the justification became an element');
  check(await ap.locator('script').count() === 2, 'the statement text became a script');
  check(await ap.getByRole('button', { name: 'Approve' }).count() === 0, 'the requester sees Approve');
  check(await ap.getByRole('textbox', { name: 'Reason' }).count() === 0, 'the requester sees Reason');
  await audit(ap, 'own-request');
  const csrf = await ap.locator('input[name="csrf"]').first().inputValue();
  const forged = await ap.request.post(`${base}/console/reviews/${ownId}/decide`, {
    form: { csrf, digest: sha256(hostile), reason: 'approving my own change myself', decision: 'approve' },
    maxRedirects: 0,
  });
  check(forged.status() === 403, `forged approval by the requester: HTTP ${forged.status()}`);
  const noCsrf = await rp.request.post(`${base}/console/reviews/${ownId}/decide`, {
    form: { csrf: 'x', digest: sha256(hostile), reason: 'a reviewer without the token', decision: 'approve' },
    maxRedirects: 0,
  });
  check(noCsrf.status() === 403, `approval without the CSRF token: HTTP ${noCsrf.status()}`);
  await ap.reload();
  check(await ap.getByText('pending', { exact: true }).count() === 1, 'the forged approval changed the review');
  await ap.goto(`${base}/console/requests`);
  await ap.getByRole('link', { name: `Review ${ownId}` }).waitFor();
  await audit(ap, 'my-requests');

  // A reviewer's form made for another text is refused (the digest binds the decision).
  await rp.goto(`${base}/console/reviews/${ownId}`);
  const reviewerCsrf = await rp.locator('input[name="csrf"]').first().inputValue();
  const stale = await rp.request.post(`${base}/console/reviews/${ownId}/decide`, {
    form: { csrf: reviewerCsrf, digest: sha256(statement), reason: 'approving what I did not see', decision: 'approve' },
    maxRedirects: 0,
  });
  check(stale.status() === 409, `approval of another text: HTTP ${stale.status()}`);
  // Cross-site: another origin's form cannot post (SameSite=Lax keeps the cookie home, and
  // the Host check refuses a rebinding name).
  const rebound = await rp.request.post(`${base}/console/reviews/${ownId}/decide`, {
    headers: { host: 'attacker.example:80' },
    form: { csrf: reviewerCsrf, digest: sha256(hostile), reason: 'a rebinding page posting', decision: 'approve' },
    maxRedirects: 0,
  });
  check(rebound.status() === 421, `a post under another host name: HTTP ${rebound.status()}`);

  // The reviewer denies it (with a reason); the agent's psql fails.
  await rp.reload();
  await rp.getByRole('textbox', { name: 'Reason' }).fill('Not needed: the code is already right.');
  await rp.getByRole('button', { name: 'Deny' }).click();
  await rp.getByText('denied', { exact: true }).waitFor();
  const refused = await second.done;
  check(refused.code !== 0, `denied statement ran: ${JSON.stringify(refused)}`);

  // An access request (an elevation) waits in the inbox too.
  const asked = await fetch(`${base}/v1/access-requests`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ready.identities.agent.password}`, 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'clinician', minutes: 30, reason: 'fix a dosage entry today' }),
  });
  check(asked.status === 201, `access request: HTTP ${asked.status}`);
  const elevation = (await asked.json()).id;
  await rp.goto(`${base}/console/inbox`);
  const elevationRow = rp.getByRole('row').filter({ has: rp.getByRole('link', { name: `Review ${elevation}` }) });
  await elevationRow.getByText('access request: role clinician for 30 min').waitFor();

  // Audit: verify status, a search, the report.
  await rp.getByRole('link', { name: 'Audit', exact: true }).click();
  await rp.waitForURL(/\/console\/audit/);
  await rp.getByText('Chain intact').waitFor();
  await rp.getByLabel('Subject').fill('coding-agent@demo.phigate');
  await rp.getByLabel('Type').selectOption('statement');
  await rp.getByRole('button', { name: 'Search' }).click();
  // Stored as statement_text says (redacted by default: literals as keyed hashes).
  await rp.getByText(/UPDATE encounters SET diagnosis_code/).first().waitFor();
  await audit(rp, 'audit');
  await rp.getByRole('button', { name: 'Access report' }).click();
  await rp.getByRole('heading', { name: 'Access report' }).waitFor();
  await audit(rp, 'audit-report');

  // Sessions and the replay of the agent's session.
  await rp.getByRole('link', { name: 'Sessions', exact: true }).click();
  await rp.waitForURL(/\/console\/sessions$/);
  await audit(rp, 'sessions');
  await rp.getByRole('link', { name: /coding-agent@demo\.phigate/ }).first().click();
  await rp.waitForURL(/\/console\/sessions\/.+/);
  await rp.getByText(/UPDATE encounters SET diagnosis_code/).first().waitFor();
  await audit(rp, 'replay');

  // The agent's tokens are revoked (phigate token revoke): its console session ends at its
  // next request, as its database sessions do.
  check(process.env.PHIGATE_BIN, 'set PHIGATE_BIN to the phigate binary');
  const revoked = spawnSync(process.env.PHIGATE_BIN, ['token', 'revoke', '--issuer', 'development',
    '--subject', 'coding-agent@demo.phigate', '--data-dir', ready.data_dir], { encoding: 'utf8' });
  check(revoked.status === 0, `token revoke: ${revoked.stderr}`);
  const gone = await ap.goto(`${base}/console/requests`);
  check(gone.url().endsWith('/console/signin'), `after revocation the agent's console answered ${gone.url()}`);

  // Sign out: the session is gone on the server.
  await rp.getByRole('button', { name: 'Sign out' }).click();
  await rp.waitForURL(/\/console\/signin/);
  const after = await rp.goto(`${base}/console/inbox`);
  check(after.url().endsWith('/console/signin'), `after sign-out, the inbox answered ${after.url()}`);

  await browser.close();
}

async function oidc(consoleUrl, subject, idleSecs, screenshotDir) {
  shots = screenshotDir;
  const browser = await launch();
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(consoleUrl);
  await page.getByRole('link', { name: /Sign in with corp/ }).click();
  // oidc-provider's development login and consent pages.
  await page.locator('input[name="login"]').fill(subject);
  await page.locator('input[name="password"]').fill('any password');
  await page.locator('button[type="submit"]').click();
  await page.waitForURL((u) => !u.pathname.includes('/login'));
  if (!page.url().includes('/console/')) {
    await page.locator('button[type="submit"]').first().click();
  }
  await page.waitForURL(/\/console\/inbox/);
  await page.getByText(`Signed in as ${subject} (corp)`).waitFor();
  await audit(page, 'oidc-inbox');
  // Automatic logoff: left idle past console.idle_timeout_secs (the live inbox's own
  // refreshes do not count as activity), the next page is the sign-in page.
  await page.locator('body[data-live="on"]').waitFor();
  await page.waitForTimeout((Number(idleSecs) + 2) * 1000);
  await page.reload();
  await page.waitForURL(/\/console\/signin/);
  await browser.close();
}

async function saml(consoleUrl, user, subject, screenshotDir) {
  shots = screenshotDir;
  const browser = await launch();
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(consoleUrl);
  await audit(page, 'saml-signin');
  await page.getByRole('link', { name: 'Sign in with hospital (SAML)' }).click();
  // The IdP's page: one button per user; its next page posts the response to our ACS.
  await page.locator(`#signin-${user}`).click();
  await page.waitForURL(/\/console\/inbox/);
  await page.getByText(`Signed in as ${subject} (hospital)`).waitFor();
  await audit(page, 'saml-inbox');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(/\/console\/signin/);
  const after = await page.goto(`${new URL(consoleUrl).origin}/console/inbox`);
  check(after.url().endsWith('/console/signin'), `after sign-out, the inbox answered ${after.url()}`);
  await browser.close();
}

try {
  if (mode === 'demo') await demo(args[0], args[1]);
  else if (mode === 'oidc') await oidc(args[0], args[1], args[2], args[3]);
  else if (mode === 'saml') await saml(args[0], args[1], args[2], args[3]);
  else fail('usage: console.mjs demo READY_JSON DIR | oidc CONSOLE_URL SUBJECT IDLE_SECS DIR | saml CONSOLE_URL USER SUBJECT DIR');
} catch (e) {
  fail(e?.stack ?? String(e));
}
check(cspViolations.length === 0, `Content-Security-Policy violations: ${cspViolations.join('; ')}`);
process.stdout.write(`${JSON.stringify({ ok: true, ...measured })}\n`);
process.exit(0);

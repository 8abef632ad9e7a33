#!/usr/bin/env node
// Scripted "user with a browser" for the test IdP (server.mjs).
//
// Authorization code flow:
//   node tests/idp/browser.mjs AUTHORIZE_URL USERNAME
// Follows AUTHORIZE_URL, signs in on the development login page as USERNAME
// (any password), confirms consent, and when the IdP redirects to the
// client's loopback redirect_uri, performs a GET on that URL so the client
// listening there receives the code. Exits 0 once that GET got a response;
// exits 1 if the IdP redirected back with an OAuth error (the error redirect
// is still delivered to the client) or anything else went wrong.
//
// Device flow:
//   node tests/idp/browser.mjs --device VERIFICATION_URI_COMPLETE USERNAME
// Opens the verification page, confirms the user code, signs in as USERNAME,
// confirms consent, and exits 0 on the "Sign-in Success" page.
//
// It behaves like a minimal browser: cookies of the IdP's origin are kept,
// redirects are followed by hand, and the first HTML form of each page is
// submitted with its hidden fields. Progress goes to stderr; stdout is unused.

const STEP_LIMIT = 30;
const REQUEST_TIMEOUT_MS = 10_000;

function log(message) {
  process.stderr.write(`browser: ${message}\n`);
}

function fail(message) {
  log(`FAILED: ${message}`);
  process.exit(1);
}

function usage() {
  process.stderr.write(
    'usage: node browser.mjs AUTHORIZE_URL USERNAME\n'
    + '       node browser.mjs --device VERIFICATION_URI_COMPLETE USERNAME\n',
  );
  process.exit(2);
}

// Minimal cookie jar for a single origin (the IdP). Path and domain
// attributes are ignored: oidc-provider's cookie names are unique, so sending
// every live cookie on every request to the IdP is harmless.
class CookieJar {
  #cookies = new Map();

  store(response) {
    for (const header of response.headers.getSetCookie()) {
      const [pair, ...attributes] = header.split(';');
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attributes.some((attribute) => {
        const [key, val = ''] = attribute.split('=').map((s) => s.trim());
        if (key.toLowerCase() === 'max-age') return Number(val) <= 0;
        if (key.toLowerCase() === 'expires') return Date.parse(val) <= Date.now();
        return false;
      });
      if (expired || value === '') {
        this.#cookies.delete(name);
      } else {
        this.#cookies.set(name, value);
      }
    }
  }

  header() {
    return [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ');
  }
}

function decodeEntities(text) {
  return text
    .replace(/&#(\d+);/g, (_, code) => String.fromCodePoint(Number(code)))
    .replace(/&#x([0-9a-f]+);/gi, (_, code) => String.fromCodePoint(parseInt(code, 16)))
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
}

function attribute(tag, name) {
  const match = new RegExp(`\\s${name}\\s*=\\s*(?:"([^"]*)"|'([^']*)'|([^\\s>]+))`, 'i').exec(tag);
  if (!match) return undefined;
  return decodeEntities(match[1] ?? match[2] ?? match[3]);
}

// First <form> of a page: its action, method and named <input> fields.
function parseForm(html) {
  const form = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(html);
  if (!form) return undefined;
  const fields = [];
  for (const [input] of form[2].matchAll(/<input\b[^>]*>/gi)) {
    const name = attribute(input, 'name');
    if (name) fields.push([name, attribute(input, 'value') ?? '']);
  }
  return {
    action: attribute(`<form${form[1]}>`, 'action') ?? '',
    method: (attribute(`<form${form[1]}>`, 'method') ?? 'get').toUpperCase(),
    fields,
  };
}

function pageSummary(html) {
  const title = /<title>([\s\S]*?)<\/title>/i.exec(html)?.[1]?.trim();
  const text = html
    .replace(/<style[\s\S]*?<\/style>/gi, ' ')
    .replace(/<script[\s\S]*?<\/script>/gi, ' ')
    .replace(/<[^>]+>/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return `${title ? `[${title}] ` : ''}${decodeEntities(text).slice(0, 300)}`;
}

function sameEndpoint(a, b) {
  return a.protocol === b.protocol && a.hostname === b.hostname && a.pathname === b.pathname;
}

async function main() {
  const argv = process.argv.slice(2);
  const device = argv[0] === '--device';
  if (device) argv.shift();
  if (argv.length !== 2) usage();
  const [startUrl, username] = argv;

  let start;
  try {
    start = new URL(startUrl);
  } catch {
    fail(`not a URL: ${startUrl}`);
  }
  const idpOrigin = start.origin;
  // Where the client waits for the authorization response. A native
  // client's loopback redirect may come back on any port, so compare
  // scheme, host and path only.
  const redirectUri = device ? undefined : start.searchParams.get('redirect_uri');
  if (!device && !redirectUri) fail('authorization URL has no redirect_uri parameter');
  const redirectTarget = redirectUri ? new URL(redirectUri) : undefined;

  const jar = new CookieJar();
  let request = { method: 'GET', url: start };
  let loggedIn = false;
  let userCodeSubmissions = 0;

  for (let step = 1; step <= STEP_LIMIT; step += 1) {
    const { method, url, body } = request;

    if (redirectTarget && sameEndpoint(url, redirectTarget)) {
      const error = url.searchParams.get('error');
      if (error) {
        log(`IdP returned error=${error}: ${url.searchParams.get('error_description') ?? ''}`);
      }
      log(`delivering authorization response to client: GET ${url.href}`);
      let response;
      try {
        response = await fetch(url, {
          redirect: 'manual',
          signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
        });
      } catch (err) {
        fail(`client redirect ${url.href} unreachable: ${err.cause?.message ?? err.message}`);
      }
      const text = await response.text().catch(() => '');
      log(`client answered ${response.status}${text ? `: ${text.trim().slice(0, 200)}` : ''}`);
      if (error) fail(`authorization failed with error=${error}`);
      if (!url.searchParams.get('code')) fail('redirect carried no code');
      log('done');
      return;
    }

    if (url.origin !== idpOrigin) {
      fail(`unexpected navigation away from the IdP to ${url.href}`);
    }

    const headers = { accept: 'text/html' };
    const cookie = jar.header();
    if (cookie) headers.cookie = cookie;
    if (body) headers['content-type'] = 'application/x-www-form-urlencoded';

    log(`${method} ${url.href}`);
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body,
        redirect: 'manual',
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (err) {
      fail(`${method} ${url.href}: ${err.cause?.message ?? err.message}`);
    }
    jar.store(response);

    if (response.status >= 300 && response.status < 400) {
      const location = response.headers.get('location');
      if (!location) fail(`${response.status} without a Location header`);
      await response.arrayBuffer();
      request = { method: 'GET', url: new URL(location, url) };
      continue;
    }

    const html = await response.text();
    if (response.status !== 200) {
      fail(`${method} ${url.href} answered ${response.status}: ${pageSummary(html)}`);
    }

    if (device && /<title>\s*Sign-in Success\s*<\/title>/i.test(html)) {
      log(`device sign-in confirmed as ${username}`);
      log('done');
      return;
    }

    const form = parseForm(html);
    if (!form) fail(`page without a form: ${pageSummary(html)}`);

    const fields = new URLSearchParams(form.fields);
    const names = new Set(form.fields.map(([name]) => name));
    if (names.has('login')) {
      if (loggedIn) fail(`login page shown again (login rejected?): ${pageSummary(html)}`);
      fields.set('login', username);
      fields.set('password', 'any-password');
      loggedIn = true;
      log(`signing in as ${username}`);
    } else if (names.has('confirm')) {
      log(`confirming user code ${fields.get('user_code')}`);
    } else if (names.has('user_code')) {
      // Either the auto-submitting page that carries the user code of
      // verification_uri_complete on to the confirmation page, or the code
      // entry page. Coming back to it means the code was not accepted.
      userCodeSubmissions += 1;
      if (userCodeSubmissions > 1) fail(`user code not accepted: ${pageSummary(html)}`);
      if (!fields.get('user_code')) {
        const code = start.searchParams.get('user_code');
        if (!code) fail('verification URL carries no user_code');
        fields.set('user_code', code);
      }
      log(`submitting user code ${fields.get('user_code')}`);
    } else if (fields.get('prompt') === 'consent') {
      log('granting consent');
    } else {
      log(`submitting form with fields ${[...names].join(', ') || '(none)'}`);
    }

    const action = new URL(form.action || url.href, url);
    if (form.method === 'POST') {
      request = { method: 'POST', url: action, body: fields.toString() };
    } else {
      action.search = fields.toString();
      request = { method: 'GET', url: action };
    }
  }

  fail(`no result after ${STEP_LIMIT} steps`);
}

main().catch((err) => fail(err.stack ?? String(err)));

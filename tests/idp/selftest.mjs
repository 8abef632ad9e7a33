#!/usr/bin/env node
// Self-test of the test IdP: starts server.mjs on a free port and exercises
// the contract phigate's integration tests rely on (client credentials JWTs,
// key rotation, authorization code + PKCE and device flows via browser.mjs).
//
// Usage: node tests/idp/selftest.mjs   (or `npm test` in tests/idp)
// Prints one line per check and a closing "N passed, N failed" line; exits
// non-zero on the first failure, after dumping the IdP's stderr.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import assert from 'node:assert/strict';

import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';

const here = path.dirname(fileURLToPath(import.meta.url));
const TTL = 120;
const TIMEOUT_MS = 30_000;

let passed = 0;
let idp; // { child, issuer, stderr: [] }

async function check(name, fn) {
  try {
    await fn();
  } catch (err) {
    console.log(`not ok - ${name}`);
    console.log(err.stack ?? String(err));
    if (idp) {
      console.log('--- IdP stderr ---');
      console.log(idp.stderr.join(''));
      idp.child.kill('SIGTERM');
    }
    console.log(`${passed} passed, 1 failed`);
    process.exit(1);
  }
  passed += 1;
  console.log(`ok - ${name}`);
}

function withTimeout(promise, what, ms = TIMEOUT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function startIdp() {
  const child = spawn(process.execPath, [path.join(here, 'server.mjs'), '--port', '0', '--ttl', String(TTL)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stderr = [];
  child.stderr.setEncoding('utf8').on('data', (chunk) => stderr.push(chunk));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  const first = await withTimeout(
    new Promise((resolve, reject) => {
      lines.once('line', resolve);
      exited.then(({ code }) => reject(new Error(`IdP exited with ${code}: ${stderr.join('')}`)));
    }),
    'the IdP readiness line',
  );
  const extra = [];
  lines.on('line', (line) => extra.push(line));
  return { child, exited, stderr, extraStdout: extra, ...JSON.parse(first) };
}

async function json(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`non-JSON ${response.status} response: ${text.slice(0, 300)}`);
  }
}

async function getJson(url) {
  const response = await fetch(url);
  const body = await json(response);
  assert.equal(response.status, 200, `GET ${url}: ${JSON.stringify(body)}`);
  return body;
}

async function postForm(url, params, headers = {}) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(params).toString(),
  });
  return { status: response.status, body: await json(response) };
}

function basicAuth(id, secret) {
  const encode = (s) => encodeURIComponent(s);
  return `Basic ${Buffer.from(`${encode(id)}:${encode(secret)}`).toString('base64')}`;
}

async function clientCredentialsToken(discovery, clientId, { post = false } = {}) {
  const secret = `${clientId}-secret`;
  const { status, body } = post
    ? await postForm(discovery.token_endpoint, {
      grant_type: 'client_credentials', scope: 'db', client_id: clientId, client_secret: secret,
    })
    : await postForm(
      discovery.token_endpoint,
      { grant_type: 'client_credentials', scope: 'db' },
      { authorization: basicAuth(clientId, secret) },
    );
  assert.equal(status, 200, `token for ${clientId}: ${JSON.stringify(body)}`);
  assert.equal(body.token_type, 'Bearer');
  assert.equal(body.expires_in, TTL);
  assert.equal(body.scope, 'db');
  return body.access_token;
}

async function jwks(discovery) {
  return createLocalJWKSet(await getJson(discovery.jwks_uri));
}

async function verifyAccessToken(token, keySet, issuer) {
  return jwtVerify(token, keySet, {
    issuer,
    audience: 'phigate',
    algorithms: ['RS256'],
    typ: 'at+jwt',
    requiredClaims: ['exp', 'iat', 'sub'],
  });
}

async function assertRejected(token, keySet, issuer) {
  await assert.rejects(verifyAccessToken(token, keySet, issuer), (err) => err.code === 'ERR_JWKS_NO_MATCHING_KEY');
}

function runBrowser(args) {
  const child = spawn(process.execPath, [path.join(here, 'browser.mjs'), ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk) => { stderr += chunk; });
  return withTimeout(
    new Promise((resolve) => child.once('exit', (code) => resolve({ code, stderr }))),
    'browser.mjs',
  );
}

// Loopback listener standing in for the CLI's redirect_uri endpoint.
async function startCallbackListener() {
  let deliver;
  const received = new Promise((resolve) => { deliver = resolve; });
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    res.writeHead(url.pathname === '/callback' ? 200 : 404, { 'content-type': 'text/plain' });
    res.end('signed in, you may close this window\n');
    if (url.pathname === '/callback') deliver(url.searchParams);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    redirectUri: `http://127.0.0.1:${server.address().port}/callback`,
    received,
    close: () => server.close(),
  };
}

const b64url = (buf) => buf.toString('base64url');

async function main() {
  idp = await startIdp();
  const { issuer, port } = idp;
  let discovery;
  let keySet;
  const tokens = {};

  await check('readiness line names a loopback issuer', () => {
    assert.equal(issuer, `http://127.0.0.1:${port}`);
    assert.ok(port > 0);
  });

  await check('discovery document', async () => {
    discovery = await getJson(`${issuer}/.well-known/openid-configuration`);
    assert.equal(discovery.issuer, issuer);
    assert.equal(discovery.jwks_uri, `${issuer}/jwks`);
    assert.equal(discovery.token_endpoint, `${issuer}/token`);
    assert.ok(discovery.grant_types_supported.includes('client_credentials'));
    assert.ok(discovery.device_authorization_endpoint);
  });

  await check('client credentials token for agent-ci (client_secret_basic)', async () => {
    tokens.first = await clientCredentialsToken(discovery, 'agent-ci');
    keySet = await jwks(discovery);
    const { payload, protectedHeader } = await verifyAccessToken(tokens.first, keySet, issuer);
    assert.equal(protectedHeader.alg, 'RS256');
    assert.ok(protectedHeader.kid);
    assert.equal(payload.iss, issuer);
    assert.equal(payload.aud, 'phigate');
    assert.equal(payload.sub, 'agent-ci');
    assert.equal(payload.client_id, 'agent-ci');
    assert.equal(payload.scope, 'db');
    assert.equal(payload.exp - payload.iat, TTL);
    assert.deepEqual(payload.groups, ['agents']);
    assert.deepEqual(payload.realm_access, { roles: ['agents'] });
  });

  await check('client credentials token for clinician-svc (client_secret_post)', async () => {
    const token = await clientCredentialsToken(discovery, 'clinician-svc', { post: true });
    const { payload } = await verifyAccessToken(token, keySet, issuer);
    assert.equal(payload.sub, 'clinician-svc');
    assert.deepEqual(payload.groups, ['clinicians']);
    assert.deepEqual(payload.realm_access, { roles: ['clinicians'] });
  });

  await check('client credentials token for nobody-svc has no groups', async () => {
    const token = await clientCredentialsToken(discovery, 'nobody-svc');
    const { payload } = await verifyAccessToken(token, keySet, issuer);
    assert.equal(payload.sub, 'nobody-svc');
    assert.deepEqual(payload.groups, []);
  });

  await check('wrong client secret is refused', async () => {
    const { status, body } = await postForm(
      discovery.token_endpoint,
      { grant_type: 'client_credentials' },
      { authorization: basicAuth('agent-ci', 'wrong') },
    );
    assert.equal(status, 401);
    assert.equal(body.error, 'invalid_client');
  });

  await check('resource urn:other yields a token for another audience', async () => {
    const { status, body } = await postForm(
      discovery.token_endpoint,
      { grant_type: 'client_credentials', scope: 'db', resource: 'urn:other' },
      { authorization: basicAuth('agent-ci', 'agent-ci-secret') },
    );
    assert.equal(status, 200, JSON.stringify(body));
    await assert.rejects(verifyAccessToken(body.access_token, keySet, issuer), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED' });
  });

  let oldKid;
  let newKid;
  await check('rotation keeps the old key and signs with the new one', async () => {
    oldKid = decodeProtectedHeader(tokens.first).kid;
    const response = await fetch(`${issuer}/__admin/rotate`, { method: 'POST' });
    const body = await json(response);
    assert.equal(response.status, 200);
    newKid = body.kid;
    assert.notEqual(newKid, oldKid);
    assert.deepEqual(body.jwks_kids, [newKid, oldKid]);

    tokens.second = await clientCredentialsToken(discovery, 'agent-ci');
    assert.equal(decodeProtectedHeader(tokens.second).kid, newKid);
    // The cached key set does not know the new kid; the refreshed one does.
    await assertRejected(tokens.second, keySet, issuer);
    keySet = await jwks(discovery);
    const { payload } = await verifyAccessToken(tokens.second, keySet, issuer);
    assert.equal(payload.sub, 'agent-ci');
    assert.deepEqual(payload.groups, ['agents']);
    await verifyAccessToken(tokens.first, keySet, issuer);
  });

  await check('rotation with drop_old=1 retires older keys', async () => {
    const response = await fetch(`${issuer}/__admin/rotate?drop_old=1`, { method: 'POST' });
    const body = await json(response);
    assert.equal(response.status, 200);
    assert.deepEqual(body.jwks_kids, [body.kid]);
    assert.ok(![oldKid, newKid].includes(body.kid));
    assert.deepEqual((await getJson(`${issuer}/__admin/keys`)).jwks_kids, [body.kid]);

    keySet = await jwks(discovery);
    await assertRejected(tokens.first, keySet, issuer);
    await assertRejected(tokens.second, keySet, issuer);
    const token = await clientCredentialsToken(discovery, 'agent-ci');
    assert.equal(decodeProtectedHeader(token).kid, body.kid);
    await verifyAccessToken(token, keySet, issuer);
  });

  await check('authorization code + PKCE flow via browser.mjs', async () => {
    const listener = await startCallbackListener();
    try {
      const verifier = b64url(randomBytes(32));
      const state = b64url(randomBytes(16));
      const nonce = b64url(randomBytes(16));
      const authorize = new URL(discovery.authorization_endpoint);
      authorize.search = new URLSearchParams({
        client_id: 'phigate-cli',
        response_type: 'code',
        redirect_uri: listener.redirectUri,
        scope: 'openid email db',
        state,
        nonce,
        code_challenge: b64url(createHash('sha256').update(verifier).digest()),
        code_challenge_method: 'S256',
      }).toString();

      const browser = await runBrowser([authorize.href, 'dr.rivera@demo.phigate']);
      assert.equal(browser.code, 0, `browser.mjs failed:\n${browser.stderr}`);
      const params = await withTimeout(listener.received, 'the authorization response');
      assert.equal(params.get('state'), state);
      assert.equal(params.get('iss'), issuer);
      assert.ok(params.get('code'));

      const { status, body } = await postForm(discovery.token_endpoint, {
        grant_type: 'authorization_code',
        code: params.get('code'),
        redirect_uri: listener.redirectUri,
        client_id: 'phigate-cli',
        code_verifier: verifier,
      });
      assert.equal(status, 200, JSON.stringify(body));

      const { payload: id } = await jwtVerify(body.id_token, keySet, {
        issuer, audience: 'phigate-cli', algorithms: ['RS256'],
      });
      assert.equal(id.sub, 'dr.rivera@demo.phigate');
      assert.equal(id.email, 'dr.rivera@demo.phigate');
      assert.deepEqual(id.groups, ['clinicians']);
      assert.equal(id.nonce, nonce);

      const { payload: access } = await verifyAccessToken(body.access_token, keySet, issuer);
      assert.equal(access.sub, 'dr.rivera@demo.phigate');
      assert.equal(access.client_id, 'phigate-cli');
      assert.deepEqual(access.groups, ['clinicians']);

      assert.ok(body.refresh_token, 'refresh token issued');
      const refreshed = await postForm(discovery.token_endpoint, {
        grant_type: 'refresh_token', refresh_token: body.refresh_token, client_id: 'phigate-cli',
      });
      assert.equal(refreshed.status, 200, JSON.stringify(refreshed.body));
      const { payload: again } = await jwtVerify(refreshed.body.id_token, keySet, { issuer, audience: 'phigate-cli' });
      assert.deepEqual(again.groups, ['clinicians']);
    } finally {
      listener.close();
    }
  });

  await check('device flow via browser.mjs --device', async () => {
    const { status, body: authz } = await postForm(discovery.device_authorization_endpoint, {
      client_id: 'phigate-cli', scope: 'openid db',
    });
    assert.equal(status, 200, JSON.stringify(authz));
    assert.ok(authz.verification_uri_complete);

    const pending = await postForm(discovery.token_endpoint, {
      grant_type: 'urn:ietf:params:oauth:grant-type:device_code',
      device_code: authz.device_code,
      client_id: 'phigate-cli',
    });
    assert.equal(pending.body.error, 'authorization_pending');

    const browser = await runBrowser(['--device', authz.verification_uri_complete, 'privacy.officer@demo.phigate']);
    assert.equal(browser.code, 0, `browser.mjs failed:\n${browser.stderr}`);

    const { status: tokenStatus, body } = await postForm(discovery.token_endpoint, {
      grant_type: 'urn:ietf:params:oauth:grant-type:device_code',
      device_code: authz.device_code,
      client_id: 'phigate-cli',
    });
    assert.equal(tokenStatus, 200, JSON.stringify(body));
    const { payload: id } = await jwtVerify(body.id_token, keySet, { issuer, audience: 'phigate-cli' });
    assert.equal(id.sub, 'privacy.officer@demo.phigate');
    assert.deepEqual(id.groups, ['reviewers']);
    const { payload: access } = await verifyAccessToken(body.access_token, keySet, issuer);
    assert.deepEqual(access.groups, ['reviewers']);
  });

  await check('browser.mjs fails clearly for an unknown client', async () => {
    const listener = await startCallbackListener();
    try {
      const url = `${discovery.authorization_endpoint}?client_id=nope&response_type=code&scope=openid`
        + `&redirect_uri=${encodeURIComponent(listener.redirectUri)}`;
      const browser = await runBrowser([url, 'someone']);
      assert.notEqual(browser.code, 0);
      assert.match(browser.stderr, /FAILED/);
    } finally {
      listener.close();
    }
  });

  await check('SIGTERM stops the IdP cleanly; stdout had only the readiness line', async () => {
    idp.child.kill('SIGTERM');
    const { code } = await withTimeout(idp.exited, 'IdP shutdown', 5000);
    assert.equal(code, 0);
    assert.deepEqual(idp.extraStdout, []);
    idp = undefined;
  });

  console.log(`${passed} passed, 0 failed`);
}

main().catch((err) => {
  console.log(err.stack ?? String(err));
  if (idp) idp.child.kill('SIGTERM');
  console.log(`${passed} passed, 1 failed`);
  process.exit(1);
});

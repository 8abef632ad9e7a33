#!/usr/bin/env node
// Test OpenID provider for phigate's integration tests.
//
// Usage: node tests/idp/server.mjs --port PORT [--ttl SECS]
//
// Listens on 127.0.0.1:PORT (0 picks a free port) over plain http. The issuer
// is http://127.0.0.1:PORT. Once listening it prints exactly one JSON line to
// stdout:
//
//   {"issuer":"http://127.0.0.1:PORT","port":PORT}
//
// and keeps running until SIGTERM/SIGINT. Everything else (oidc-provider
// notices, request errors) goes to stderr.
//
// What it serves:
//
// * Standard oidc-provider endpoints: discovery at
//   /.well-known/openid-configuration, JWKS at /jwks, token at /token,
//   authorization at /auth, device authorization at /device/auth, user code
//   verification at /device, userinfo at /me.
//
// * Client credentials grant for the confidential service clients below.
//   Access tokens are RS256 JWTs with iss = issuer, aud = "phigate",
//   sub = client id, scope "db" when requested, plus the "groups" and
//   "realm_access.roles" claims of the client. The default resource indicator
//   is "urn:phigate"; any "urn:NAME" resource yields a token with aud = NAME
//   (handy for wrong-audience tests).
//
// * A public native client "phigate-cli" for the authorization code + PKCE
//   flow (any loopback port on http://127.0.0.1/callback) and the device
//   flow. The built-in development login page accepts any login with any
//   password; the ID token (aud = "phigate-cli") carries sub = the login and
//   "groups" (see groupsFor), and with the "email" scope only, email = the
//   login and email_verified (true, except for a login containing
//   "+unverified": an IdP that lets people type in their own address).
//
// * Key rotation for tests of JWKS refresh:
//     POST /__admin/rotate             new signing key first, older keys kept
//                                      in the JWKS for verification
//     POST /__admin/rotate?drop_old=1  new signing key only; tokens signed by
//                                      older keys no longer verify
//     GET  /__admin/keys               current signing kid and JWKS kids
//   All three answer {"kid": SIGNING_KID, "jwks_kids": [...]}, newest first.
//   oidc-provider fixes its keystore when a Provider is constructed, so a
//   rotation builds a new Provider (same issuer, clients and cookie keys) and
//   the http server dispatches to whichever instance is current. Sessions,
//   grants and pending interactions live in oidc-provider's process-wide
//   in-memory adapter, so they survive a rotation.

import { generateKeyPair, randomBytes } from 'node:crypto';
import http from 'node:http';
import { parseArgs, promisify } from 'node:util';

import { calculateJwkThumbprint } from 'jose';
import Provider, { errors } from 'oidc-provider';

// stdout carries the single readiness line; oidc-provider prints its
// development notices with console.info, so route those to stderr.
console.info = console.error;
console.log = console.error;

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    ttl: { type: 'string', default: '600' },
  },
  strict: true,
});

if (args.port === undefined) {
  console.error('usage: node server.mjs --port PORT [--ttl SECS]');
  process.exit(2);
}
const requestedPort = Number(args.port);
const accessTokenTTL = Number(args.ttl);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  console.error(`invalid --port ${args.port}`);
  process.exit(2);
}
if (!Number.isInteger(accessTokenTTL) || accessTokenTTL <= 0) {
  console.error(`invalid --ttl ${args.ttl}`);
  process.exit(2);
}

// Audience of access tokens meant for the gateway, and the resource
// indicator that maps to it (resource indicators must be absolute URIs).
const AUDIENCE = 'phigate';
const DEFAULT_RESOURCE = `urn:${AUDIENCE}`;

// Confidential service clients for the client credentials grant: id → groups.
// The secret of each is "<id>-secret".
const SERVICE_CLIENT_GROUPS = {
  'agent-ci': ['agents'],
  'clinician-svc': ['clinicians'],
  'nobody-svc': [],
};

// Groups of interactive users (authorization code and device flows).
function groupsFor(accountId) {
  switch (accountId) {
    case 'dr.rivera@demo.phigate':
      return ['clinicians'];
    case 'privacy.officer@demo.phigate':
      return ['reviewers'];
    default:
      return ['agents'];
  }
}

const clients = [
  ...Object.keys(SERVICE_CLIENT_GROUPS).map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    // client_secret_post is accepted for a client registered with
    // client_secret_basic as well (oidc-provider treats them alike).
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'db',
  })),
  {
    client_id: 'phigate-cli',
    client_name: 'phigate CLI',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    // Native clients may use any port on a loopback redirect (RFC 8252 §7.3).
    // ... and the web console's callback (the gateway's HTTP port).
    redirect_uris: ['http://127.0.0.1/callback', 'http://127.0.0.1/console/callback'],
    response_types: ['code'],
    grant_types: [
      'authorization_code',
      'refresh_token',
      'urn:ietf:params:oauth:grant-type:device_code',
    ],
  },
];

// Claims carried in access tokens besides the standard ones.
function groupClaims(groups) {
  return { groups, realm_access: { roles: groups } };
}

// Signing keys, newest first: the first key signs, all are published.
let signingKeys = [];

async function newSigningKey() {
  const { privateKey } = await promisify(generateKeyPair)('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  // RFC 7638 thumbprint as kid: unique per key, also across restarts.
  jwk.kid = await calculateJwkThumbprint(jwk, 'sha256');
  jwk.alg = 'RS256';
  jwk.use = 'sig';
  return jwk;
}

// Cookie signing keys shared by every Provider instance of this process, so
// browser sessions survive key rotation.
const cookieKeys = [randomBytes(32).toString('hex')];

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients,
    // Newest key first: selection for signing keeps keystore order among
    // equally suitable keys, so the first key signs everything.
    jwks: { keys: signingKeys },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'offline_access', 'email', 'groups', 'db'],
    claims: {
      // As at a real IdP, the e-mail claims come with the email scope only (phigate login
      // must ask for it when subject_claim = "email").
      openid: ['sub', 'groups'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // Put the scope claims into the ID token, not only into userinfo.
    conformIdTokenClaims: false,
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: id,
            email_verified: !id.includes('+unverified'),
            groups: groupsFor(id),
          };
        },
      };
    },
    async extraTokenClaims(_ctx, token) {
      if (token.accountId) {
        return groupClaims(groupsFor(token.accountId));
      }
      const groups = SERVICE_CLIENT_GROUPS[token.clientId];
      return groups ? groupClaims(groups) : undefined;
    },
    features: {
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      devInteractions: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        async defaultResource(_ctx, _client, oneOf) {
          return oneOf ?? DEFAULT_RESOURCE;
        },
        async getResourceServerInfo(_ctx, resourceIndicator) {
          const match = /^urn:([A-Za-z0-9._-]+)$/.exec(resourceIndicator);
          if (!match) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
          }
          return {
            scope: 'db',
            audience: match[1],
            accessTokenFormat: 'jwt',
            accessTokenTTL,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
        async useGrantedResource() {
          return true;
        },
      },
    },
    // Lifetimes in seconds. Access tokens for the gateway take theirs from
    // the resource server (--ttl); the rest are fixed.
    ttl: {
      AccessToken: accessTokenTTL,
      AuthorizationCode: 60,
      ClientCredentials: accessTokenTTL,
      DeviceCode: 600,
      Grant: 86400,
      IdToken: 3600,
      Interaction: 3600,
      RefreshToken: 86400,
      Session: 86400,
    },
    // Refresh tokens for the CLI whenever it may use the grant, without
    // requiring the offline_access scope.
    async issueRefreshToken(_ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  return { provider, handler: provider.callback() };
}

function sendJson(res, status, body) {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

const jwksKids = () => signingKeys.map((k) => k.kid);

async function main() {
  signingKeys = [await newSigningKey()];

  let current; // { provider, handler } of the live Provider instance
  let rotating = Promise.resolve();

  async function admin(req, res, url) {
    if (url.pathname === '/__admin/keys' && req.method === 'GET') {
      sendJson(res, 200, { kid: signingKeys[0].kid, jwks_kids: jwksKids() });
      return;
    }
    if (url.pathname === '/__admin/rotate' && req.method === 'POST') {
      req.resume(); // body, if any, is ignored
      const dropOld = ['1', 'true', 'yes'].includes(url.searchParams.get('drop_old') ?? '');
      // Serialise rotations so concurrent calls cannot lose a key.
      const done = rotating.then(async () => {
        const key = await newSigningKey();
        signingKeys = dropOld ? [key] : [key, ...signingKeys];
        current = buildProvider(current.provider.issuer);
        console.error(`idp: rotated signing key, kid=${key.kid} jwks=${jwksKids().join(',')}`);
        return key.kid;
      });
      rotating = done.catch(() => {});
      const kid = await done;
      sendJson(res, 200, { kid, jwks_kids: jwksKids() });
      return;
    }
    sendJson(res, 404, { error: 'not_found' });
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname.startsWith('/__admin/')) {
      admin(req, res, url).catch((err) => {
        console.error('idp admin error', err);
        if (!res.headersSent) sendJson(res, 500, { error: String(err) });
      });
      return;
    }
    current.handler(req, res);
  });
  // Do not let idle keep-alive connections delay shutdown.
  server.keepAliveTimeout = 1000;

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(requestedPort, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  current = buildProvider(issuer);

  const shutdown = (signal) => {
    console.error(`idp: ${signal}, shutting down`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));

  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
}

main().catch((err) => {
  console.error('idp: failed to start:', err);
  process.exit(1);
});

// A real OpenID Connect provider (the certified `oidc-provider` package) for TSLM's integration
// tests, on loopback. See README.md in this directory for the contract with the tests.
//
//   node tests/oidc/provider.mjs --port PORT --keys FILE [--kid KID --generate]
//                                [--issuer URL] [--ttl SECONDS]
//
// Prints exactly one line, `READY <port>`, on stdout once it listens; everything else goes to
// stderr. Exits 0 on SIGTERM or SIGINT.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

// stdout carries the READY line and nothing else: oidc-provider prints its notices with
// console.info, so send console.log/info to stderr.
console.log = console.error;
console.info = console.error;

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string' },
      keys: { type: 'string' },
      kid: { type: 'string' },
      generate: { type: 'boolean', default: false },
      issuer: { type: 'string' },
      ttl: { type: 'string', default: '300' },
    },
    strict: true,
  }));
} catch (e) {
  fail(e.message);
}

const port = Number(args.port);
if (args.port === undefined || !Number.isInteger(port) || port < 0 || port > 65535) {
  fail('--port PORT is required (0 picks a free port)');
}
const ttl = Number(args.ttl);
if (!Number.isSafeInteger(ttl) || ttl <= 0) fail('--ttl must be a positive integer');
if (!args.keys) fail('--keys FILE is required');

// --- signing keys -----------------------------------------------------------------------------
// FILE is a JWK Set of private RSA keys with kids. The first key signs; all of them are
// published at the JWKS endpoint. With --generate --kid KID, a fresh 2048-bit RSA key KID is
// generated and put first in FILE (which is created if missing; keys already there stay,
// published but no longer signing), unless FILE already starts with KID.
function readKeySet(file) {
  let set;
  try {
    set = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    fail(`cannot read the key set ${file}: ${e.message}`);
  }
  if (!Array.isArray(set?.keys)) fail(`${file} is not a JWK Set`);
  return set;
}

if (args.generate) {
  if (!args.kid) fail('--generate needs --kid KID');
  const existing = fs.existsSync(args.keys) ? readKeySet(args.keys).keys : [];
  if (existing[0]?.kid !== args.kid) {
    if (existing.some((k) => k.kid === args.kid)) {
      fail(`${args.keys} already holds a key ${args.kid} that is not the first`);
    }
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid: args.kid, alg: 'RS256', use: 'sig' };
    const tmp = `${args.keys}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify({ keys: [jwk, ...existing] }, null, 2)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, args.keys);
  }
}
const jwks = readKeySet(args.keys);
if (jwks.keys.length === 0) fail(`${args.keys} holds no keys`);
for (const [i, k] of jwks.keys.entries()) {
  if (k.kty !== 'RSA' || typeof k.d !== 'string' || typeof k.kid !== 'string' || !k.kid) {
    fail(`${args.keys}: key ${i} must be a private RSA JWK with a kid`);
  }
}
if (args.kid && args.kid !== jwks.keys[0].kid) {
  fail(`the first key in ${args.keys} is ${jwks.keys[0].kid}, not --kid ${args.kid}`);
}
const signingKid = jwks.keys[0].kid;
// Only RS256: without `alg`, oidc-provider would offer every RSA algorithm for each key.
const keys = jwks.keys.map((k) => ({ ...k, alg: 'RS256', use: 'sig' }));

// --- what tokens look like --------------------------------------------------------------------
// Resource indicators (RFC 8707) pick the audience; the default one is the gateway.
const GATEWAY_RESOURCE = 'urn:tslm:gateway';
const GATEWAY_AUDIENCE = 'tslm-gateway';
// `urn:tslm:audience:NAME` gets a token for audience NAME, for wrong-audience tests.
const OTHER_AUDIENCE_PREFIX = 'urn:tslm:audience:';
// `tslm:PATTERN` scopes become the `tslm_channels` claim: PATTERN, in request order. So do
// `tslm-claim:PATTERN` scopes, for tests where only the claim (not a `tslm:` scope) should grant.
const CHANNEL_SCOPE_PREFIXES = ['tslm:', 'tslm-claim:'];

function requestedScopes(ctx) {
  const scope = ctx.oidc.params.scope;
  return typeof scope === 'string' ? scope.split(' ').filter(Boolean) : [];
}

const configuration = {
  clients: [
    {
      client_id: 'tslm-test',
      client_secret: 'tslm-test-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
    {
      client_id: 'tslm-test-post',
      client_secret: 'tslm-test-secret',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  jwks: { keys },
  ttl: { ClientCredentials: ttl },
  // No end-user flows (and so no cookies) are used, but oidc-provider warns without keys.
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A token request without `resource` is for the gateway.
      defaultResource: () => GATEWAY_RESOURCE,
      getResourceServerInfo(ctx, resource) {
        let audience;
        if (resource === GATEWAY_RESOURCE) {
          audience = GATEWAY_AUDIENCE;
        } else if (resource.startsWith(OTHER_AUDIENCE_PREFIX)
          && resource.length > OTHER_AUDIENCE_PREFIX.length) {
          audience = resource.slice(OTHER_AUDIENCE_PREFIX.length);
        } else {
          throw new errors.InvalidTarget();
        }
        return {
          // Every scope the client asks for is granted (the test decides what it gets); the
          // token's `scope` claim is the requested scope string.
          scope: requestedScopes(ctx).join(' '),
          audience,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256', kid: signingKid } },
        };
      },
    },
  },
  async extraTokenClaims(_ctx, token) {
    if (!token.resourceServer) return undefined;
    const scopes = token.scope ? token.scope.split(' ') : [];
    const channels = [];
    for (const s of scopes) {
      const prefix = CHANNEL_SCOPE_PREFIXES.find((p) => s.startsWith(p) && s.length > p.length);
      if (prefix) channels.push(s.slice(prefix.length));
    }
    return { tslm_channels: channels };
  },
};

// --- serve ------------------------------------------------------------------------------------
// Listen first, so that with --port 0 the issuer can name the port actually chosen.
const HOST = '127.0.0.1';
const server = http.createServer();
server.on('error', (e) => fail(`cannot listen on ${HOST}:${port}: ${e.message}`));
server.listen(port, HOST, () => {
  const actual = server.address().port;
  const issuer = args.issuer ?? `http://${HOST}:${actual}`;
  let provider;
  try {
    provider = new Provider(issuer, configuration);
  } catch (e) {
    fail(`oidc-provider configuration: ${e.message}`);
  }
  provider.on('server_error', (_ctx, e) => console.error('server_error', e));
  provider.on('grant.error', (_ctx, e) => console.error('grant.error', e.message, e.error_description ?? ''));
  server.on('request', provider.callback());
  process.stdout.write(`READY ${actual}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

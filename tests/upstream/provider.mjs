// An OpenID provider configured like itsme (Belgian mobile ID), for quaygate's brokered-login tests.
//
// The provider is oidc-provider 9.13.3 (npm, certified by the OpenID Foundation), pinned in
// package-lock.json; this script only configures it. Like itsme:
//   - client authentication private_key_jwt only, RS256;
//   - PKCE required (S256: oidc-provider 9 knows no other method);
//   - id token and userinfo signed (RS256) then encrypted (RSA-OAEP-256 with A128CBC-HS256 or A256GCM),
//     to the key of the client's jwks_uri chosen by kid (use "enc");
//   - request objects accepted (signed with RS256, optionally encrypted to our "enc" key);
//   - the claims parameter with URI-named claims (the national register number);
//   - acr values basic / advanced (itsme's URIs);
//   - authorization codes live 3 minutes; no refresh tokens.
//
// Usage: node provider.mjs CONFIG.json, where the JSON (written by the Python test) holds
//   {port, issuer, jwks: {keys: [private JWKs]}, clients: [client metadata], accounts: {id: {claims}},
//    code_ttl?: seconds, login_age?: seconds, omit_auth_time?: true}
// Two knobs make the provider misbehave in ways a relying party must catch, its signature unchanged:
//   - login_age: a login is recorded (its auth_time) that many seconds before it happened, as by a
//     provider whose clock lags or that reports an earlier authentication than the one just asked for;
//   - omit_auth_time: the id token never carries auth_time, even when prompt=login or max_age asks.
// The login page is oidc-provider's own development interaction: any login name is an account id;
// a name ending in "-basic" logs in at the basic level, any other at the level asked for.
// It prints one line "listening <issuer>" once it serves.

import { readFileSync } from 'node:fs';
import * as querystring from 'node:querystring';

import Provider from 'oidc-provider';

const ACR_BASIC = 'http://itsme.services/V2/claim/acr_basic';
const ACR_ADVANCED = 'http://itsme.services/V2/claim/acr_advanced';
const NATIONAL_NUMBER = 'http://itsme.services/v2/claim/BENationalNumber';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts || {};

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: ['quaygate-upstream-test-cookie-key'] },
  clientAuthMethods: ['private_key_jwt'],
  acrValues: [ACR_BASIC, ACR_ADVANCED],
  claims: {
    openid: ['sub'],
    profile: ['given_name', 'family_name', 'locale'],
    acr: null,
    amr: null,
    [NATIONAL_NUMBER]: null,
  },
  features: {
    devInteractions: { enabled: true },
    encryption: { enabled: true },
    requestObjects: { enabled: true, requireSignedRequestObject: false },
    claimsParameter: { enabled: true },
    jwtUserinfo: { enabled: true },
    userinfo: { enabled: true },
    revocation: { enabled: false },
    introspection: { enabled: false },
  },
  enabledJWA: {
    clientAuthSigningAlgValues: ['RS256'],
    idTokenSigningAlgValues: ['RS256'],
    userinfoSigningAlgValues: ['RS256'],
    requestObjectSigningAlgValues: ['RS256'],
    idTokenEncryptionAlgValues: ['RSA-OAEP-256'],
    idTokenEncryptionEncValues: ['A128CBC-HS256', 'A256GCM'],
    userinfoEncryptionAlgValues: ['RSA-OAEP-256'],
    userinfoEncryptionEncValues: ['A128CBC-HS256', 'A256GCM'],
    requestObjectEncryptionAlgValues: ['RSA-OAEP-256'],
    requestObjectEncryptionEncValues: ['A128CBC-HS256', 'A256GCM'],
  },
  pkce: { required: () => true },
  ttl: {
    AuthorizationCode: config.code_ttl || 180, // itsme: 3 minutes
    AccessToken: 600,
    IdToken: 600,
    Interaction: 600,
    Session: 600,
    Grant: 600,
  },
  issueRefreshToken: async () => false,
  // Our JWKS is on 127.0.0.1 in these tests: a special-use address that oidc-provider's SSRF guard
  // refuses. Loopback only, for a test; a real itsme fetches a public https jwks_uri.
  async fetch(url, options) {
    const { hostname } = new URL(url);
    if (hostname !== '127.0.0.1') throw new Error(`the test provider fetches only from 127.0.0.1, not ${hostname}`);
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  async findAccount(ctx, id) {
    const known = accounts[id.replace(/-basic$/, '')];
    if (!known) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...known }; } };
  },
});
provider.proxy = false;

// The development login page sets no acr; itsme's app does (basic, or advanced after the PIN or a
// fingerprint). Finish the login step ourselves with the level asked for, so the essential acr holds.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || !/^\/interaction\/[^/]+$/.test(ctx.path)) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.prompt.name !== 'login') return next(); // consent: the development page's own handler
  const raw = await new Promise((resolve, reject) => {
    let body = '';
    ctx.req.setEncoding('utf8');
    ctx.req.on('data', (chunk) => { body += chunk; });
    ctx.req.on('end', () => resolve(body));
    ctx.req.on('error', reject);
  });
  const login = String(querystring.parse(raw).login || '');
  const asked = String(details.params.acr_values || '').split(' ');
  const acr = !login.endsWith('-basic') && asked.includes(ACR_ADVANCED) ? ACR_ADVANCED : ACR_BASIC;
  const amr = acr === ACR_ADVANCED ? ['mfa', 'pin'] : ['swk'];
  const ts = Math.floor(Date.now() / 1000) - (config.login_age || 0);
  await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: login, acr, amr, ts } },
    { mergeWithLastSubmission: false });
  ctx.respond = false; // interactionFinished wrote the 303 itself
  return undefined;
});

if (config.omit_auth_time) {
  const { payload } = provider.IdToken.prototype;
  provider.IdToken.prototype.payload = async function withoutAuthTime() {
    const claims = await payload.call(this);
    delete claims.auth_time;
    return claims;
  };
}

// Refusals go to the log the test keeps (never a claim value: errors carry codes and descriptions).
for (const event of ['authorization.error', 'grant.error', 'userinfo.error', 'server_error']) {
  provider.on(event, (ctx, err) => {
    const inner = err.cause && err.cause.cause ? ` <- ${err.cause.cause.message || err.cause.cause}` : '';
    const cause = err.cause ? ` (cause: ${err.cause.message || err.cause}${inner})` : '';
    process.stderr.write(`${event}: ${err.error || err.name}: ${err.error_description || err.message}${cause}\n`);
  });
}

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${config.issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}

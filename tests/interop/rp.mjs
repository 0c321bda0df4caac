// A certified relying party (openid-client 6, unchanged) against quaygate's provider.
//
// Input: one JSON object on stdin (issuer, clients, keys, the login cookie); output: one JSON object
// on stdout, one entry per step: {ok: true, ...facts} or {ok: false, error, ...}. A failed step does
// not stop the independent ones, so tests/interop/test_openid_client.py can say exactly which pass.
import * as client from 'openid-client'

const input = JSON.parse(await new Promise((resolve) => {
  let data = ''
  process.stdin.on('data', (chunk) => { data += chunk })
  process.stdin.on('end', () => resolve(data))
}))

const issuer = new URL(input.issuer)
const insecure = { execute: [client.allowInsecureRequests] } // an http://localhost issuer in tests
const results = {}

async function step(name, fn) {
  try {
    results[name] = { ok: true, ...(await fn()) }
  } catch (err) {
    results[name] = {
      ok: false,
      error: `${err.name}: ${err.message}`,
      code: err.code,
      oauth_error: err.error ? `${err.error}: ${err.error_description ?? ''}` : undefined,
      cause: err.cause && typeof err.cause === 'object' ? JSON.stringify(err.cause).slice(0, 600) : undefined,
    }
  }
  return results[name]
}

async function privateKey(jwk) {
  // openid-client's PrivateKeyJwt takes {key, kid}: the kid goes into the assertion's header.
  const alg = jwk.kty === 'EC' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
  const { kid, ...material } = jwk
  return { key: await crypto.subtle.importKey('jwk', material, alg, false, ['sign']), kid }
}

function claimsOf(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString())
}

function headerOf(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[0], 'base64url').toString())
}

async function callApi(config, token, options) {
  const res = await client.fetchProtectedResource(config, token, new URL('/api/v1/releases', issuer), 'GET',
    undefined, undefined, options)
  const body = await res.json()
  return { status: res.status, items: Array.isArray(body.items) ? body.items.length : null, body: res.ok ? undefined : body }
}

// ---- discovery and client credentials with private_key_jwt ------------------------------------------
const line = input.clients.line
let lineConfig
await step('discovery', async () => {
  lineConfig = await client.discovery(issuer, line.client_id, { token_endpoint_auth_method: 'private_key_jwt' },
    client.PrivateKeyJwt(await privateKey(line.private_jwk)), insecure)
  const m = lineConfig.serverMetadata()
  return { issuer: m.issuer, token_endpoint: m.token_endpoint, jwks_uri: m.jwks_uri,
    authorization_endpoint: m.authorization_endpoint, userinfo_endpoint: m.userinfo_endpoint }
})

let lineTokens
await step('client_credentials_private_key_jwt', async () => {
  lineTokens = await client.clientCredentialsGrant(lineConfig, { scope: 'releases:read' })
  return { token_type: lineTokens.token_type, expires_in: lineTokens.expires_in, scope: lineTokens.scope,
    aud: claimsOf(lineTokens.access_token).aud }
})

await step('api_with_bearer_token', async () => callApi(lineConfig, lineTokens.access_token))

// ---- client credentials with DPoP (RFC 9449) ----------------------------------------------------------
const bound = input.clients.dpop
let dpopConfig, dpop, dpopTokens
await step('client_credentials_dpop', async () => {
  dpopConfig = await client.discovery(issuer, bound.client_id, { token_endpoint_auth_method: 'private_key_jwt' },
    client.PrivateKeyJwt(await privateKey(bound.private_jwk)), insecure)
  dpop = client.getDPoPHandle(dpopConfig, await client.randomDPoPKeyPair('ES256'))
  dpopTokens = await client.clientCredentialsGrant(dpopConfig, { scope: 'releases:read' }, { DPoP: dpop })
  return { token_type: dpopTokens.token_type, cnf: claimsOf(dpopTokens.access_token).cnf }
})

await step('api_with_dpop_token', async () => callApi(dpopConfig, dpopTokens.access_token, { DPoP: dpop }))

await step('api_dpop_token_without_proof_refused', async () => {
  const res = await fetch(new URL('/api/v1/releases', issuer), { headers: { authorization: `Bearer ${dpopTokens.access_token}` } })
  if (res.status !== 401) throw new Error(`a DPoP-bound token used as a bearer token got ${res.status}`)
  return { status: res.status, www_authenticate: res.headers.get('www-authenticate') }
})

// ---- authorization code with PKCE, refresh, userinfo (the driver app, a public client) ---------------
const app = input.clients.driver_app
let appConfig, codeTokens
const visited = []

async function login(authorizationUrl) {
  // The browser part: the provider already knows this browser (the login session cookie), so it
  // answers with redirects that we follow by hand until one reaches the client's redirect URI.
  let url = authorizationUrl
  for (let hop = 0; hop < 10; hop++) {
    if (url.href.startsWith(app.redirect_uri)) return url
    const res = await fetch(url, { redirect: 'manual', headers: { cookie: input.cookie } })
    visited.push(`${res.status} ${url.pathname}`)
    const location = res.headers.get('location')
    if (!location) throw new Error(`no redirect from ${url.pathname}: ${res.status} ${(await res.text()).slice(0, 300)}`)
    url = new URL(location, url)
  }
  throw new Error('too many redirects')
}

await step('authorization_code_pkce', async () => {
  // The app registered id_token_signed_response_alg: openid-client then accepts that alg only, and its
  // non-repudiation checks verify the id token's signature with our JWKS.
  appConfig = await client.discovery(issuer, app.client_id,
    { token_endpoint_auth_method: 'none', id_token_signed_response_alg: app.id_token_signed_response_alg },
    client.None(), insecure)
  client.enableNonRepudiationChecks(appConfig)
  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const url = client.buildAuthorizationUrl(appConfig, {
    redirect_uri: app.redirect_uri, scope: app.scope, state, nonce,
    code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
  })
  const callback = await login(url)
  codeTokens = await client.authorizationCodeGrant(appConfig, callback,
    { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true })
  const idClaims = codeTokens.claims()
  return { token_type: codeTokens.token_type, scope: codeTokens.scope, has_refresh_token: !!codeTokens.refresh_token,
    id_token: { sub: idClaims.sub, acr: idClaims.acr, amr: idClaims.amr, aud: idClaims.aud },
    id_token_alg: headerOf(codeTokens.id_token).alg, access_token_alg: headerOf(codeTokens.access_token).alg,
    access_sub: claimsOf(codeTokens.access_token).sub, visited }
})

await step('api_with_person_token', async () => callApi(appConfig, codeTokens.access_token))

let refreshed
await step('refresh', async () => {
  refreshed = await client.refreshTokenGrant(appConfig, codeTokens.refresh_token)
  return { rotated: !!refreshed.refresh_token && refreshed.refresh_token !== codeTokens.refresh_token,
    new_access_token: refreshed.access_token !== codeTokens.access_token }
})

await step('userinfo', async () => {
  const token = (refreshed ?? codeTokens).access_token
  const info = await client.fetchUserInfo(appConfig, token, codeTokens.claims().sub)
  return { sub: info.sub, keys: Object.keys(info).sort() }
})

await step('refresh_reuse_refused', async () => {
  try {
    await client.refreshTokenGrant(appConfig, codeTokens.refresh_token)
  } catch (err) {
    return { error: err.error ?? err.code }
  }
  throw new Error('a rotated refresh token was accepted again')
})

await step('family_revoked_after_reuse', async () => {
  try {
    await client.fetchUserInfo(appConfig, refreshed.access_token, codeTokens.claims().sub)
  } catch (err) {
    return { refused: true, error: err.cause?.[0]?.parameters?.error ?? err.error ?? err.code }
  }
  throw new Error('an access token of a revoked family was still accepted')
})

// ---- the confidential console: pushed authorization request (RFC 9126), private_key_jwt -------------
const console_ = input.clients.console
await step('console_par_code_flow', async () => {
  const config = await client.discovery(issuer, console_.client_id, { token_endpoint_auth_method: 'private_key_jwt' },
    client.PrivateKeyJwt(await privateKey(console_.private_jwk)), insecure)
  client.enableNonRepudiationChecks(config)
  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const url = await client.buildAuthorizationUrlWithPAR(config, {
    redirect_uri: console_.redirect_uri, scope: 'openid profile', state,
    code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
  })
  const saved = app.redirect_uri
  app.redirect_uri = console_.redirect_uri
  let callback
  try { callback = await login(url) } finally { app.redirect_uri = saved }
  const tokens = await client.authorizationCodeGrant(config, callback, { pkceCodeVerifier: verifier, expectedState: state })
  return { sub: tokens.claims().sub, request_uri: url.searchParams.has('request_uri'), id_token_alg: headerOf(tokens.id_token).alg }
})

process.stdout.write(JSON.stringify(results))

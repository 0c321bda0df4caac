/* QG.oidc: the OpenID Connect public client shared by the driver app (/app/) and the admin console
   (/console/), each registered with our own provider. Authorization code flow with PKCE S256
   (RFC 7636 §4.2), state (RFC 6749 §10.12), nonce (OIDC Core §3.1.2.1), the RFC 9207 iss check, and the
   id token's alg, signature, iss, aud, exp and nonce (OIDC Core §3.1.3.7). State lives in sessionStorage
   under the page's own prefix (never localStorage): it dies with the tab. */
"use strict";
QG.oidc = function (prefix, configUrl, home) {
  var store = window.sessionStorage, cfg = null, disco = null;

  function rnd(n) { var a = new Uint8Array(n); crypto.getRandomValues(a); return QG.b64e(a); }
  function sha256(s) { return crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)).then(QG.b64e); }
  function get(k) { try { return JSON.parse(store.getItem(prefix + k)); } catch (e) { return null; } }
  function put(k, v) { if (v == null) store.removeItem(prefix + k); else store.setItem(prefix + k, JSON.stringify(v)); }
  function bytes(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    var bin = atob(s + "===".slice((s.length + 3) % 4)), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function part(jwt, i) { return JSON.parse(new TextDecoder().decode(bytes(jwt.split(".")[i]))); }
  function now() { return Math.floor(Date.now() / 1000); }

  function configure() {
    if (cfg && disco) return Promise.resolve(cfg);
    return Promise.all([QG.call("GET", configUrl), QG.call("GET", "/.well-known/openid-configuration")])
      .then(function (r) { cfg = r[0]; disco = r[1]; return cfg; });
  }

  // To the authorization endpoint; ``extra`` adds request parameters (acr_values), ``keep`` what the
  // page wants back after the callback.
  function login(extra, keep) {
    return configure().then(function () {
      var verifier = rnd(32), state = rnd(16), nonce = rnd(16);
      return sha256(verifier).then(function (challenge) {
        put("pending", Object.assign({}, keep || {}, {verifier: verifier, state: state, nonce: nonce}));
        var q = new URLSearchParams(Object.assign({response_type: "code", client_id: cfg.client_id,
          redirect_uri: cfg.redirect_uri, scope: cfg.scope, state: state, nonce: nonce, code_challenge: challenge,
          code_challenge_method: "S256"}, extra || {}));
        location.assign(disco.authorization_endpoint + "?" + q.toString());
      });
    });
  }

  function tokenRequest(form) {
    return fetch(disco.token_endpoint, {method: "POST", body: new URLSearchParams(form), cache: "no-store",
                                        headers: {"Accept": "application/json"}, credentials: "omit"})
      .catch(function () { throw QG.Problem("network", 0); })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (data) {
          if (!r.ok) throw QG.Problem(data.error || "http_" + r.status, r.status, data.error_description);
          return data;
        });
      });
  }

  // OIDC Core §3.1.3.7: the alg the client registered (item 7; RS256 by default), the signature with
  // the provider's published key of that alg, then iss, aud, exp, nonce. An ES256 signature is raw r||s
  // (RFC 7518 §3.4), which is what WebCrypto's ECDSA verify takes.
  function verifyIdToken(idt, nonce) {
    var parts = idt.split("."), header = part(idt, 0), body = part(idt, 1);
    var algs = {RS256: {name: "RSASSA-PKCS1-v1_5", hash: "SHA-256"}, PS256: {name: "RSA-PSS", hash: "SHA-256"},
                ES256: {name: "ECDSA", namedCurve: "P-256", hash: "SHA-256"}};
    var expected = cfg.id_token_signed_response_alg || "RS256", alg = algs[header.alg];
    if (!alg || header.alg !== expected) return Promise.reject(QG.Problem("id_token_alg"));
    if (body.iss !== cfg.issuer) return Promise.reject(QG.Problem("id_token_iss"));
    var aud = [].concat(body.aud);
    if (aud.indexOf(cfg.client_id) < 0 || (aud.length > 1 && body.azp !== cfg.client_id)) return Promise.reject(QG.Problem("id_token_aud"));
    if (!(body.exp > now() - 60)) return Promise.reject(QG.Problem("id_token_expired"));
    if (body.nonce !== nonce) return Promise.reject(QG.Problem("id_token_nonce"));
    return QG.call("GET", disco.jwks_uri).then(function (jwks) {
      var jwk = (jwks.keys || []).filter(function (k) { return k.kid === header.kid; })[0];
      if (!jwk || (jwk.alg && jwk.alg !== header.alg)) throw QG.Problem("id_token_kid");  // RFC 7517 §4.4
      var pub = {kty: jwk.kty, n: jwk.n, e: jwk.e, crv: jwk.crv, x: jwk.x, y: jwk.y, ext: true};
      return crypto.subtle.importKey("jwk", pub, alg, false, ["verify"]).then(function (key) {
        var params = alg.name === "RSA-PSS" ? {name: "RSA-PSS", saltLength: 32} : alg.name === "ECDSA" ? {name: "ECDSA", hash: "SHA-256"} : alg;
        return crypto.subtle.verify(params, key, bytes(parts[2]), new TextEncoder().encode(parts[0] + "." + parts[1]));
      }).then(function (ok) { if (!ok) throw QG.Problem("id_token_signature"); return body; });
    });
  }

  // Back from the authorization endpoint: the code for tokens, the id token checked. Resolves with the
  // token response and what login() was asked to keep; the code leaves the address bar and history.
  function callback() {
    var q = new URLSearchParams(location.search), pending = get("pending");
    put("pending", null);
    history.replaceState(null, "", home + ((pending && pending.back) || ""));
    if (q.get("error")) return Promise.reject(QG.Problem(q.get("error") === "login_required" ? "login_required" : "oauth"));
    if (!pending || !q.get("state") || q.get("state") !== pending.state) return Promise.reject(QG.Problem("oauth"));
    if (q.get("iss") && q.get("iss") !== cfg.issuer) return Promise.reject(QG.Problem("oauth"));  // RFC 9207 §2.4
    return tokenRequest({grant_type: "authorization_code", code: q.get("code") || "", redirect_uri: cfg.redirect_uri,
                         client_id: cfg.client_id, code_verifier: pending.verifier})
      .then(function (data) {
        if (!data.id_token) throw QG.Problem("oauth");
        return verifyIdToken(data.id_token, pending.nonce).then(function () { return {tokens: data, kept: pending}; });
      });
  }

  return {configure: configure, login: login, callback: callback, tokenRequest: tokenRequest, get: get, put: put,
          now: now, part: part, config: function () { return cfg; }, discovery: function () { return disco; }};
};

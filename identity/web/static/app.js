/* /app/: the driver app, an OpenID Connect public client of our own provider.
   Authorization code flow with PKCE S256 (RFC 7636 §4.2), state (RFC 6749 §10.12) and nonce (OIDC Core
   §3.1.2.1); the id token's signature, iss, aud, exp and nonce are checked (OIDC Core §3.1.3.7).
   Tokens live in memory and sessionStorage only (never localStorage): they die with the tab. The
   access token is refreshed with the rotating refresh token (RFC 6749 §6) when it expires. */
"use strict";
(function () {
  var store = window.sessionStorage, K = "qg.app.", cfg = null, disco = null, tokens = null;
  var $ = QG.$, t = QG.t;

  function rnd(n) { var a = new Uint8Array(n); crypto.getRandomValues(a); return QG.b64e(a); }
  function sha256(s) { return crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)).then(QG.b64e); }
  function get(k) { try { return JSON.parse(store.getItem(K + k)); } catch (e) { return null; } }
  function put(k, v) { if (v == null) store.removeItem(K + k); else store.setItem(K + k, JSON.stringify(v)); }
  function b64json(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    var bin = atob(s + "===".slice((s.length + 3) % 4)), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }
  function claims(jwt) { return JSON.parse(new TextDecoder().decode(b64json(jwt.split(".")[1]))); }
  function now() { return Math.floor(Date.now() / 1000); }

  function status(text) { $("status").textContent = text || ""; }
  function fail(err) { QG.say($("msg"), QG.explain(err)); }

  function configure() {
    if (cfg && disco) return Promise.resolve();
    return Promise.all([QG.call("GET", "/app/config.json"), QG.call("GET", "/.well-known/openid-configuration")])
      .then(function (r) { cfg = r[0]; disco = r[1]; });
  }

  // ---- login: to the authorization endpoint and back to /app/callback ----
  function login() {
    put("loggedout", null);
    status(t("app.signing_in"));
    return configure().then(function () {
      var verifier = rnd(32), state = rnd(16), nonce = rnd(16);
      return sha256(verifier).then(function (challenge) {
        put("pending", {verifier: verifier, state: state, nonce: nonce});
        var q = new URLSearchParams({response_type: "code", client_id: cfg.client_id, redirect_uri: cfg.redirect_uri,
          scope: cfg.scope, state: state, nonce: nonce, code_challenge: challenge, code_challenge_method: "S256"});
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

  function keep(data, previous) {
    tokens = {access_token: data.access_token, expires_at: now() + (data.expires_in || 300),
              refresh_token: data.refresh_token || (previous && previous.refresh_token),
              id_token: data.id_token || (previous && previous.id_token)};
    put("tokens", tokens);
  }

  // OIDC Core §3.1.3.7: the alg we registered (item 7; RS256 by default), the signature with the
  // provider's published key of that alg, then iss, aud, exp, nonce. An ES256 signature is raw r||s
  // (RFC 7518 §3.4), which is what WebCrypto's ECDSA verify takes.
  function verifyIdToken(idt, nonce) {
    var parts = idt.split("."), header = JSON.parse(new TextDecoder().decode(b64json(parts[0]))), body = claims(idt);
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
        return crypto.subtle.verify(params, key, b64json(parts[2]), new TextEncoder().encode(parts[0] + "." + parts[1]));
      }).then(function (ok) { if (!ok) throw QG.Problem("id_token_signature"); return body; });
    });
  }

  function callback() {
    var q = new URLSearchParams(location.search), pending = get("pending");
    put("pending", null);
    history.replaceState(null, "", "/app/");  // the code leaves the address bar and the history
    if (q.get("error")) return Promise.reject(QG.Problem(q.get("error") === "login_required" ? "login_required" : "oauth"));
    if (!pending || !q.get("state") || q.get("state") !== pending.state) return Promise.reject(QG.Problem("oauth"));
    if (q.get("iss") && q.get("iss") !== cfg.issuer) return Promise.reject(QG.Problem("oauth"));  // RFC 9207 §2.4
    return tokenRequest({grant_type: "authorization_code", code: q.get("code") || "", redirect_uri: cfg.redirect_uri,
                         client_id: cfg.client_id, code_verifier: pending.verifier})
      .then(function (data) {
        if (!data.id_token) throw QG.Problem("oauth");
        return verifyIdToken(data.id_token, pending.nonce).then(function () { keep(data); });
      });
  }

  var refreshing = null;
  function refresh() {
    if (!tokens || !tokens.refresh_token) return Promise.reject(QG.Problem("login_required", 401));
    if (!refreshing) {
      var previous = tokens;
      refreshing = tokenRequest({grant_type: "refresh_token", refresh_token: previous.refresh_token, client_id: cfg.client_id})
        .then(function (data) { keep(data, previous); }, function (err) {
          if (err.status === 400 || err.status === 401) { tokens = null; put("tokens", null); }
          throw err;
        })
        .then(function () { refreshing = null; }, function (err) { refreshing = null; throw err; });
    }
    return refreshing;
  }

  function api(method, path, body) {
    var fresh = tokens && tokens.expires_at - 30 > now() ? Promise.resolve() : refresh();
    var send = function () { return QG.call(method, cfg.api + path, body, tokens.access_token); };
    return fresh.then(send).catch(function (err) {
      if (err.status === 401 && tokens && tokens.refresh_token) return refresh().then(send);
      throw err;
    });
  }

  // ---- the pickups ----
  function container(cn) { return cn.length === 11 ? cn.slice(0, 4) + " " + cn.slice(4, 10) + " " + cn.slice(10) : cn; }
  function range(a, b) { return QG.when(a, "long") + " – " + QG.when(b, new Date(a).toDateString() === new Date(b).toDateString() ? "time" : "long"); }

  function row(dl, label, value) { dl.appendChild(QG.el("dt", null, label)); dl.appendChild(QG.el("dd", null, value)); }

  function gateText(r, events) {
    if (r.state === "completed" && r.gate_out_at) return t("gate.out", {time: QG.when(r.gate_out_at, "long")});
    if (r.gate_in_at) return t("gate.in", {time: QG.when(r.gate_in_at, "long")});
    var last = (events || []).filter(function (e) { return /gate/.test(e.type); }).pop();
    if (last) {
      var key = /override/.test(last.type) ? "gate.override" : /refus|denied/.test(last.type) ? "gate.refused" : "gate.in";
      return t(key, {time: QG.when(last.at, "long")});
    }
    return t("gate.none");
  }

  function card(r) {
    var li = QG.el("li", {"class": "card", "data-release": r.id, "data-container": r.container_number});
    li.appendChild(QG.el("h2", {"class": "cn", "aria-label": r.container_number.split("").join(" ")}, container(r.container_number)));
    li.appendChild(QG.el("span", {"class": "state"}, t("state." + r.state)));
    if (r.state === "active" || r.state === "nominated") {
      li.appendChild(QG.el("p", {"class": r.pickable && !r.blocked ? "ready" : "notready"},
                           r.blocked ? t("card.blocked") : r.pickable ? t("card.ready") : t("card.not_ready")));
    }
    var dl = QG.el("dl"), n = r.nomination;
    row(dl, t("card.terminal"), r.terminal);
    row(dl, t("card.slot"), n && n.slot ? range(n.slot.start, n.slot.end) : t("card.no_slot"));
    row(dl, t("card.valid"), range(r.valid_from, r.valid_until));
    if (n && n.plate) row(dl, t("card.truck"), n.plate.text + " (" + n.plate.country + ")");
    var gate = QG.el("dd", {"class": "gate"}, gateText(r));
    dl.appendChild(QG.el("dt", null, t("card.gate"))); dl.appendChild(gate);
    li.appendChild(dl);
    var lights = QG.el("ul", {"class": "lights"});
    ["commercial", "customs", "terminal"].forEach(function (kind) {
      var s = (r.lights[kind] || {}).status || "red";
      var item = QG.el("li", {"class": "light", "data-light": kind, "data-status": s});
      item.appendChild(QG.el("span", {"class": "dot " + s, "aria-hidden": "true"}, {green: "✓", red: "✕", scan: "!"}[s] || "?"));
      item.appendChild(QG.el("span", null, t("light." + kind) + ": " + t("light." + s)));
      lights.appendChild(item);
    });
    li.appendChild(lights);
    var answer = n && n.driver_response ? n.driver_response.status : "pending";
    if (answer === "accepted" || answer === "refused") {
      li.appendChild(QG.el("p", {"class": "status", "data-response": answer}, t("card." + answer)));
    } else if (r.state === "nominated") li.appendChild(actions(r));
    if (r.state === "nominated" && !r.gate_in_at) {
      api("GET", "/releases/" + r.id + "/events").then(function (ev) { gate.textContent = gateText(r, ev.items); }, function () { /* keep */ });
    }
    return li;
  }

  // Accept, or refuse with a reason from the release service's closed list (no free text).
  function actions(r) {
    var box = QG.el("div"), row = QG.el("div", {"class": "row"}), why = QG.el("div", {hidden: ""});
    var refuse = QG.el("button", {"class": "secondary", type: "button", "data-action": "refuse"}, t("card.refuse"));
    var accept = QG.el("button", {"class": "primary", type: "button", "data-action": "accept"}, t("card.accept"));
    function respond(kind, button, body) {
      QG.busy(button, true);
      QG.say($("msg"), "");
      api("POST", "/releases/" + r.id + "/nomination:" + kind, body)
        .then(function () { QG.say($("msg"), t(kind === "accept" ? "card.accepted" : "card.refused"), true); return load(); })
        .catch(function (err) { QG.busy(button, false); fail(err); });
    }
    accept.addEventListener("click", function () { respond("accept", accept); });
    refuse.addEventListener("click", function () { row.hidden = true; why.hidden = false; });
    why.appendChild(QG.el("p", {"class": "status"}, t("card.refuse_why")));
    var menu = QG.el("div", {"class": "menu"});
    ["unavailable", "wrong_truck", "other"].forEach(function (reason) {
      var b = QG.el("button", {"class": "secondary", type: "button", "data-reason": reason}, t("reason." + reason));
      b.addEventListener("click", function () { respond("refuse", b, {reason: reason}); });
      menu.appendChild(b);
    });
    var cancel = QG.el("button", {"class": "primary", type: "button"}, t("common.cancel"));
    cancel.addEventListener("click", function () { why.hidden = true; row.hidden = false; });
    menu.appendChild(cancel);
    why.appendChild(menu);
    row.appendChild(refuse); row.appendChild(accept);
    box.appendChild(row); box.appendChild(why);
    return box;
  }

  function load() {
    status(t("app.loading"));
    return api("GET", "/releases").then(function (page) {
      var list = $("cards"), items = page.items || [];
      list.textContent = "";
      items.forEach(function (r) { list.appendChild(card(r)); });
      status(items.length ? t("app.updated", {time: QG.when(new Date().toISOString(), "time")}) : t("app.empty"));
      $("menu").hidden = false; $("refresh").hidden = false; $("signin").hidden = true;
    });
  }

  function loggedOutView(err) {
    status(get("loggedout") ? t("app.logged_out") : "");
    if (err) fail(err);
    $("signin").hidden = false; $("refresh").hidden = true; $("menu").hidden = true;
  }

  function logout() {
    var idt = tokens && tokens.id_token;
    tokens = null; put("tokens", null); put("loggedout", true);
    var end = disco.end_session_endpoint || cfg.issuer + "/oauth2/logout";
    var q = new URLSearchParams({post_logout_redirect_uri: cfg.post_logout_redirect_uri, client_id: cfg.client_id});
    if (idt) q.set("id_token_hint", idt);
    location.assign(end + "?" + q.toString());  // RP-initiated logout §2: ends the provider session too
  }

  function start() {
    tokens = get("tokens");
    return configure().then(function () {
      if (location.pathname === "/app/callback") return callback().then(load);
      if (tokens) return load();
      if (get("loggedout")) return loggedOutView();
      return login();
    }).catch(function (err) {
      if (!navigator.onLine) { status(t("app.offline")); $("refresh").hidden = false; return; }
      if (err.status === 401 || err.code === "login_required") { tokens = null; put("tokens", null); }
      if (tokens) { status(""); fail(err); $("refresh").hidden = false; $("menu").hidden = false; return; }
      loggedOutView(err);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("refresh").addEventListener("click", function () { QG.say($("msg"), ""); (tokens ? load() : start()).catch(fail); });
    $("signin").addEventListener("click", function () { QG.say($("msg"), ""); login().catch(fail); });
    $("logout").addEventListener("click", logout);
    start();
  });
})();

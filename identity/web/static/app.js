/* /app/: the driver app, an OpenID Connect public client of our own provider (the flow and the id token
   checks in oidc.js: code + PKCE S256, state, nonce, OIDC Core §3.1.3.7).
   Tokens live in memory and sessionStorage only (never localStorage): they die with the tab. The
   access token is refreshed with the rotating refresh token (RFC 6749 §6) when it expires. */
"use strict";
(function () {
  var oidc = QG.oidc("qg.app.", "/app/config.json", "/app/"), get = oidc.get, put = oidc.put, now = oidc.now;
  var tokenRequest = oidc.tokenRequest, cfg = null, disco = null, tokens = null;
  var $ = QG.$, t = QG.t;

  function status(text) { $("status").textContent = text || ""; }
  function fail(err) { QG.say($("msg"), QG.explain(err)); }

  function configure() {
    return oidc.configure().then(function () { cfg = oidc.config(); disco = oidc.discovery(); });
  }

  // ---- login: to the authorization endpoint and back to /app/callback ----
  function login() {
    put("loggedout", null);
    status(t("app.signing_in"));
    return oidc.login();
  }

  function keep(data, previous) {
    tokens = {access_token: data.access_token, expires_at: now() + (data.expires_in || 300),
              refresh_token: data.refresh_token || (previous && previous.refresh_token),
              id_token: data.id_token || (previous && previous.id_token)};
    put("tokens", tokens);
  }

  function callback() {
    return oidc.callback().then(function (r) { keep(r.tokens); });
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

  function api(method, path, body, headers) {
    var fresh = tokens && tokens.expires_at - 30 > now() ? Promise.resolve() : refresh();
    var send = function () { return QG.call(method, cfg.api + path, body, tokens.access_token, headers); };
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
      var why = r.blocked ? "blocked" : r.pickable ? "ready" : Date.parse(r.valid_from) > Date.now() ? "from" : "not_ready";
      li.appendChild(QG.el("p", {"class": r.pickable ? "ready" : "notready"}, t("card." + why, {time: QG.when(r.valid_from, "long")})));
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
    if (answer !== "pending") li.appendChild(QG.el("p", {"class": "status", "data-response": answer}, t("card." + answer)));
    if (r.state === "nominated" && answer !== "refused") li.appendChild(actions(r, answer !== "pending"));
    if (r.state === "nominated" && !r.gate_in_at) {
      api("GET", "/releases/" + r.id + "/events").then(function (ev) { gate.textContent = gateText(r, ev.items); }, function () { /* keep */ });
    }
    return li;
  }

  // Accept, or refuse with a reason from the release service's closed list (no free text). If-Match binds
  // the answer to the version the card shows (RFC 9110 §13.1.1): changed since (another truck), it is 412,
  // nothing is recorded, and the list is read again.
  function actions(r, accepted) {
    var box = QG.el("div"), row = QG.el("div", {"class": "row"}), why = QG.el("div", {hidden: ""});
    var refuse = QG.el("button", {"class": "secondary", type: "button", "data-action": "refuse"}, t("card.refuse"));
    var accept = QG.el("button", {"class": "primary", type: "button", "data-action": "accept"}, t("card.accept"));
    function respond(kind, button, body) {
      QG.busy(button, true);
      QG.say($("msg"), "");
      api("POST", "/releases/" + r.id + "/nomination:" + kind, body, {"If-Match": '"' + r.version + '"'})
        .then(function () { QG.say($("msg"), t(kind === "accept" ? "card.accepted" : "card.refused"), true); return load(); })
        .catch(function (err) {
          QG.busy(button, false);
          if (err.status !== 412) return fail(err);
          QG.say($("msg"), t("card.changed"));
          return load().catch(fail);
        });
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
    row.appendChild(refuse); if (!accepted) row.appendChild(accept);
    box.appendChild(row); box.appendChild(why);
    return box;
  }

  // The live pickups, each state apart, every page (tests/test_driver_app_listing.py says why).
  var LIVE = ["gated_in", "nominated"], PAGE = 500, MAX_PAGES = 20;

  function pages(state, cursor, n, items) {
    var q = "?state=" + state + "&limit=" + PAGE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    return api("GET", "/releases" + q).then(function (page) {
      items = items.concat(page.items || []);
      return page.next_cursor && n + 1 < MAX_PAGES ? pages(state, page.next_cursor, n + 1, items) : items;
    });
  }

  function load() {
    status(t("app.loading"));
    return Promise.all(LIVE.map(function (state) { return pages(state, null, 0, []); })).then(function (found) {
      var list = $("cards"), items = [].concat.apply([], found);
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

  // The tokens dropped, their refresh token revoked (RFC 7009): it (and its grant) outlives the provider
  // session, 14 days to 12 h (review 120, finding 1). keepalive: the request outlives this page.
  function drop() {
    var rt = tokens && tokens.refresh_token;
    tokens = null; put("tokens", null);
    if (rt && disco.revocation_endpoint) fetch(disco.revocation_endpoint, {method: "POST", keepalive: true, credentials: "omit",
      body: new URLSearchParams({token: rt, token_type_hint: "refresh_token", client_id: cfg.client_id})}).catch(function () {});
  }

  function logout() {
    var idt = tokens && tokens.id_token;
    drop(); put("loggedout", true);
    var end = disco.end_session_endpoint || cfg.issuer + "/oauth2/logout";
    var q = new URLSearchParams({post_logout_redirect_uri: cfg.post_logout_redirect_uri, client_id: cfg.client_id});
    if (idt) q.set("id_token_hint", idt);
    location.assign(end + "?" + q.toString());  // RP-initiated logout §2: ends the provider session too
  }

  function start() {
    tokens = get("tokens");
    return configure().then(function () {
      if (location.pathname === "/app/callback") return callback().then(load);
      // Tokens of a session the browser no longer holds (a login since): the live one's (review 150, finding 2).
      if (tokens && cfg.sid && cfg.sid !== oidc.part(tokens.id_token, 1).sid) drop();
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

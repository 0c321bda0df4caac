/* /console/: the admin console, an OpenID Connect public client of our own provider (role admin_console):
   the flow and the id token checks in oidc.js, with a passkey login asked with acr_values (OIDC Core
   §3.1.2.1). The access token lives in sessionStorage only and is not refreshed: when it expires, or the
   API asks for a stronger login (RFC 9470), the officer signs in again. */
"use strict";
(function () {
  var oidc = QG.oidc("qg.console.", "/console/config.json", "/console/"), get = oidc.get, put = oidc.put;
  var now = oidc.now, cfg = null, tokens = null, current = null;
  var $ = QG.$, t = QG.t;

  function status(text) { $("status").textContent = text || ""; }
  function fail(err) { QG.say($("msg"), QG.explain(err)); if (err && err.status === 401) signedOut(); }

  function configure() {
    return oidc.configure().then(function () { cfg = oidc.config(); });
  }

  function login() {
    status(t("console.signing_in"));
    return configure().then(function () {
      return oidc.login({acr_values: cfg.acr_values}, {back: location.hash || "#search"});
    });
  }

  function callback() {
    return oidc.callback().then(function (r) {
      tokens = {access_token: r.tokens.access_token, expires_at: now() + (r.tokens.expires_in || 300)};
      put("tokens", tokens);
    });
  }

  function api(method, path, body) {
    if (!tokens || tokens.expires_at - 10 < now()) return Promise.reject(QG.Problem("login_required", 401));
    return QG.call(method, cfg.api + path, body, tokens.access_token);
  }

  function upload(file) {
    if (!tokens || tokens.expires_at - 10 < now()) return Promise.reject(QG.Problem("login_required", 401));
    return fetch(cfg.api + "/bans/feeds", {method: "POST", body: file, cache: "no-store", credentials: "same-origin",
      headers: {"Accept": "application/json", "Content-Type": "application/json", "Authorization": "Bearer " + tokens.access_token}})
      .catch(function () { throw QG.Problem("network", 0); })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (data) {
          if (!r.ok) throw QG.Problem(data.code || "http_" + r.status, r.status, data.detail);
          return data;
        });
      });
  }

  // ---- panes: #search, #badge/<id>, #import, #alerts ----
  function show() {
    var hash = location.hash || "#search", name = hash.split("/")[0].slice(1);
    ["search", "badge", "import", "alerts"].forEach(function (p) { $(p).hidden = p !== name; });
    Array.prototype.forEach.call($("tabs").querySelectorAll("a"), function (a) {
      if (a.getAttribute("href") === "#" + name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    QG.say($("msg"), "");
    if (name === "badge") return openBadge(hash.split("/")[1]);
    if (name === "alerts") return loadAlerts();
    if (!$(name)) location.hash = "#search";
  }

  function statusText(s) { return t("badge." + s); }

  function search(e) {
    e.preventDefault();
    var q = $("q").value.trim(), list = $("results");
    list.textContent = "";
    var uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(q);
    var path = uuid ? "/persons/" + encodeURIComponent(q) + "/badges" : "/badges?number=" + encodeURIComponent(q);
    QG.busy($("find"), true);
    api("GET", path).then(function (data) {
      if (!data.items.length) list.appendChild(QG.el("li", null, t("console.no_results")));
      data.items.forEach(function (b) {
        var li = QG.el("li", {"class": "card"}), a = QG.el("a", {href: "#badge/" + b.id, "class": "button"},
          b.number + " · " + b.scheme + " · " + statusText(b.status));
        li.appendChild(a); list.appendChild(li);
      });
    }).catch(fail).then(function () { QG.busy($("find"), false); });
  }

  function fact(dl, label, value) { dl.appendChild(QG.el("dt", null, label)); dl.appendChild(QG.el("dd", null, value)); }

  function render(b) {
    current = b;
    $("badge-number").textContent = b.number;
    $("badge-status").textContent = statusText(b.status);
    $("badge-status").dataset.status = b.status;
    // Blocked and revoked are final (identity.domain.badges): no buttons; else none for the status it has.
    $("status-form").hidden = b.status === "blocked" || b.status === "revoked";
    Array.prototype.forEach.call($("status-form").querySelectorAll("button"), function (btn) { btn.hidden = btn.value === b.status; });
    var dl = $("badge-facts"); dl.textContent = "";
    fact(dl, t("console.scheme"), b.scheme);
    fact(dl, t("console.holder"), b.person_id);
    if (b.card_uid) fact(dl, t("console.card_uid"), b.card_uid);
    fact(dl, t("console.valid"), QG.when(b.valid_from, "long") + " – " + QG.when(b.valid_until, "long"));
    if (b.status_reason) fact(dl, t("console.status_reason"), b.status_reason);
    var acts = $("activations"); acts.textContent = "";
    (b.activations || []).forEach(function (a) {
      acts.appendChild(QG.el("li", null, a.terminal + " · " + QG.when(a.activated_at, "long")));
    });
    if (!(b.activations || []).length) acts.appendChild(QG.el("li", null, t("console.no_activations")));
    var hist = $("history"); hist.textContent = "";
    (b.history || []).slice().reverse().forEach(function (e) {
      hist.appendChild(QG.el("li", {"class": "event"}, QG.when(e.at, "long") + " · " + (e.from ? statusText(e.from) + " → " : "") +
        statusText(e.to) + " · " + e.by + (e.reason ? " · " + e.reason : "")));
    });
  }

  function openBadge(id) {
    if (!id) { location.hash = "#search"; return; }
    $("badge-number").textContent = ""; status(t("console.loading"));
    api("GET", "/badges/" + encodeURIComponent(id)).then(function (b) { status(""); render(b); }).catch(function (err) { status(""); fail(err); });
  }

  function changeStatus(e) {
    e.preventDefault();
    var button = e.submitter, reason = $("reason").value.trim();
    if (!current || !button) return;
    if (!reason) { QG.say($("msg"), t("console.reason_required")); $("reason").focus(); return; }
    if (!window.confirm(t("console.confirm", {action: button.textContent, number: current.number}))) return;
    QG.busy(button, true);
    api("POST", "/badges/" + current.id + "/status", {status: button.value, reason: reason})
      .then(function () {
        $("reason").value = "";
        return api("GET", "/badges/" + current.id).then(render);
      })
      .then(function () { QG.say($("msg"), t("console.done"), true); }, fail)
      .then(function () { QG.busy(button, false); });
  }

  function importFeed(e) {
    e.preventDefault();
    var file = $("feed").files[0], out = $("import-result");
    out.hidden = true;
    if (!file) return;
    QG.busy($("upload"), true);
    upload(file).then(function (r) { out.textContent = r.message; out.hidden = false; }, function (err) {
      // The loader's own message says why a feed is refused (signature, sequence, age ...).
      QG.say($("msg"), err.status === 422 && err.message ? t("console.feed_refused", {why: err.message}) : QG.explain(err));
    }).then(function () { QG.busy($("upload"), false); });
  }

  function loadAlerts() {
    var list = $("alert-list"); list.textContent = "";
    api("GET", "/bans/alerts").then(function (data) {
      $("alerts-empty").hidden = data.items.length > 0;
      data.items.forEach(function (a) {
        var li = QG.el("li", {"class": "card alert"}), dl = QG.el("dl");
        li.appendChild(QG.el("p", {"class": "state"}, t("console.alert_title")));
        fact(dl, t("console.when"), QG.when(a.at, "long"));
        fact(dl, t("console.release"), a.release_id);
        fact(dl, t("console.driver"), a.driver_person_id);
        fact(dl, t("console.ban_reference"), a.ban_reference);
        li.appendChild(dl); list.appendChild(li);
      });
    }).catch(fail);
  }

  function signedIn() {
    status(""); $("tabs").hidden = false; $("signin").hidden = true; $("signout").hidden = false; show();
  }
  function signedOut() {
    tokens = null; put("tokens", null);
    $("tabs").hidden = true; $("signin").hidden = false; $("signout").hidden = true;
    ["search", "badge", "import", "alerts"].forEach(function (p) { $(p).hidden = true; });
    status(t("console.signed_out"));
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("signin").addEventListener("click", function () { QG.say($("msg"), ""); login().catch(fail); });
    $("signout").addEventListener("click", signedOut);
    $("search-form").addEventListener("submit", search);
    $("status-form").addEventListener("submit", changeStatus);
    $("import-form").addEventListener("submit", importFeed);
    window.addEventListener("hashchange", function () { if (tokens) show(); });
    configure().then(function () {
      if (location.pathname === "/console/callback") return callback();
      tokens = get("tokens");
    }).then(function () {
      if (tokens && tokens.expires_at - 10 > now()) signedIn(); else signedOut();
    }).catch(function (err) { signedOut(); fail(err); });
  });
})();

/* /console/: the admin console, an OpenID Connect public client of our own provider (role admin_console):
   the flow and the id token checks in oidc.js, with a passkey login asked with acr_values (OIDC Core
   §3.1.2.1). Tokens live in sessionStorage only (they die with the tab). The access token is renewed
   with the rotating refresh token (RFC 6749 §6, offline_access) before it expires or when the API says
   it is no longer valid; the admin API still ends the session 12 hours after the passkey login, or
   when it asks for a stronger login (RFC 9470), and then the officer signs in again. Signing in always
   asks for a passkey ceremony (prompt=login), and signing out revokes the refresh token, and with it the
   session's access tokens (RFC 7009 §2.1), then ends the provider's login session (RP-initiated logout
   with the id token): else the next "Sign in" at this browser got the console without a passkey.
   Panes: badges (search by number, card UID, person id or name; a new person), a badge (status,
   renewal, activations), a person (screening and ban hits, memberships, enrolment code, badges, issue),
   ban feed import, alerts, and for port security organisations, clients and the audit trail. */
"use strict";
(function () {
  var oidc = QG.oidc("qg.console.", "/console/config.json", "/console/"), get = oidc.get, put = oidc.put;
  var now = oidc.now, cfg = null, tokens = null, current = null;
  var $ = QG.$, t = QG.t;
  var PANES = ["search", "badge", "person", "import", "alerts", "orgs", "clients", "audit"];
  var UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  function status(text) { $("status").textContent = text || ""; }
  function fail(err) { QG.say($("msg"), QG.explain(err)); if (err && err.status === 401) signedOut(); }

  function configure() {
    return oidc.configure().then(function () { cfg = oidc.config(); });
  }

  function login() {
    status(t("console.signing_in"));
    return configure().then(function () {
      // OIDC Core §3.1.2.1 prompt=login: a passkey ceremony for every sign-in, whatever login session this
      // browser holds (a driver's, one left by an enrolment, one not ended by a sign-out): review 128,
      // finding 1. A login made after the request meets it, so the resume does not loop.
      return oidc.login({acr_values: cfg.acr_values, prompt: "login"}, {back: location.hash || "#search"});
    });
  }

  function keep(data, previous) {
    tokens = {access_token: data.access_token, expires_at: now() + (data.expires_in || 300),
              refresh_token: data.refresh_token || (previous && previous.refresh_token) || null,
              id_token: data.id_token || (previous && previous.id_token) || null};  // signOut's id_token_hint
    put("tokens", tokens);
  }

  function callback() {
    return oidc.callback().then(function (r) { keep(r.tokens); });
  }

  // One renewal at a time: two at once would present the same refresh token twice, which the provider
  // takes for a replay and answers by ending the session (RFC 9700 §4.14.2).
  var refreshing = null;
  function refresh() {
    if (!tokens || !tokens.refresh_token) return Promise.reject(QG.Problem("login_required", 401));
    if (!refreshing) {
      var previous = tokens;
      refreshing = oidc.tokenRequest({grant_type: "refresh_token", refresh_token: previous.refresh_token,
                                      client_id: cfg.client_id})
        .then(function (data) { keep(data, previous); }, function (err) {
          if (err.status === 400 || err.status === 401) { tokens = null; put("tokens", null); err = QG.Problem("login_required", 401); }
          throw err;
        })
        .then(function () { refreshing = null; }, function (err) { refreshing = null; throw err; });
    }
    return refreshing;
  }
  function fresh() { return tokens && tokens.expires_at - 30 > now() ? Promise.resolve() : refresh(); }

  function api(method, path, body) {
    var send = function () { return QG.call(method, cfg.api + path, body, tokens.access_token); };
    return fresh().then(send).catch(function (err) {
      // Expired or revoked early (clock skew, a key rotation): renew once. A step-up or a session past
      // its 12 hours (insufficient_user_authentication) needs a new login, not a refresh.
      if (err.status === 401 && err.code === "invalid_token" && tokens && tokens.refresh_token) return refresh().then(send);
      throw err;
    });
  }

  function upload(file) {
    return fresh().then(function () { return sendFeed(file); });
  }
  function sendFeed(file) {
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
    PANES.forEach(function (p) { $(p).hidden = p !== name; });
    Array.prototype.forEach.call($("tabs").querySelectorAll("a"), function (a) {
      if (a.getAttribute("href") === "#" + name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    QG.say($("msg"), "");
    if (PANES.indexOf(name) < 0) { location.hash = "#search"; return; }
    if (name === "badge") return openBadge(hash.split("/")[1]);
    if (name === "person") return openPerson(hash.split("/")[1]);
    if (name === "alerts") return loadAlerts();
    if (name === "orgs") return loadOrgs();
    if (name === "clients") return loadClients();
    if (name === "audit") { $("audit-list").textContent = ""; $("audit-more").hidden = true; }
  }

  function statusText(s) { return t("badge." + s); }
  function badgeLink(b) {
    return QG.el("a", {href: "#badge/" + b.id, "class": "button", "data-status": b.status},
                 b.number + " · " + b.scheme + " · " + statusText(b.status));
  }
  // A list loaded twice at once (the tab opening, then a search) shows only the answer to the last
  // load, emptied when that answer comes: an earlier answer arriving late neither shows nor doubles rows.
  var loads = {};
  function latest(key) {
    var n = (loads[key] || 0) + 1;
    loads[key] = n;
    return function () { return loads[key] === n; };
  }

  function day(input) { return new Date(input.value + "T23:59:59").toISOString(); }
  function instant(input) { return input.value ? new Date(input.value).toISOString() : ""; }

  function search(e) {
    e.preventDefault();
    var q = $("q").value.trim(), list = $("results"), current = latest("results");
    list.textContent = "";
    // A person id, a card UID (4, 7 or 10 bytes in hex), a badge number (has a digit), else a name.
    if (UUID.test(q)) { location.hash = "#person/" + q; return; }
    var path = /^([0-9a-f]{8}|[0-9a-f]{14}|[0-9a-f]{20})$/i.test(q) ? "/badges?card_uid=" + encodeURIComponent(q)
      : /\d/.test(q) ? "/badges?number=" + encodeURIComponent(q) : "/persons?q=" + encodeURIComponent(q);
    QG.busy($("find"), true);
    api("GET", path).then(function (data) {
      if (!current()) return;
      list.textContent = "";
      if (!data.items.length) list.appendChild(QG.el("li", null, t("console.no_results")));
      data.items.forEach(function (x) {
        var li = QG.el("li", {"class": "card"}), a = x.scheme ? badgeLink(x)
          : QG.el("a", {href: "#person/" + x.id, "class": "button"}, x.given_name + " " + x.family_name + " · " +
                  t("console.badge_count", {n: String(x.badges)}));
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
    $("renew-form").hidden = $("status-form").hidden;
    $("activate-form").hidden = b.status !== "active";  // only a badge in use is activated at a terminal
    var dl = $("badge-facts"); dl.textContent = "";
    fact(dl, t("console.scheme"), b.scheme);
    var dd = QG.el("dd"); dd.appendChild(QG.el("a", {href: "#person/" + b.person_id}, b.person_id));
    dl.appendChild(QG.el("dt", null, t("console.holder"))); dl.appendChild(dd);
    if (b.card_uid) fact(dl, t("console.card_uid"), b.card_uid);
    fact(dl, t("console.valid"), QG.when(b.valid_from, "long") + " – " + QG.when(b.valid_until, "long"));
    if (b.status_reason) fact(dl, t("console.status_reason"), b.status_reason);
    var acts = $("activations"); acts.textContent = "";
    (b.activations || []).forEach(function (a) {
      var li = QG.el("li", {"class": "row wrap"}), btn = QG.el("button", {"class": "secondary", type: "button",
        "data-terminal": a.terminal}, t("console.withdraw"));
      li.appendChild(QG.el("span", null, a.terminal + " · " + QG.when(a.activated_at, "long")));
      btn.addEventListener("click", function () { withdraw(btn, a.terminal); });
      li.appendChild(btn); acts.appendChild(li);
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

  // Every change says why and waits for the badge's fresh state before saying done.
  function act(button, path, body) {
    QG.busy(button, true);
    return api("POST", "/badges/" + current.id + path, body)
      .then(function () { return api("GET", "/badges/" + current.id).then(render); })
      .then(function () { QG.say($("msg"), t("console.done"), true); }, fail)
      .then(function () { QG.busy(button, false); });
  }

  function renew(e) {
    e.preventDefault();
    var reason = $("reason").value.trim();
    if (!current) return;
    if (!reason) { QG.say($("msg"), t("console.reason_required")); $("reason").focus(); return; }
    act($("do-renew"), "/renew", {valid_until: day($("r-until")), reason: reason}).then(function () { $("reason").value = ""; });
  }

  function activate(e) {
    e.preventDefault();
    if (!current) return;
    act($("do-activate"), "/activations", {terminal: $("terminal").value.trim().toUpperCase()})
      .then(function () { $("terminal").value = ""; });
  }

  function withdraw(button, terminal) {
    var reason = (window.prompt(t("console.withdraw_reason", {terminal: terminal})) || "").trim();
    if (!reason) return;
    act(button, "/activations/" + encodeURIComponent(terminal) + ":withdraw", {reason: reason});
  }

  // ---- #person/<id>: who, the port-ban screening now, memberships, an enrolment code, badges ----
  var person = null;
  function openPerson(id) {
    if (!id || !UUID.test(id)) { location.hash = "#search"; return; }
    person = id; $("person-name").textContent = id; $("issue-result").hidden = true;
    $("enrol-code-box").hidden = true; $("enrol-code").textContent = "";
    loadPerson(); listBadges();
  }

  function age(seconds) {
    if (seconds == null) return t("console.no_list");
    var m = Math.round(seconds / 60);
    return m < 120 ? t("console.age_min", {n: String(m)}) : m < 2880 ? t("console.age_h", {n: String(Math.round(m / 60))})
      : t("console.age_d", {n: String(Math.round(m / 1440))});
  }

  function loadPerson() {
    var id = person;
    api("GET", "/persons/" + encodeURIComponent(id)).then(function (p) {
      if (id !== person) return;  // the officer moved on meanwhile
      $("person-name").textContent = p.given_name + " " + p.family_name;
      var dl = $("person-facts"); dl.textContent = "";
      fact(dl, "id", p.id);
      if (p.employer_organisation_id) fact(dl, t("console.employer_id"), p.employer_organisation_id);
      fact(dl, t("console.status"), p.status);
      var s = p.screening, out = $("person-screening");
      out.textContent = t("console.screen_" + s.status) + " · " + t("console.list_age", {age: age(s.list_age_seconds)});
      out.dataset.screening = s.status;
      var hits = $("person-hits"); hits.textContent = "";
      s.ban_references.forEach(function (ref) {
        hits.appendChild(QG.el("li", {"class": "card alert", "data-ban": ref}, t("console.ban_hit", {ref: ref})));
      });
      p.ban_alerts.forEach(function (a) {
        hits.appendChild(QG.el("li", {"class": "card alert"}, QG.when(a.at, "long") + " · " +
          t("console.alert_title") + " · " + t("console.release") + " " + a.release_id + " · " + a.ban_reference));
      });
      var members = $("person-members"); members.textContent = "";
      p.memberships.forEach(function (m) {
        var li = QG.el("li", {"class": "card row wrap", "data-role": m.role}), btn = QG.el("button", {
          "class": "secondary", type: "button", "data-role": m.role, "data-organisation": m.organisation_id},
          t("console.remove_membership"));
        li.appendChild(QG.el("span", null, m.organisation_name + " · " + t("console.member_" + m.role) +
          (m.organisation_active ? "" : " · " + t("console.inactive")) +
          (m.valid_until ? " · " + (m.expired ? t("console.member_expired") : t("console.member_until", {date: dayShown(m.valid_until)})) : "")));
        btn.addEventListener("click", function () { removeMembership(btn, m); });
        li.appendChild(btn); members.appendChild(li);
      });
      if (!p.memberships.length) members.appendChild(QG.el("li", null, t("console.no_results")));
    }).catch(fail);
  }

  function createPerson(e) {
    e.preventDefault();
    var body = {given_name: $("p-given").value.trim(), family_name: $("p-family").value.trim(),
                employer_organisation_id: $("p-employer").value.trim() || null};
    QG.busy($("do-person"), true);
    api("POST", "/persons", body).then(function (p) {
      $("person-form").reset(); QG.say($("msg"), t("console.created", {what: body.given_name + " " + body.family_name}), true);
      location.hash = "#person/" + p.id;
    }, fail).then(function () { QG.busy($("do-person"), false); });
  }

  // A role's end as a date with its year (QG.when's styles leave the year out).
  function dayShown(iso) {
    return new Date(iso).toLocaleDateString(document.documentElement.lang || "en",
                                            {year: "numeric", month: "short", day: "numeric"});
  }

  function addMembership(e) {
    e.preventDefault();
    if (!person) return;
    var body = {organisation_id: $("m-org").value.trim(), role: $("m-role").value};
    // A date: the role counts to the end of that day where the officer is (sent with its offset, in UTC).
    if ($("m-until").value) body.valid_until = day($("m-until"));
    QG.busy($("do-member"), true);
    api("POST", "/persons/" + encodeURIComponent(person) + "/memberships", body).then(function () {
      $("member-form").reset(); QG.say($("msg"), t("console.done"), true); loadPerson();
    }, fail).then(function () { QG.busy($("do-member"), false); });
  }

  // Taking a role away (DELETE .../memberships/{org}/{role}): a console role, dispatcher or org_admin
  // stops working at once; a driver still nominated by that organisation is refused, naming the rights.
  function removeMembership(button, m) {
    if (!person || !window.confirm(t("console.remove_membership_confirm",
                                     {role: t("console.member_" + m.role), organisation: m.organisation_name}))) return;
    QG.busy(button, true);
    api("DELETE", "/persons/" + encodeURIComponent(person) + "/memberships/" + encodeURIComponent(m.organisation_id) +
        "/" + encodeURIComponent(m.role)).then(function () {
      QG.say($("msg"), t("console.done"), true); loadPerson();
    }, function (err) {
      if (err.code === "driver_has_live_nominations" && err.release_ids) {
        QG.say($("msg"), t("error.driver_has_live_nominations_in", {releases: err.release_ids.join(", ")}));
      } else fail(err);
    }).then(function () { QG.busy(button, false); });
  }

  function enrolmentCode() {
    if (!person || !window.confirm(t("console.enrolment_confirm"))) return;
    QG.busy($("do-enrol-code"), true);
    api("POST", "/persons/" + encodeURIComponent(person) + "/enrolment-codes", {}).then(function (r) {
      // Shown once, never stored by the page: whoever holds it registers a passkey for this person.
      $("enrol-code").textContent = r.code + " · " + t("console.until") + " " + QG.when(r.expires_at, "long");
      $("enrol-code-box").hidden = false;
    }, fail).then(function () { QG.busy($("do-enrol-code"), false); });
  }
  function listBadges() {
    var list = $("person-badges"), current = latest("person-badges"); list.textContent = "";
    api("GET", "/persons/" + encodeURIComponent(person) + "/badges").then(function (data) {
      if (!current()) return;
      list.textContent = "";
      if (!data.items.length) list.appendChild(QG.el("li", null, t("console.no_results")));
      data.items.forEach(function (b) { var li = QG.el("li", {"class": "card"}); li.appendChild(badgeLink(b)); list.appendChild(li); });
    }).catch(fail);
  }

  function issueBadge(e) {
    e.preventDefault();
    var out = $("issue-result"), body = {person_id: person, scheme: $("i-scheme").value, number: $("i-number").value.trim(),
      card_uid: $("i-uid").value.trim() || null, valid_from: new Date().toISOString(), valid_until: day($("i-until"))};
    out.hidden = true; QG.busy($("do-issue"), true);
    api("POST", "/badges", body).then(function (b) {
      out.textContent = t("console.issued", {number: b.number, screening: t("console.screening_" + b.screening)});
      out.hidden = false; $("issue-form").reset(); listBadges();
    }, function (err) {
      // The screening's refusal is the answer the desk needs: say it in words, not as an error code.
      var screening = {person_banned: "banned", screening_unavailable: "unavailable"}[err.code];
      if (screening) QG.say($("msg"), t("console.screening_" + screening)); else fail(err);
    }).then(function () { QG.busy($("do-issue"), false); });
  }

  // ---- #orgs, #clients (port security) ----
  function loadOrgs(e) {
    if (e) e.preventDefault();
    var list = $("org-list"), q = $("org-q").value.trim(), current = latest("orgs");
    list.textContent = "";
    api("GET", "/organisations" + (q ? "?q=" + encodeURIComponent(q) : "")).then(function (data) {
      if (!current()) return;
      list.textContent = "";
      if (!data.items.length) list.appendChild(QG.el("li", null, t("console.no_results")));
      data.items.forEach(function (o) {
        var li = QG.el("li", {"class": "card row wrap", "data-org": o.id});
        li.appendChild(QG.el("span", null, o.name + " · " + t("console.kind_" + o.kind) + " · " +
          [o.eori, o.vat, o.terminal_code].filter(Boolean).join(" · ") + " · " + o.id + " · " +
          t(o.active ? "console.active" : "console.inactive") + (o.active || !o.status_reason ? "" : " · " + o.status_reason)));
        // The port authority is deactivated by an administrator, not here (the API refuses it too).
        if (o.kind !== "port_authority" || !o.active) {
          var verb = o.active ? "deactivate" : "reactivate";
          var btn = QG.el("button", {"class": "secondary", type: "button", "data-action": verb}, t("console." + verb));
          btn.addEventListener("click", function () { orgStatus(btn, o, verb); });
          li.appendChild(btn);
        }
        list.appendChild(li);
      });
    }).catch(fail);
  }

  function orgStatus(button, org, verb) {
    var reason = (window.prompt(t("console.org_" + verb + "_reason", {name: org.name})) || "").trim();
    if (!reason) return;
    QG.busy(button, true);
    api("POST", "/organisations/" + encodeURIComponent(org.id) + ":" + verb, {reason: reason}).then(function () {
      QG.say($("msg"), t("console.done"), true); loadOrgs();
    }, function (err) { QG.busy(button, false); fail(err); });
  }

  function createOrg(e) {
    e.preventDefault();
    var v = function (id) { return $(id).value.trim().toUpperCase() || null; };
    var body = {name: $("o-name").value.trim(), kind: $("o-kind").value, eori: v("o-eori"), vat: v("o-vat"),
                terminal_code: v("o-terminal")};
    QG.busy($("do-org"), true);
    api("POST", "/organisations", body).then(function (o) {
      QG.say($("msg"), t("console.created", {what: o.name}), true); $("org-form").reset(); $("org-q").value = o.name; loadOrgs();
    }, fail).then(function () { QG.busy($("do-org"), false); });
  }

  function loadClients() {
    var list = $("client-list"), current = latest("clients"); list.textContent = "";
    api("GET", "/clients?limit=500").then(function (data) {
      if (!current()) return;
      list.textContent = "";
      data.items.forEach(function (c) {
        var li = QG.el("li", {"class": "card row wrap"});
        li.appendChild(QG.el("span", null, (c.client_name || "") + " · " + c.quaygate_role + " · " + c.client_id + " · " +
          t(c.active ? "console.active" : "console.inactive")));
        if (c.active && c.quaygate_role !== "admin" && c.quaygate_role !== "admin_console") {
          var btn = QG.el("button", {"class": "secondary", type: "button", "data-client": c.client_id}, t("console.deactivate"));
          btn.addEventListener("click", function () { deactivate(btn, c.client_id); });
          li.appendChild(btn);
        }
        list.appendChild(li);
      });
    }).catch(fail);
  }

  function deactivate(button, clientId) {
    if (!window.confirm(t("console.confirm_deactivate", {client: clientId}))) return;
    QG.busy(button, true);
    api("POST", "/clients/" + encodeURIComponent(clientId) + ":deactivate").then(function () {
      QG.say($("msg"), t("console.done"), true); loadClients();
    }, function (err) { QG.busy(button, false); fail(err); });
  }

  function createClient(e) {
    e.preventDefault();
    var terminal = $("c-terminal").value.trim().toUpperCase();
    var body = {client_name: $("c-name").value.trim(), quaygate_role: $("c-role").value, organisation_id: $("c-org").value.trim(),
                token_endpoint_auth_method: "client_secret_basic", grant_types: ["client_credentials"]};
    if (terminal) body.terminal_code = terminal;
    $("client-secret").hidden = true; QG.busy($("do-client"), true);
    api("POST", "/clients", body).then(function (c) {
      // Shown once: the server keeps only a hash of the secret.
      $("new-client-id").textContent = c.client_id; $("new-client-secret").textContent = c.client_secret || "";
      $("client-secret").hidden = false; $("client-form").reset(); loadClients();
    }, function (err) { if (err.code === "client_role_reserved") QG.say($("msg"), t("console.role_reserved")); else fail(err); }).then(function () { QG.busy($("do-client"), false); });
  }

  // ---- #audit (port security): filters, newest first, "older" pages by the last id ----
  var auditBefore = null;
  function searchAudit(e) {
    if (e) { e.preventDefault(); $("audit-list").textContent = ""; auditBefore = null; }
    var q = new URLSearchParams();
    [["actor", "a-actor"], ["subject", "a-subject"], ["action", "a-action"]].forEach(function (f) {
      var v = $(f[1]).value.trim(); if (v) q.set(f[0], v);
    });
    if ($("a-since").value) q.set("since", instant($("a-since")));
    if ($("a-until").value) q.set("until", instant($("a-until")));
    if (auditBefore) q.set("before", String(auditBefore));
    QG.busy($("audit-find"), true);
    api("GET", "/audit?" + q.toString()).then(function (data) {
      var list = $("audit-list");
      data.items.forEach(function (x) {
        var who = [x.actor.person_id, x.actor.client_id].filter(Boolean).join(" @ ");
        list.appendChild(QG.el("li", {"class": "event"}, QG.when(x.at, "long") + " · " + x.kind + " · " + who +
          (x.subject ? " · " + x.subject : "") + " · " + JSON.stringify(x.data)));
      });
      if (!list.children.length) list.appendChild(QG.el("li", null, t("console.no_results")));
      auditBefore = data.next_before; $("audit-more").hidden = !data.next_before;
    }).catch(fail).then(function () { QG.busy($("audit-find"), false); });
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
    var list = $("alert-list"), current = latest("alerts"); list.textContent = "";
    api("GET", "/bans/alerts").then(function (data) {
      if (!current()) return;
      list.textContent = "";
      $("alerts-empty").hidden = data.items.length > 0;
      data.items.forEach(function (a) {
        var li = QG.el("li", {"class": "card alert"}), dl = QG.el("dl");
        li.appendChild(QG.el("p", {"class": "state"}, t("console.alert_title")));
        fact(dl, t("console.when"), QG.when(a.at, "long"));
        fact(dl, t("console.release"), a.release_id);
        var dd = QG.el("dd"); dd.appendChild(QG.el("a", {href: "#person/" + a.driver_person_id, "class": "driver"}, a.driver_person_id));
        dl.appendChild(QG.el("dt", null, t("console.driver"))); dl.appendChild(dd);
        fact(dl, t("console.ban_reference"), a.ban_reference);
        li.appendChild(dl); list.appendChild(li);
      });
    }).catch(fail);
  }

  function signedIn() {
    // Tabs for what the officer's roles allow (the API checks again on every call).
    var roles = [].concat(oidc.part(tokens.access_token, 1).roles || []);
    Array.prototype.forEach.call($("tabs").querySelectorAll("a[data-role]"), function (a) {
      a.hidden = roles.indexOf(a.dataset.role) < 0;
    });
    status(""); $("tabs").hidden = false; $("signin").hidden = true; $("signout").hidden = false; show();
  }
  function signOut() {
    // RFC 7009: revoking the refresh token ends its grant, the access tokens issued in it included; it
    // outlives the provider's login session. Answered before the page leaves, failed or not.
    var rt = tokens && tokens.refresh_token, idt = tokens && tokens.id_token, disco = oidc.discovery();
    signedOut();
    if (!disco) return;
    var revoked = !rt || !disco.revocation_endpoint ? Promise.resolve() : fetch(disco.revocation_endpoint, {
      method: "POST", cache: "no-store", credentials: "same-origin",
      headers: {"Content-Type": "application/x-www-form-urlencoded"},
      body: new URLSearchParams({token: rt, token_type_hint: "refresh_token", client_id: cfg.client_id}).toString()})
      .catch(function () { /* offline: the logout below still ends the session's grants */ });
    // RP-initiated logout §2 (as the driver app's): the provider's login session ends too, or the next
    // "Sign in" here would get the officer's token from it (review 128, finding 1). Back to /console/
    // when the client registered it (config.json), else to the provider's "signed out" page.
    var q = new URLSearchParams({client_id: cfg.client_id});
    if (cfg.post_logout_redirect_uri) q.set("post_logout_redirect_uri", cfg.post_logout_redirect_uri);
    if (idt) q.set("id_token_hint", idt);
    revoked.then(function () { location.assign((disco.end_session_endpoint || cfg.issuer + "/oauth2/logout") + "?" + q.toString()); });
  }
  function signedOut() {
    tokens = null; put("tokens", null);
    $("tabs").hidden = true; $("signin").hidden = false; $("signout").hidden = true;
    PANES.forEach(function (p) { $(p).hidden = true; });
    status(t("console.signed_out"));
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("signin").addEventListener("click", function () { QG.say($("msg"), ""); login().catch(fail); });
    $("signout").addEventListener("click", signOut);
    $("search-form").addEventListener("submit", search);
    $("status-form").addEventListener("submit", changeStatus);
    $("import-form").addEventListener("submit", importFeed);
    $("renew-form").addEventListener("submit", renew);
    $("activate-form").addEventListener("submit", activate);
    $("issue-form").addEventListener("submit", issueBadge);
    $("person-form").addEventListener("submit", createPerson);
    $("member-form").addEventListener("submit", addMembership);
    $("do-enrol-code").addEventListener("click", enrolmentCode);
    $("org-search").addEventListener("submit", loadOrgs);
    $("org-form").addEventListener("submit", createOrg);
    $("client-form").addEventListener("submit", createClient);
    $("audit-form").addEventListener("submit", searchAudit);
    $("audit-more").addEventListener("click", function () { searchAudit(); });
    window.addEventListener("hashchange", function () { if (tokens) show(); });
    configure().then(function () {
      if (location.pathname === "/console/callback") return callback();
      tokens = get("tokens");
    }).then(function () {
      if (!tokens) return signedOut();
      return fresh().then(signedIn);  // a reload after the access token expired renews it first
    }).catch(function (err) { signedOut(); fail(err); });
  });
})();

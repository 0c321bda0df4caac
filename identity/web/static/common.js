/* quaygate pages: strings, JSON calls with RFC 9457 problem errors, WebAuthn JSON helpers, theme. */
"use strict";
var QG = (function () {
  var root = document.documentElement;
  try { if (localStorage.getItem("qg.theme") === "dark") root.dataset.theme = "dark"; } catch (e) { /* private mode */ }
  var strings = null;

  function t(key, params) {
    if (!strings) {
      var el = document.getElementById("qg-i18n");
      strings = el ? JSON.parse(el.textContent) : {};
    }
    var s = strings[key] || key;
    if (params) Object.keys(params).forEach(function (k) { s = s.split("{" + k + "}").join(params[k]); });
    return s;
  }

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text != null) e.textContent = text;
    return e;
  }

  function say(node, text, ok) {
    node.textContent = text;
    node.className = ok ? "msg ok" : "msg";
    node.hidden = !text;
  }

  // An Error carrying the problem's code and office (RFC 9457 extension members) and the HTTP status.
  function Problem(code, status, detail, office, releaseIds) {
    var e = new Error(detail || code);
    e.code = code; e.status = status; e.office = office; e.release_ids = releaseIds; return e;
  }

  function explain(err) {
    // A refusal that names whom to turn to: the office's own text first (port_security.error.<code>).
    var own = err && err.code && err.office ? err.office + ".error." + err.code : null;
    if (own && t(own) !== own) return t(own);
    var key = "error." + (err && err.code);
    if (err && err.code && t(key) !== key) return t(key);
    var byStatus = {401: "login_required", 403: "forbidden", 404: "not_found", 409: "conflict",
                    422: "validation", 429: "rate_limited"};
    if (err && byStatus[err.status]) return t("error." + byStatus[err.status]);
    if (err && err.code === "network") return t("error.network");
    return t("error.generic") + (err && err.code ? " " + t("common.error_code", {code: err.code}) : "");
  }

  function call(method, url, body, token, extra) {
    var headers = Object.assign({"Accept": "application/json"}, extra);
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers["Authorization"] = "Bearer " + token;
    return fetch(url, {method: method, headers: headers, credentials: "same-origin", cache: "no-store",
                       body: body === undefined ? undefined : JSON.stringify(body)})
      .catch(function () { throw Problem("network", 0); })
      .then(function (r) {
        if (r.status === 204) return null;
        return r.json().catch(function () { return {}; }).then(function (data) {
          if (!r.ok) throw Problem(data.code || data.error || "http_" + r.status, r.status, data.detail, data.office,
                                    data.release_ids);
          return data;
        });
      });
  }

  // ---- WebAuthn JSON (WebAuthn L3 §5.1.9 / §5.1.10), with a fallback for browsers without them ----
  function b64d(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    var bin = atob(s + "===".slice((s.length + 3) % 4)), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  function b64e(buf) {
    var bytes = new Uint8Array(buf), s = "";
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function ids(list) {
    return (list || []).map(function (c) { return Object.assign({}, c, {id: b64d(c.id)}); });
  }
  var PKC = window.PublicKeyCredential;
  function creationOptions(json) {
    if (PKC.parseCreationOptionsFromJSON) return PKC.parseCreationOptionsFromJSON(json);
    return Object.assign({}, json, {challenge: b64d(json.challenge), user: Object.assign({}, json.user, {id: b64d(json.user.id)}),
                                    excludeCredentials: ids(json.excludeCredentials)});
  }
  function requestOptions(json) {
    if (PKC.parseRequestOptionsFromJSON) return PKC.parseRequestOptionsFromJSON(json);
    return Object.assign({}, json, {challenge: b64d(json.challenge), allowCredentials: ids(json.allowCredentials)});
  }
  function credentialJSON(c) {
    if (typeof c.toJSON === "function") return c.toJSON();
    var r = c.response, out = {id: c.id, rawId: b64e(c.rawId), type: c.type, clientExtensionResults: c.getClientExtensionResults(),
                               authenticatorAttachment: c.authenticatorAttachment || undefined, response: {clientDataJSON: b64e(r.clientDataJSON)}};
    if (r.attestationObject) {
      out.response.attestationObject = b64e(r.attestationObject);
      out.response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      out.response.authenticatorData = b64e(r.authenticatorData);
      out.response.signature = b64e(r.signature);
      out.response.userHandle = r.userHandle ? b64e(r.userHandle) : undefined;
    }
    return out;
  }
  function supported() { return !!(PKC && navigator.credentials && window.isSecureContext); }

  // The options endpoints answer {flow, publicKey}; a browser error becomes a Problem with our code.
  function ceremony(kind, publicKey) {
    var opts = kind === "create" ? {publicKey: creationOptions(publicKey)} : {publicKey: requestOptions(publicKey)};
    return navigator.credentials[kind](opts).then(credentialJSON, function (e) {
      var code = {NotAllowedError: "cancelled", AbortError: "cancelled", InvalidStateError: "passkey_already_registered",
                  NotSupportedError: "not_supported", SecurityError: "not_supported"}[e && e.name] || "generic";
      throw Problem(code, 0, e && e.message);
    });
  }

  // Only same-origin places are followed after a login (no open redirect).
  function local(url, fallback) {
    try {
      var u = new URL(url, location.href);
      if (u.origin === location.origin) return u.pathname + u.search + u.hash;
    } catch (e) { /* not a URL */ }
    return fallback;
  }

  // A login or an enrolment: the app's and the console's tokens in this tab are the last person's (review
  // 150, finding 2). An authorization under way ("pending") resumes, for the new one.
  function forget() {
    Object.keys(sessionStorage).forEach(function (k) {
      if (/^qg\.(app|console)\.(?!pending$)/.test(k)) sessionStorage.removeItem(k);
    });
  }

  function busy(button, on) {
    button.disabled = on;
    if (on) { button.dataset.label = button.textContent; button.textContent = t("common.busy"); }
    else if (button.dataset.label) button.textContent = button.dataset.label;
  }

  var fmt = {};
  function when(iso, style) {
    if (!iso) return "";
    var lang = root.lang || "en";
    if (!fmt[style]) fmt[style] = new Intl.DateTimeFormat(lang, style === "time" ? {hour: "2-digit", minute: "2-digit"}
      : {weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit"});
    return fmt[style].format(new Date(iso));
  }

  document.addEventListener("DOMContentLoaded", function () {
    var toggle = $("theme");
    if (toggle) {
      toggle.hidden = false;
      toggle.setAttribute("aria-pressed", String(root.dataset.theme === "dark"));
      toggle.addEventListener("click", function () {
        var dark = root.dataset.theme !== "dark";
        if (dark) root.dataset.theme = "dark"; else delete root.dataset.theme;
        toggle.setAttribute("aria-pressed", String(dark));
        try { localStorage.setItem("qg.theme", dark ? "dark" : "light"); } catch (e) { /* private mode */ }
      });
    }
    if ("serviceWorker" in navigator && document.body.dataset.sw) {
      navigator.serviceWorker.register(document.body.dataset.sw, {scope: "/app/"}).catch(function () { /* optional */ });
    }
  });

  return {t: t, $: $, el: el, say: say, call: call, explain: explain, Problem: Problem, ceremony: ceremony,
          supported: supported, local: local, forget: forget, busy: busy, when: when, b64e: b64e};
})();

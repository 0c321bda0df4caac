/* /login: a discoverable passkey with user verification (the server asks for it), then back to return_to. */
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = QG.$("login-form"), button = QG.$("login"), msg = QG.$("msg");
  var returnTo = form.dataset.returnTo || "/app/";
  // Issue 6: the brokered login beside passkeys, when the upstream is configured here.
  fetch("/broker/providers", {credentials: "same-origin"})
    .then(function (r) { return r.ok ? r.json() : []; })
    .then(function (list) {
      list.forEach(function (p) {
        var link = QG.$("broker-" + p.name);
        if (!link) { return; }
        link.href = p.start + "?return_to=" + encodeURIComponent(returnTo);
        link.addEventListener("click", QG.forget);  // a login, which comes back elsewhere
        QG.$("broker").hidden = false;
      });
    })
    .catch(function () { /* no brokered login: passkeys only */ });
  if (!QG.supported()) { QG.say(msg, QG.t("error.not_supported")); return; }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    QG.say(msg, "");
    QG.busy(button, true);
    QG.call("POST", "/webauthn/authentication/options", {})
      .then(function (opts) {
        return QG.ceremony("get", opts.publicKey).then(function (credential) {
          return QG.call("POST", "/webauthn/authentication/verify",
                         {flow: opts.flow, credential: credential, return_to: returnTo});
        });
      })
      .then(function (done) {
        QG.say(msg, QG.t("login.success"), true);
        QG.forget();
        location.assign(QG.local(done && done.return_to, "/app/"));
      })
      .catch(function (err) { QG.busy(button, false); QG.say(msg, QG.explain(err)); });
  });
});

/* /enrol: the badge office's one-time code, then a new discoverable passkey, then the driver app. */
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = QG.$("enrol-form"), button = QG.$("enrol"), msg = QG.$("msg"), code = QG.$("code"), name = QG.$("name");
  // A QR code from the badge office may carry the code in the fragment, which never reaches a server.
  var m = /[#&]code=([^&]+)/.exec(location.hash);
  if (m) { code.value = decodeURIComponent(m[1]); history.replaceState(null, "", location.pathname); }
  if (!QG.supported()) { QG.say(msg, QG.t("error.not_supported")); return; }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    QG.say(msg, "");
    QG.busy(button, true);
    var enrolment = code.value.replace(/\s+/g, "");
    QG.call("POST", "/webauthn/registration/options", {enrolment_code: enrolment})
      .then(function (opts) {
        return QG.ceremony("create", opts.publicKey).then(function (credential) {
          return QG.call("POST", "/webauthn/registration/verify",
                         {flow: opts.flow, credential: credential, name: name.value.trim() || QG.t("enrol.name_default")});
        });
      })
      .then(function () { QG.say(msg, QG.t("enrol.done"), true); QG.forget(); location.assign("/app/"); })
      .catch(function (err) { QG.busy(button, false); QG.say(msg, QG.explain(err)); });
  });
});

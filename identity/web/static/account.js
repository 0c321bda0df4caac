/* /account: the person's passkeys (list, rename, remove), adding another one with the session, and signing
   out everywhere else. */
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var $ = QG.$, t = QG.t, msg = $("msg"), list = $("passkeys"), add = $("add");
  var path = function (id) { return "/account/passkeys/" + encodeURIComponent(id); };
  var relogin = function () { location.assign("/login?return_to=%2Faccount"); };
  // Adding, renaming and removing a passkey need a recent login (review 122): say why, then log in again.
  function refused(err) {
    QG.say(msg, QG.explain(err));
    if (err.code === "reauthentication_required" || err.code === "login_required") setTimeout(relogin, 2500);
  }

  function item(pk, count) {
    var li = QG.el("li", {"class": "card pk", "data-credential": pk.credential_id});
    var name = QG.el("p", {"class": "pk-name"}, pk.name);
    li.appendChild(name);
    li.appendChild(QG.el("span", null, t("account.created", {date: QG.when(pk.created_at, "long")})));
    li.appendChild(QG.el("span", null, pk.last_used_at ? t("account.last_used", {date: QG.when(pk.last_used_at, "long")}) : t("account.never_used")));
    if (pk.status === "suspended") li.appendChild(QG.el("strong", {"class": "notready"}, t("account.suspended")));
    var row = QG.el("div", {"class": "row"});
    var rename = QG.el("button", {"class": "secondary", type: "button", "data-action": "rename"}, t("account.rename"));
    var remove = QG.el("button", {"class": "secondary", type: "button", "data-action": "remove"}, t("account.remove"));
    row.appendChild(rename); row.appendChild(remove); li.appendChild(row);

    var form = QG.el("form", {hidden: ""}), id = "rn-" + Math.random().toString(36).slice(2);
    form.appendChild(QG.el("label", {"for": id}, t("account.new_name")));
    var input = QG.el("input", {id: id, maxlength: "60", autocomplete: "off"});
    form.appendChild(input);
    var frow = QG.el("div", {"class": "row"});
    var cancel = QG.el("button", {"class": "secondary", type: "button"}, t("common.cancel"));
    frow.appendChild(cancel); frow.appendChild(QG.el("button", {"class": "primary", type: "submit"}, t("account.save")));
    form.appendChild(frow); li.appendChild(form);

    rename.addEventListener("click", function () { input.value = pk.name; form.hidden = false; row.hidden = true; input.focus(); });
    cancel.addEventListener("click", function () { form.hidden = true; row.hidden = false; });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      QG.call("PATCH", path(pk.credential_id), {name: input.value.trim()})
        .then(function (r) { pk.name = r.name; name.textContent = r.name; form.hidden = true; row.hidden = false;
                             QG.say(msg, t("account.renamed"), true); })
        .catch(refused);
    });
    remove.addEventListener("click", function () {
      var question = count <= 1 ? "account.remove_last_confirm" : "account.remove_confirm";
      if (!confirm(t(question, {name: pk.name}))) return;
      QG.busy(remove, true);
      QG.call("DELETE", path(pk.credential_id))
        .then(function (r) {
          QG.say(msg, t(r && r.active_remaining === 0 ? "account.none_left" : "account.removed"), true);
          if (r && r.signed_out) { setTimeout(relogin, 2500); return null; }  // this session's passkey: it ended
          return load();
        })
        .catch(function (err) { QG.busy(remove, false); refused(err); });
    });
    return li;
  }

  function load() {
    return QG.call("GET", "/account/passkeys").then(function (items) {
      list.textContent = "";
      var active = items.filter(function (p) { return p.status === "active"; }).length;
      items.forEach(function (pk) { list.appendChild(item(pk, active)); });
      $("status").textContent = items.length ? "" : t("account.empty");
    }).catch(function (err) {
      if (err.status === 401) { relogin(); return; }
      $("status").textContent = "";
      QG.say(msg, QG.explain(err));
    });
  }

  // Sign out everywhere else: a phone left logged in, or a cookie taken (needs a recent login too).
  $("elsewhere").addEventListener("click", function () {
    var button = $("elsewhere");
    if (!confirm(t("account.sign_out_elsewhere_confirm"))) return;
    QG.busy(button, true);
    QG.call("DELETE", "/account/sessions")
      .then(function (r) { QG.busy(button, false); QG.say(msg, t("account.signed_out_elsewhere", {count: r.sessions_ended}), true); })
      .catch(function (err) { QG.busy(button, false); refused(err); });
  });

  $("add-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (!QG.supported()) { QG.say(msg, t("error.not_supported")); return; }
    QG.say(msg, "");
    QG.busy(add, true);
    QG.call("POST", "/webauthn/registration/options", {})
      .then(function (opts) {
        return QG.ceremony("create", opts.publicKey).then(function (credential) {
          return QG.call("POST", "/webauthn/registration/verify",
                         {flow: opts.flow, credential: credential, name: $("new-name").value.trim() || t("enrol.name_default")});
        });
      })
      .then(function () { QG.busy(add, false); QG.say(msg, t("account.added"), true); return load(); })
      .catch(function (err) {
        QG.busy(add, false);
        refused(err);
      });
  });
  load();
});

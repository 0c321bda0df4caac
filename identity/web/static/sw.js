/* The driver app's service worker (scope /app/): keeps the app shell so the app opens on a weak or
   absent connection. It never stores API data, tokens or pages with personal data: only the shell
   listed below (content-hashed static files and the /app/ page, which carries no personal data). */
"use strict";
var VERSION = "qg-shell-__VERSION__";
var SHELL = __SHELL__;

self.addEventListener("install", function (ev) {
  ev.waitUntil(caches.open(VERSION).then(function (c) { return c.addAll(SHELL); }).then(function () { return self.skipWaiting(); }));
});

self.addEventListener("activate", function (ev) {
  ev.waitUntil(caches.keys().then(function (keys) {
    return Promise.all(keys.filter(function (k) { return k.indexOf("qg-shell-") === 0 && k !== VERSION; })
      .map(function (k) { return caches.delete(k); }));
  }).then(function () { return self.clients.claim(); }));
});

self.addEventListener("fetch", function (ev) {
  var req = ev.request, url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== location.origin) return;
  if (url.pathname.indexOf("/static/web/") === 0) {
    // Hashed names never change: cache first.
    ev.respondWith(caches.match(req).then(function (hit) { return hit || fetch(req); }));
  } else if (req.mode === "navigate" && (url.pathname === "/app/" || url.pathname === "/app/callback")) {
    // The shell: the network first (new releases), the cached copy when offline.
    ev.respondWith(fetch(req).catch(function () { return caches.match("/app/"); }));
  }
  // Everything else (the API, the provider, config.json) goes to the network untouched.
});

"""The driver's pages: passkey login, enrolment, the passkey list and the driver app (an OIDC public client).

Server-rendered with Jinja2, no framework and no build step: each page is a small HTML document, one
stylesheet and two small scripts. Everything the browser runs comes from ``static/`` under a
content-hashed URL (``/static/web/<sha256 prefix>/<name>``) cached for a year, so a driver on a poor
connection downloads each file once per release. The pages call the JSON endpoints of
``identity.api.passkeys`` (WebAuthn) and, from ``/app/``, our own OpenID provider and the release API.

Every page carries a strict Content-Security-Policy (no inline script or style: CSP Level 3 §6), is
never framed (``frame-ancestors 'none'``, RFC 7034 ``X-Frame-Options: DENY``), sends no referrer (the
authorization code and ``return_to`` stay out of other sites' logs) and is not stored by caches
(``no-store``, RFC 9111 §5.2.2.5). On an https issuer it also carries HSTS (``hsts``), as every page and
OIDC endpoint of the provider does.

Routes (none in the OpenAPI document: they are pages, not the API)::

    GET  /login?return_to=       passkey login, then back to return_to (a local path only)
    GET  /enrol                  first passkey with the badge office's one-time code
    GET  /account                the person's passkeys (needs a login session, else /login)
    GET  /app/, /app/callback    the driver app shell (the callback is the OIDC redirect_uri)
    GET  /app/config.json        the driver app's client_id, redirect URIs and id token alg, and the
                                 sid of the browser's login session
    GET  /app/manifest.webmanifest, /app/sw.js    installable app: manifest and service worker
    GET  /static/web/{digest}/{name}               the hashed static files
    POST /lang                   the language menu: sets the qg_lang cookie (``__Host-qg_lang`` on an
                                 https issuer: Settings.cookie_name), back to ``next``
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import sqlalchemy as sa
from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from identity.authn import enrolment
from identity.sessions import sessions_for
from quaygate.observability import log_event
from quaygate.routing import AdmitFirst
from quaygate.schema import oauth_clients

from . import i18n

log = logging.getLogger("identity.web")

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_PREFIX = "/static/web"
APP_PATH = "/app/"
CALLBACK_PATH = "/app/callback"
DRIVER_APP_ROLE = "driver_app"
# What the driver app asks for (identity.domain.scopes: the driver_app role's scopes).
DRIVER_APP_SCOPE = "openid profile offline_access releases:read nominations:respond"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "worker-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), "
    "publickey-credentials-get=(self), publickey-credentials-create=(self)",
}
# RFC 6797 §6.1: a browser that saw this over https goes to the host over https only, for a year, so an
# active attacker on the network cannot strip TLS from a later first request (a typed address, an old
# http link) and read or plant the session cookie. Sent only when the issuer is https (``hsts``): an
# http issuer is local development, where a browser ignores it anyway (RFC 6797 §8.1).
HSTS: Mapping[str, str] = {"Strict-Transport-Security": "max-age=31536000"}
PAGE_HEADERS: Mapping[str, str] = {
    **SECURITY_HEADERS,
    "Cache-Control": "no-store",
    "Vary": "Accept-Language, Cookie",
}
IMMUTABLE = "public, max-age=31536000, immutable"
MEDIA_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SERVICE_WORKER = "sw.js"  # served at /app/sw.js so that its scope is /app/, not a hashed asset

# The catalog keys each page's script needs (the rest is rendered on the server).
SCRIPT_KEYS: Mapping[str, tuple[str, ...]] = {
    # A login or an enrolment is nobody's yet: a refusal's ``office`` picks its text (i18n ``own_key``).
    "login.js": ("common.", "error.", "login.", "port_security.error."),
    "enrol.js": ("common.", "error.", "enrol.", "port_security.error."),
    "account.js": ("common.", "error.", "account.", "enrol.name_default"),
    "app.js": ("common.", "error.", "app.", "card.", "light.", "state.", "gate.", "reason."),
    "console.js": ("common.", "error.", "console.", "badge."),  # the admin console, identity.web.console
}
# Of those, what base.html alone renders, on every page: no script reads them (the driver app's weight).
RENDERED_ONLY = frozenset({"common.contrast", "common.language", "common.noscript"})

# AdmitFirst: a body (the language form's) read within the app's deadline, else 408 body_timeout, nothing
# done (quaygate.routing; review 168, finding 1: a form that never came held its connection for ever).
router = APIRouter(include_in_schema=False, route_class=AdmitFirst)


# ---- static files ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    digest: str
    media_type: str
    gzipped: bytes | None  # text files, compressed once (RFC 9110 §8.4.1.3)

    @property
    def url(self) -> str:
        return f"{STATIC_PREFIX}/{self.digest}/{self.name}"


@cache
def assets() -> dict[str, Asset]:
    """The static files, read once (they change only with a new release of the code)."""
    found: dict[str, Asset] = {}
    for path in sorted(STATIC.iterdir()):
        if path.suffix not in MEDIA_TYPES or path.name == SERVICE_WORKER:
            continue
        body = path.read_bytes()
        packed = gzip.compress(body, 9, mtime=0) if path.suffix != ".png" else None
        found[path.name] = Asset(path.name, body, hashlib.sha256(body).hexdigest()[:12], MEDIA_TYPES[path.suffix],
                                 packed if packed is not None and len(packed) < len(body) else None)
    return found


def asset_url(name: str) -> str:
    return assets()[name].url


def shell_urls() -> list[str]:
    """What the service worker keeps for offline start: the app page and its static files."""
    return [APP_PATH] + [asset_url(n) for n in ("app.css", "common.js", "oidc.js", "app.js", "icon.svg",
                                                "icon-192.png")]


# ---- rendering -------------------------------------------------------------------------------------


@cache
def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["asset"] = asset_url
    env.globals["languages"] = [(code, i18n.NATIVE_NAMES[code]) for code in i18n.LANGUAGES]
    return env


def accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def hsts(request: Request) -> Mapping[str, str]:
    """HSTS (``HSTS``) when the issuer is https, else nothing: the headers every HTML page and OIDC
    endpoint of the provider adds to its answer."""
    return HSTS if _settings(request).secure_cookies else {}


_Answer = TypeVar("_Answer", bound=Response)


def with_hsts(request: Request, response: _Answer) -> _Answer:
    """``response`` with ``hsts`` added, for an answer built elsewhere (Authlib's, a use case's)."""
    response.headers.update(hsts(request))
    return response


def language(request: Request) -> str:
    return i18n.negotiate(
        cookie=request.cookies.get(_settings(request).cookie_name(i18n.COOKIE)),
        accept_language=request.headers.get("accept-language"),
    )


def _strings(lang: str, script: str, office: str | None = None) -> dict[str, str]:
    """The catalog keys ``script`` needs, each with its text for a person who turns to ``office``."""
    prefixes = SCRIPT_KEYS[script]
    cat = i18n.catalog(lang)
    return {k: cat[i18n.own_key(lang, k, office)] for k in cat if k.startswith(prefixes) and k not in RENDERED_ONLY}


def render(request: Request, template: str, *, title: str, script: str, office: str | None = None,
           **context: Any) -> Response:
    """The page in the request's language; ``office``: the page's person turns to it (a known person's
    page, identity.authn.enrolment ``issuing_office``), and its texts are his (i18n ``own_key``)."""
    lang = language(request)
    html = _templates().get_template(template).render(
        lang=lang,
        t=lambda key, **params: i18n.translate(lang, i18n.own_key(lang, key, office), **params),
        title=title,
        script=script,
        strings=_strings(lang, script, office),
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        **context,
    )
    body = html.encode()
    headers = {**PAGE_HEADERS, **hsts(request), "Content-Language": lang}
    if accepts_gzip(request):
        # A page holds no secret an attacker could guess byte by byte (BREACH): the only per-request
        # values are the language and return_to, both chosen by the requester himself.
        body = gzip.compress(body, 6)
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Language, Accept-Encoding, Cookie"
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


def local_path(target: str | None, *, default: str, issuer: str) -> str:
    """``target`` if it is a path on this site, else ``default`` (no open redirect, RFC 9700 §4.11).

    An absolute URL on the issuer's own origin is cut down to its path; anything else (another host,
    a scheme-relative ``//host``, a backslash that browsers read as a slash, control characters) is
    refused.
    """
    if not target or len(target) > 2000 or any(ord(c) < 0x21 or c == "\\" for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        own = urlsplit(issuer)
        if (parts.scheme, parts.netloc) != (own.scheme, own.netloc):
            return default
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        parts = urlsplit(target)
    if not target.startswith("/") or target.startswith("//"):
        return default
    return target


def _settings(request: Request) -> Any:
    return request.app.state.container.settings


def _issuer(request: Request) -> str:
    return str(_settings(request).issuer).rstrip("/")


# ---- pages -----------------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, return_to: str | None = None) -> Response:
    target = local_path(return_to, default=APP_PATH, issuer=_issuer(request))
    return render(request, "login.html", title="login.title", script="login.js", return_to=target)


@router.get("/enrol")
def enrol_page(request: Request) -> Response:
    return render(request, "enrol.html", title="enrol.title", script="enrol.js")


@router.get("/account")
def account_page(request: Request) -> Response:
    c = request.app.state.container
    session = sessions_for(request.app).get(request.cookies.get(c.settings.session_cookie), now=c.clock.now())
    if session is None:
        log_event(log, "identity.web.account.login_required")
        return RedirectResponse("/login?return_to=" + quote("/account", safe=""), status_code=303,
                                headers={**PAGE_HEADERS, **hsts(request)})
    # His suspended passkeys, his last one removed: the texts name the office that issues his codes.
    with c.engine.connect() as conn:
        office = enrolment.issuing_office(conn, session.person_id)
    return render(request, "account.html", title="account.title", script="account.js", office=office)


@router.get("/app")
def app_root() -> Response:
    return RedirectResponse(APP_PATH, status_code=308)


@router.get(APP_PATH)
@router.get(CALLBACK_PATH)
def driver_app(request: Request) -> Response:
    # The shell carries no personal data: the pickups come from the release API with the token.
    return render(request, "app.html", title="app.title", script="app.js", service_worker=True, oidc=True)


def public_client_config(request: Request, *, role: str, callback_path: str, code: str,
                         post_logout_path: str | None = None, **fields: str) -> JSONResponse:
    """A page's own public client, as its script needs it: the active client of ``role`` registered
    for our callback, and the algorithm its id tokens come in (OIDC Core §3.1.3.7 item 7: the page
    checks it); ``fields`` add what the page needs besides. A 404 problem ``code`` when none is.

    ``post_logout_path``: the page's ``post_logout_redirect_uri``, given only when the client registered
    it: the provider refuses any other (RP-Initiated Logout §3), and the page then logs out without one.

    The answer's ``sid``: the browser's live login session's (its cookie's; null for none), so that a
    page holding tokens whose id token names another session (another login in this browser since)
    drops them and asks for its own (review 150, finding 2). An id token's ``sid`` is no secret (it is
    in every copy of the token); the answer is the cookie's, so never stored by a cache."""
    issuer = _issuer(request)
    callback = issuer + callback_path
    engine: sa.Engine = request.app.state.container.engine
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(oauth_clients.c.client_id, oauth_clients.c.redirect_uris, oauth_clients.c.extra_metadata,
                      oauth_clients.c.post_logout_redirect_uris)
            .where(oauth_clients.c.role == role, oauth_clients.c.active.is_(True))
            .order_by(oauth_clients.c.created_at, oauth_clients.c.client_id)
        ).all()
    client = next((r for r in rows if callback in (r.redirect_uris or [])), None)
    if client is None:
        log_event(log, f"identity.web.{role}_config.no_client")
        return JSONResponse(
            {"type": "about:blank", "title": "Not Found", "status": 404, "code": code,
             "detail": f"No active {role} client has the redirect URI {callback}."},
            status_code=404, media_type="application/problem+json", headers={"Cache-Control": "no-cache"},
        )
    c = request.app.state.container
    session = sessions_for(request.app).get(request.cookies.get(c.settings.session_cookie), now=c.clock.now())
    return JSONResponse(
        {
            "issuer": issuer,
            "client_id": client.client_id,
            # OIDC Registration §2: RS256 unless the client registered another.
            "id_token_signed_response_alg": (client.extra_metadata or {}).get("id_token_signed_response_alg", "RS256"),
            "redirect_uri": callback,
            **fields,
            **({"post_logout_redirect_uri": issuer + post_logout_path}
               if post_logout_path and issuer + post_logout_path in (client.post_logout_redirect_uris or []) else {}),
            "sid": session.sid if session is not None else None,
        },
        headers={"Cache-Control": "no-store", **SECURITY_HEADERS},
    )


@router.get("/app/config.json")
def driver_app_config(request: Request) -> JSONResponse:
    """The driver app's public client (public_client_config), its logout return and its API."""
    return public_client_config(request, role=DRIVER_APP_ROLE, callback_path=CALLBACK_PATH,
                                code="driver_app_not_configured", post_logout_redirect_uri=_issuer(request) + APP_PATH,
                                scope=DRIVER_APP_SCOPE, api="/api/v1")


@router.get("/app/manifest.webmanifest")
def manifest(request: Request) -> Response:
    lang = language(request)
    body = {
        "id": APP_PATH,
        "name": "quaygate",
        "short_name": "quaygate",
        "description": i18n.translate(lang, "meta.description"),
        "lang": lang,
        "start_url": APP_PATH,
        "scope": APP_PATH,
        "display": "standalone",
        "orientation": "portrait",
        "background_color": "#ffffff",
        "theme_color": "#0b3d91",
        "icons": [
            {"src": asset_url("icon.svg"), "sizes": "any", "type": "image/svg+xml", "purpose": "any"},
            {"src": asset_url("icon-192.png"), "sizes": "192x192", "type": "image/png", "purpose": "any"},
            {"src": asset_url("icon-512.png"), "sizes": "512x512", "type": "image/png", "purpose": "any"},
            {"src": asset_url("icon-maskable-512.png"), "sizes": "512x512", "type": "image/png",
             "purpose": "maskable"},
        ],
    }
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/manifest+json",
                    headers={"Cache-Control": "no-cache", "Vary": "Accept-Language, Cookie"})


@cache
def _service_worker() -> bytes:
    urls = shell_urls()
    version = hashlib.sha256("\n".join(urls).encode()).hexdigest()[:12]
    source = (STATIC / SERVICE_WORKER).read_text(encoding="utf-8")
    return source.replace("__VERSION__", version).replace("__SHELL__", json.dumps(urls)).encode()


@router.get("/app/sw.js")
def service_worker() -> Response:
    # Never cached by HTTP: a new release must reach the browser's update check (SW spec §Update).
    return Response(_service_worker(), media_type=MEDIA_TYPES[".js"],
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


@router.get(STATIC_PREFIX + "/{digest}/{name}")
def static_file(request: Request, digest: str, name: str) -> Response:
    asset = assets().get(name)
    if asset is None or asset.digest != digest:
        # An old digest after a release: not found, never the new body under a stale name.
        return Response(status_code=404, headers={"Cache-Control": "no-store"})
    headers = {"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
    if asset.gzipped is not None and accepts_gzip(request):
        return Response(asset.gzipped, media_type=asset.media_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.post("/lang")
def set_language(
    request: Request, lang: str = Form(max_length=8), next_path: str = Form(APP_PATH, alias="next", max_length=2000)
) -> Response:
    target = local_path(next_path, default=APP_PATH, issuer=_issuer(request))
    settings = _settings(request)
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store", **hsts(request)})
    if lang in i18n.LANGUAGES:
        response.set_cookie(settings.cookie_name(i18n.COOKIE), lang, max_age=365 * 24 * 3600, path="/",
                            samesite="lax", secure=settings.secure_cookies)
    return response

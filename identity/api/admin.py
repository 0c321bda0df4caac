"""The admin API (``/admin/v1``): initial access tokens, clients, persons and memberships.

Callers present an access token with the ``admin`` scope from an ``admin`` client (role claim), for
our API audience; a DPoP-bound token needs its proof (RFC 9449 §7). The badge and port-ban routes
(badges.py, bans.py) also take a person's token from the ``admin_console`` client (``admin_caller``:
port_security_admin or badge_office role, passkey login); the routes here stay for admin clients.
The check is explicit at the top of every route, not hidden in a dependency (STYLE.md "what to
avoid"). Errors are RFC 9457 problems; every action is on the audit trail (``identity.admin.*``).

A route with a body checks its caller on the headers before any of the body is read (``admits``:
quaygate.routing.AdmitFirst, ``admit_first``), so a caller without a valid token is refused (401/403)
without the server reading and parsing up to 1 MiB of it; the route then takes that caller
(``caller_of``): its token checked, its DPoP proof claimed, once. Once the body is read, the token is
checked again for what may have changed meanwhile, its expiry and its revocation (``token_again``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from quaygate.crypto import keyed_hash
from quaygate.routing import AdmitFirst, admit_first
from quaygate.schema import audit_log, badges, memberships, oauth_clients, organisations, persons
from release_service.api.problems import problem, problem_responses
from release_service.domain.parties import OrgKind

from .. import audit
from ..authn import cutoff, enrolment
from ..bans.screening import ban_check
from ..bootstrap import provider_for
from ..domain import claims as c
from ..domain.assurance import ACR_PASSKEY, passkey_login
from ..domain.bans import TERMINAL_CODE_FORM, is_terminal_code
from ..domain.roles import ClientRole
from ..domain.scopes import BADGES_OFFICE
from ..dpop import DPOP_ALGORITHMS
from ..grants import grants_for, revocations_for
from ..memberships import (
    MembershipRefused,
    codes_follow_end,
    honoured_officer_membership,
    keep_an_officer,
    officer_ends,
)
from ..memberships import remove_membership as remove
from ..organisations import OrganisationRefused, set_active, status_fields
from ..registration import RegistrationError, management_for
from ..sessions import sessions_for
from ..tokens import InvalidToken

log = logging.getLogger(__name__)

ADMIN_SCOPE = "admin"
MEMBER_ROLES = ("driver", "dispatcher", "org_admin", "port_security_admin", "badge_office")
PORT_SECURITY_ROLE = "port_security_admin"  # claims.CONSOLE_ADMIN_ROLES: organisations, clients, audit
# A console session renews its access token with a rotating refresh token (identity.web.console), but
# never beyond this long after the passkey login: then the officer signs in again (RFC 9470 max_age).
CONSOLE_SESSION_MAX = 12 * 3600
CONSOLE_RESERVED_CLIENT_ROLES = frozenset({ClientRole.ADMIN.value, ClientRole.ADMIN_CONSOLE.value})

router = APIRouter(prefix="/admin/v1", tags=["identity", "identity admin"], route_class=AdmitFirst)
_ERRORS = problem_responses(401, 403, 404, 422)


class AdminRefused(Exception):
    """A refused admin call, answered as an RFC 9457 problem. A 401, and a 403 for what the token lacks
    (insufficient_scope, a role, the badge office's scope), carry the token challenge (``challenge``);
    an officer refused an act on himself (``own_refused``) does not: his token is good, and no token
    would make the act his to do."""

    def __init__(self, status: int, code: str, detail: str, *, params: dict[str, str] | None = None,
                 nonce: str | None = None, challenge: bool = True) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.params = status, code, detail, params or {}
        self.nonce = nonce  # RFC 9449 §9: with use_dpop_nonce, the DPoP-Nonce to send
        self.challenge = challenge

    def response(self, request: Request) -> JSONResponse:
        headers = None
        if self.challenge and self.status in (401, 403):
            # RFC 6750 §3: the challenge names the error; RFC 9470 §3 adds what a step-up needs. A request
            # made with the DPoP scheme is answered with a DPoP challenge and the algorithms a proof may
            # use (RFC 9449 §7.1), so its client knows to make a proof, not to retry as a bearer.
            params = dict(self.params)
            scheme = "Bearer"
            if request.headers.get("authorization", "").partition(" ")[0].lower() == "dpop":
                scheme, params["algs"] = "DPoP", " ".join(DPOP_ALGORITHMS)
            extra = "".join(f', {k}="{v}"' for k, v in params.items())
            headers = {"WWW-Authenticate": f'{scheme} error="{self.code}", error_description="{self.detail}"{extra}'}
            if self.nonce is not None:
                headers["DPoP-Nonce"] = self.nonce
        return problem(self.status, self.code, self.detail, instance=request.url.path, headers=headers)


@dataclass(frozen=True, slots=True)
class AdminCaller:
    """Who calls the admin API: an admin client, or a person through the admin console."""

    client_id: str
    person_id: str | None = None
    badge_office: bool = False
    # A console person's admin roles (claims.CONSOLE_ADMIN_ROLES held); empty for an admin client.
    roles: frozenset[str] = frozenset()

    def holds(self, role: str) -> bool:
        """An admin client may do what any console role may; a person needs the role itself."""
        return self.person_id is None or role in self.roles

    @property
    def actor(self) -> str:
        """As badge histories store it; audit.actor_fields turns it back into ids."""
        return self.client_id if self.person_id is None else audit.person_actor(self.person_id, self.client_id)

    @property
    def audit_actor(self) -> dict[str, Any]:
        return audit.actor_fields(self.actor)


def admin_client(request: Request) -> AdminCaller:
    """An admin client, or AdminRefused: a valid, unrevoked access token for our API audience, carrying
    the admin scope, issued to an admin client; its DPoP proof when it is bound to a key. Initial
    access tokens are made by admin clients only (not from the console)."""
    return admin_caller(request, console=False)


def admin_caller(request: Request, *, console: bool = True) -> AdminCaller:
    """The caller of an admin route, or AdminRefused. Two kinds of token pass (issue 4 "every action
    is role-checked"):

    - an ``admin`` client's token with the ``admin`` scope (badge office when it has ``badges:office``);
    - with ``console``, a person's token from the ``admin_console`` client with the ``admin`` scope,
      when the person holds port_security_admin or badge_office (claims.CONSOLE_ADMIN_ROLES) and
      logged in with a passkey (RFC 9470 step-up otherwise). The badge office's view needs both the
      ``badges:office`` scope and the badge_office role.

    The token carries the person's roles of every organisation, not where each is held: port_security_admin
    counts only when a membership in an active port_authority organisation gives it
    (``_port_security_held``, review 144, finding 1), and a terminal's security desk activates badges at
    its own terminal only (identity.badges.service ``Desk``).
    """
    scheme, token = _access_token(request)
    claims = _token_claims(request, token)
    _check_dpop(request, token, claims, scheme)
    app = request.app
    scopes = str(claims.get(c.SCOPE, "")).split()
    role, person = claims.get(c.ROLE), claims.get(c.PERSON_ID)
    if ADMIN_SCOPE in scopes and role == ClientRole.ADMIN.value and person is None:
        return AdminCaller(str(claims[c.CLIENT_ID]), badge_office=BADGES_OFFICE in scopes)
    if not (console and ADMIN_SCOPE in scopes and role == ClientRole.ADMIN_CONSOLE.value and person):
        log.info("identity.admin.refused.not_admin")
        raise AdminRefused(403, "insufficient_scope", "The admin API needs an admin client's token.")
    roles = claims.get(c.ROLES)
    held = set(roles) if isinstance(roles, list) else set()
    if PORT_SECURITY_ROLE in held and not _port_security_held(request, str(person)):
        # The token carries the person's roles of every organisation (the console is bound to none), and
        # port security held elsewhere (at a terminal's security desk) is none: organisations, clients,
        # their secrets and gate policies are the port authority's (review 144, finding 1).
        log.info("identity.admin.port_security_not_port_authority")
        held.discard(PORT_SECURITY_ROLE)
    if not held & c.CONSOLE_ADMIN_ROLES:
        log.info("identity.admin.refused.console_role")
        raise AdminRefused(403, "insufficient_role",
                           "The admin console is for port security and the badge office.")
    # A passkey opened the session (review 108): an upstream login's acr ranks above passkey's, but the
    # console is for our passkeys, whatever the national ID provider a person is linked to says.
    acr, amr = claims.get(c.ACR), claims.get(c.AMR)
    if not passkey_login(acr if isinstance(acr, str) else "",
                         [m for m in amr if isinstance(m, str)] if isinstance(amr, list) else ()):
        log.info("identity.admin.refused.step_up")
        raise AdminRefused(401, "insufficient_user_authentication", "Sign in with a passkey for the admin console.",
                           params={"acr_values": ACR_PASSKEY})
    auth_time = claims.get(c.AUTH_TIME)
    now = app.state.container.clock.now().timestamp()
    if isinstance(auth_time, bool) or not isinstance(auth_time, int | float) or now - auth_time > CONSOLE_SESSION_MAX:
        # Refreshed tokens keep the login's auth_time: a stolen refresh token is worth one working day.
        log.info("identity.admin.refused.session_too_old")
        raise AdminRefused(401, "insufficient_user_authentication", "The console session is over: sign in again.",
                           params={"acr_values": ACR_PASSKEY, "max_age": str(CONSOLE_SESSION_MAX)})
    return AdminCaller(str(claims[c.CLIENT_ID]), person_id=str(person),
                       badge_office=BADGES_OFFICE in scopes and c.BADGE_OFFICE_ROLE in held,
                       roles=frozenset(held & c.CONSOLE_ADMIN_ROLES))


def _port_security_held(request: Request, person_id: str) -> bool:
    """Whether a membership in an active port_authority organisation gives the person port_security_admin,
    the only place where it counts (review 144, finding 1; identity.memberships
    ``honoured_officer_membership``, the rule the dated-officer and last-officer checks count by too).
    Not whether it is still in force: a role whose end has passed while the token lives is the
    dated-officer checks' (``_caller_ends``, review 107), and the token's lifetime is capped at that end.
    Blocking: a database read."""
    with request.app.state.container.engine.connect() as conn:
        return conn.execute(sa.select(memberships.c.person_id).where(
            memberships.c.person_id == uuid.UUID(person_id), honoured_officer_membership())
            .limit(1)).first() is not None


def _access_token(request: Request) -> tuple[str, str]:
    """The Authorization header's scheme (lower case) and token, or AdminRefused(401 invalid_request)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() not in ("bearer", "dpop") or not token.strip():
        raise AdminRefused(401, "invalid_request", "An admin access token is required.")
    return scheme.lower(), token.strip()


def _token_claims(request: Request, token: str) -> dict[str, Any]:
    """The claims of a valid, unrevoked access token for our API audience, or AdminRefused(401
    invalid_token). Blocking: the revocation list is in the cache."""
    app = request.app
    verifier = getattr(app.state, "token_verifier", None) or provider_for(app).verifier
    try:
        claims: dict[str, Any] = verifier.verify(token, audience=app.state.container.settings.api_audience)
    except InvalidToken as exc:
        raise AdminRefused(401, "invalid_token", exc.description) from exc
    if revocations_for(app).token_revoked(claims):
        raise AdminRefused(401, "invalid_token", "token revoked")
    return claims


# A check of the caller of an admin route: admin_caller, or one built on it (a role required).
AdminCheck = Callable[[Request], AdminCaller]
_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def admits(check: AdminCheck) -> Callable[[_Endpoint], _Endpoint]:
    """An admin route with a body checks its caller with ``check`` on the headers alone, before any of
    the body is read (quaygate.routing ``admit_first``; its router's route_class is AdmitFirst): the
    refusal is answered as the route's own, the body never read, and the caller kept for ``caller_of``.
    Once the body is read, the caller's token is checked again (``token_again``). Put below the
    route's decorator."""

    def admit(request: Request) -> Response | None:
        try:
            request.state.admin_caller = (check, check(request))
        except AdminRefused as exc:
            return exc.response(request)
        return None

    return admit_first(admit, again=token_again)


def caller_of(request: Request, check: AdminCheck = admin_caller) -> AdminCaller:
    """The caller ``check`` admitted before the body was read (``admits``), else ``check`` now (a route
    without a body): a token is checked, and its DPoP proof claimed (RFC 9449 §11.1), once. Blocking
    when it checks: run it off the event loop."""
    admitted = getattr(request.state, "admin_caller", None)
    if admitted is not None and admitted[0] is check:
        return cast(AdminCaller, admitted[1])
    return check(request)


def token_again(request: Request) -> Response | None:
    """The admitted caller's token checked again once the body is read (quaygate.routing AdmitFirst),
    for what may have changed while a slow client sent it: its key still published and its times
    (``exp``) by the verifier, on its memo, and its revocation. Not its DPoP proof, whose jti was
    claimed at admission and is single use. The 401 answer, or None."""
    try:
        _token_claims(request, _access_token(request)[1])
    except AdminRefused as exc:
        log.info("identity.admin.refused.after_body")
        return exc.response(request)
    return None


def port_security(request: Request) -> AdminCaller:
    """Organisations and clients: admin clients, and port security through the console."""
    return require_role(admin_caller(request), PORT_SECURITY_ROLE)


def require_role(caller: AdminCaller, role: str) -> AdminCaller:
    """The caller, or AdminRefused(403): a console person without ``role`` (issue 4 "every action is
    role-checked"). Admin clients pass; their scope is checked by admin_caller."""
    if not caller.holds(role):
        raise role_refused(role)
    return caller


def role_refused(role: str) -> AdminRefused:
    """The refusal of a console person without ``role``."""
    log.info("identity.admin.refused.role.%s", role)
    return AdminRefused(403, "insufficient_role", f"This needs the {role} role.")


def own_refused(code: str, detail: str) -> AdminRefused:
    """The refusal of an officer acting on himself (separation of duties: his suspension, roles,
    enrolment code, badge, face are another officer's act): 403 ``code``, logged
    ``identity.admin.refused.<code>``. No WWW-Authenticate: it is not a token challenge (RFC 6750 §3
    asks for one with a 401 and with insufficient_scope, what another token would cure); his token is
    good, and no other would make the act his."""
    log.info("identity.admin.refused.%s", code)
    return AdminRefused(403, code, detail, challenge=False)


def enrolment_code_caller(request: Request, person_id: uuid.UUID) -> AdminCaller:
    """Who may issue a person's one-time enrolment code (identity.api.passkeys), or AdminRefused. The
    code registers a passkey for that person: whoever holds it logs in as him. So: an admin client, or
    through the console the badge office and port security; for a person who holds a privileged role,
    only port security (``enrolment_code_refused_roles``, checked by the issue itself); and never an
    officer for himself (a second passkey of his own is added from /account, after a login). The
    caller is the one ``admits(admin_caller)`` admitted, if it ran."""
    caller = caller_of(request)
    if caller.person_id is None:
        return caller
    if caller.person_id == str(person_id):
        raise own_refused("own_enrolment_code", "An officer does not issue an enrolment code for himself.")
    audit_read(request, caller, "identity.admin.enrolment_code.requested", subject=str(person_id))
    return caller


def enrolment_code_refused_roles(caller: AdminCaller, *, dated: bool = False) -> frozenset[str]:
    """The roles of a person for whom ``caller`` may not issue an enrolment code: none for an admin
    client and port security; for the badge office the privileged ones (claims.PRIVILEGED_ROLES: an
    officer, a company's dispatcher or org_admin), whose codes only port security issues, and so for an
    officer whose own role ends (``dated``, ``dated_officer``): the code would let him log in as a
    standing officer after his end. Not checked here but by the issue, under the person's row lock, in
    the transaction that inserts the code (identity.authn.enrolment): the roles read here, then the code
    inserted in another transaction, let a promotion committed in between through (review L5). Its
    refusal: ``role_refused``, or ``dated_officer``'s."""
    return enrolment.NO_ROLE_REFUSED if caller.holds(PORT_SECURITY_ROLE) and not dated else c.PRIVILEGED_ROLES


def _caller_ends(request: Request, caller: AdminCaller) -> datetime | None:
    """When the console officer ``caller``'s port-security role ends (identity.memberships
    ``officer_ends``); None for a standing officer and for an admin client."""
    if caller.person_id is None:
        return None
    container = request.app.state.container
    with container.engine.connect() as conn:
        return officer_ends(conn, uuid.UUID(caller.person_id), container.clock.now())


def dated_officer(request: Request, caller: AdminCaller) -> bool:
    """Whether ``caller`` is a console officer whose port-security role ends (``_caller_ends``): nothing
    he makes may outlive it (review 105)."""
    return caller.holds(PORT_SECURITY_ROLE) and _caller_ends(request, caller) is not None


def audit_read(request: Request, caller: AdminCaller, kind: str, *, subject: str | None = None,
               data: dict[str, Any] | None = None, clients_too: bool = False) -> None:
    """Issue 4: console views and searches are on the audit trail, who looked at what, never what was
    found. Written before the answer is sent, in its own small transaction: no trail, no answer. Only a
    person's reads through the console: an admin client is a badge-office system whose lookups are its
    own traffic (its changes are on the trail like everyone's). Unless ``clients_too``: a search of the
    trail itself is on it whoever searched, a machine client too (review of the audit search, finding 6:
    a client's searches left no trace)."""
    if caller.person_id is None and not clients_too:
        return
    container = request.app.state.container
    audit.record(kind, at=container.clock.now(), actor=caller.audit_actor, subject=subject, data=data or {},
                 engine=container.engine)


def query_fingerprint(request: Request, text: str) -> str:
    """A free-text search term on the trail as a keyed hash (the pepper): the trail stays PII-free, and
    whoever holds the pepper can still check whether a given name or number was searched, and by whom."""
    pepper: bytes = request.app.state.container.settings.pepper_bytes()
    return keyed_hash(pepper, "console-search:" + " ".join(text.split()).casefold())


def _check_dpop(request: Request, token: str, claims: dict[str, Any], scheme: str) -> None:
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if jkt is None:
        if scheme == "dpop":
            raise AdminRefused(401, "invalid_token", "The token is not DPoP-bound.")
        return
    from ..dpop import DPoPError, dpop_verifier_for, proof_header

    if scheme != "dpop":  # RFC 9449 §7.1: a bound token is never accepted as a bare bearer token
        raise AdminRefused(401, "invalid_token", "The token is DPoP-bound: use the DPoP scheme.")
    try:
        proof_jwt = proof_header(request.headers)
        if proof_jwt is None:
            raise AdminRefused(401, "invalid_dpop_proof", "A DPoP proof is required.")
        # htu: the URI as the client addressed it, the issuer's origin and the path (RFC 9449 §4.3 item 9),
        # never the Host header nor the scheme behind a TLS proxy (release_service.api.auth does the same).
        base = urlsplit(request.app.state.container.settings.issuer)
        proof = dpop_verifier_for(request.app).verify(
            proof_jwt, htm=request.method, htu=f"{base.scheme}://{base.netloc}{request.url.path}", access_token=token
        )
    except DPoPError as exc:
        raise AdminRefused(401, exc.error, exc.description, nonce=exc.nonce) from exc
    if getattr(proof, "jkt", None) != jkt:
        raise AdminRefused(401, "invalid_dpop_proof", "The proof is not made with the token's key.")


class InitialAccessTokenIn(BaseModel):
    organisation_id: uuid.UUID | None = None
    ttl: int | None = Field(default=None, description="seconds, 60 to 30 days; default one day")


class PersonIn(BaseModel):
    given_name: str = Field(min_length=1, max_length=100)
    family_name: str = Field(min_length=1, max_length=100)
    employer_organisation_id: uuid.UUID | None = None
    locale: str | None = Field(default=None, pattern="^(nl|fr|de|en)$")


class OrganisationIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(description="shipping_line, release_party, transport_operator, terminal, customs or "
                                  "port_authority")
    eori: str | None = Field(default=None, pattern="^[A-Z]{2}[A-Z0-9]{1,15}$")
    vat: str | None = Field(default=None, pattern="^[A-Z]{2}[A-Z0-9]{2,18}$")
    terminal_code: str | None = Field(default=None, max_length=32, examples=["BEANR-K1700"], description=(
        "A terminal's (and only a terminal's) code: " + TERMINAL_CODE_FORM + ". Port-limited bans are "
        "screened by the port it starts with; another shape is refused (422 invalid_terminal_code)."))


class MembershipIn(BaseModel):
    organisation_id: uuid.UUID
    role: str = Field(description="driver, dispatcher, org_admin, port_security_admin or badge_office")
    valid_until: datetime | None = Field(
        default=None, description="When the role stops counting (RFC 3339 with an offset, in the future); "
        "absent: until removed. Given again, the role takes the new value (extended, shortened or made "
        "unending).")


def _registration_problem(request: Request, exc: RegistrationError) -> JSONResponse:
    status = 422 if exc.status in (400, 422) else exc.status
    return problem(status, exc.reason if exc.reason != exc.error else exc.error, exc.description,
                   instance=request.url.path)


@router.post("/initial-access-tokens", operation_id="admin_create_initial_access_token", status_code=201,
             responses=_ERRORS)
@admits(admin_client)
def create_initial_access_token(request: Request, body: InitialAccessTokenIn) -> JSONResponse:
    """An initial access token for RFC 7591 registration, shown once."""
    try:
        admin = caller_of(request, admin_client).client_id
    except AdminRefused as exc:
        return exc.response(request)
    now = request.app.state.container.clock.now()
    try:
        token, expires_at = management_for(request.app).create_initial_access_token(
            organisation_id=body.organisation_id, created_by=admin, ttl=body.ttl, now=now)
    except RegistrationError as exc:
        return _registration_problem(request, exc)
    return JSONResponse({"initial_access_token": token, "expires_at": expires_at.isoformat(),
                         "organisation_id": str(body.organisation_id) if body.organisation_id else None},
                        status_code=201, headers={"Cache-Control": "no-store"})


def _beyond_own_end(request: Request, caller: AdminCaller, until: datetime | None) -> AdminRefused | None:
    """The refusal (403 ``beyond_own_end``) of a privileged role given past the end of the giving
    officer's own port-security role (``_caller_ends``), or unending by him."""
    ends = _caller_ends(request, caller)
    if ends is None or (until is not None and until <= ends):
        return None
    return own_refused("beyond_own_end", f"An officer whose role ends at {ends.isoformat()} gives privileged "
                       "roles until then at the latest (valid_until).")


def _reserved_role(caller: AdminCaller, role: Any) -> bool:
    """A console officer neither makes nor ends admin or admin-console clients: a person's console
    session must not mint a machine admin (no badge-office-free backdoor) nor lock the console out.
    A role that is not a string (a JSON list or object) is no reserved role: the metadata check
    refuses it (invalid_client_metadata), and it must not reach the set's hash (TypeError, a 500)."""
    return caller.person_id is not None and isinstance(role, str) and role in CONSOLE_RESERVED_CLIENT_ROLES


@router.get("/clients", operation_id="admin_list_clients", responses=_ERRORS)
def list_clients(request: Request, limit: int = 100, after: str | None = None) -> JSONResponse:
    """Registered clients, by client_id (``after``: the last client_id of the previous page)."""
    try:
        caller = caller_of(request, port_security)
        audit_read(request, caller, "identity.admin.clients.listed", data={"after": after})
    except AdminRefused as exc:
        return exc.response(request)
    items = management_for(request.app).list_clients(limit=max(1, min(limit, 500)), after=after)
    return JSONResponse({"items": items})


@router.post("/clients", operation_id="admin_register_client", status_code=201, responses=_ERRORS)
@admits(port_security)
def register_client(request: Request, body: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008
    """Register a client of any role (as ``quaygate client create`` does): RFC 7591 metadata plus
    ``organisation_id`` and ``terminal_code``; the secret, if any, is shown once. Through the console,
    port security registers every role but ``admin`` and ``admin_console``, and an officer whose role
    ends registers none (403 ``dated_officer``: the client would outlive the role)."""
    try:
        caller = caller_of(request, port_security)
    except AdminRefused as exc:
        return exc.response(request)
    admin = caller.actor
    if dated_officer(request, caller):
        return own_refused("dated_officer", "An officer whose role ends registers no client: its credentials "
                           "would outlive the role. Another officer does.").response(request)
    if _reserved_role(caller, body.get("quaygate_role", body.get("role"))):
        log.info("identity.admin.refused.reserved_client_role")
        return problem(403, "client_role_reserved", "Admin and admin console clients are registered by an "
                       "administrator, not through the console.", instance=request.url.path)
    doc = dict(body)
    try:
        org = uuid.UUID(str(doc.pop("organisation_id"))) if doc.get("organisation_id") else None
    except ValueError:
        return problem(422, "invalid_request", "organisation_id is a UUID.", instance=request.url.path)
    terminal = doc.pop("terminal_code", None)
    if "role" in doc:
        doc.setdefault("quaygate_role", doc.pop("role"))
    try:
        out = management_for(request.app).register_by_admin(
            doc, organisation_id=org, terminal_code=terminal if isinstance(terminal, str) else None,
            admin=admin, now=request.app.state.container.clock.now())
    except RegistrationError as exc:
        return _registration_problem(request, exc)
    return JSONResponse(out.document, status_code=201, headers={"Cache-Control": "no-store"})


@router.post("/clients/{client_id}:deactivate", operation_id="admin_deactivate_client", responses=_ERRORS)
def deactivate_client(client_id: str, request: Request) -> JSONResponse:
    """Deactivate a client: no new tokens, its grants (refresh tokens and their access tokens) revoked."""
    try:
        caller = caller_of(request, port_security)
    except AdminRefused as exc:
        return exc.response(request)
    if _reserved_role(caller, _client_role(request, client_id)):
        log.info("identity.admin.refused.reserved_client_role")
        return problem(403, "client_role_reserved", "Admin and admin console clients are deactivated by an "
                       "administrator, not through the console.", instance=request.url.path)
    if not management_for(request.app).deactivate(client_id, admin=caller.actor,
                                                   now=request.app.state.container.clock.now()):
        return problem(404, "not_found", "No such active client.", instance=request.url.path)
    return JSONResponse({"client_id": client_id, "active": False})


class SecretRotationIn(BaseModel):
    revoke_tokens: bool = Field(default=False, description="also revoke the client's grants (refresh tokens) "
                                "and every access token issued to it so far (the client's first new token "
                                "comes a few seconds later); absent: they stay valid until they expire")


@router.post("/clients/{client_id}/secret", operation_id="admin_rotate_client_secret",
             responses=problem_responses(401, 403, 404, 409, 422))
@admits(port_security)
def rotate_client_secret(client_id: str, request: Request, body: SecretRotationIn | None = None) -> JSONResponse:
    """A new client secret (256 bits, made by the server), shown once, for a client that authenticates
    with one (client_secret_basic or client_secret_post; 409 ``no_client_secret`` otherwise), as
    ``quaygate client rotate-secret`` does. The old secret is refused from then on: at once by this
    server, within a second by the other replicas (the clients' shared epoch). Tokens already issued
    stay valid until they expire unless ``revoke_tokens`` (then access tokens issued up to five seconds
    after are refused too: the margin for a replica still taking the old secret; so the token endpoint
    issues the client no token until then, 429 ``slow_down`` with Retry-After: the first token with the
    new secret comes a few seconds after). A client registered
    through RFC 7591 also gets a new registration access token (``registration_access_token``, with its
    ``registration_client_uri``), shown once: the old one, which a thief of the secret usually holds
    too, is refused from then on (RFC 7592 §3). Through the console, not for admin or
    admin-console clients, and not by an officer whose role ends (the secret would outlive it)."""
    try:
        caller = caller_of(request, port_security)
    except AdminRefused as exc:
        return exc.response(request)
    if dated_officer(request, caller):
        return own_refused("dated_officer", "An officer whose role ends rotates no client secret: it would "
                           "outlive the role. Another officer does.").response(request)
    if _reserved_role(caller, _client_role(request, client_id)):
        log.info("identity.admin.refused.reserved_client_role")
        return problem(403, "client_role_reserved", "Admin and admin console clients' secrets are rotated by "
                       "an administrator, not through the console.", instance=request.url.path)
    revoke_tokens = body is not None and body.revoke_tokens
    try:
        rotated = management_for(request.app).rotate_secret(
            client_id, admin=caller.actor, revoke_tokens=revoke_tokens, now=request.app.state.container.clock.now())
    except RegistrationError as exc:
        return _registration_problem(request, exc)
    out: dict[str, Any] = {"client_id": client_id, "client_secret": rotated.client_secret,
                           "tokens_revoked": revoke_tokens}
    if rotated.registration_access_token is not None:
        out |= {"registration_access_token": rotated.registration_access_token,
                "registration_client_uri": rotated.registration_client_uri}
    return JSONResponse(out, headers={"Cache-Control": "no-store"})


@router.post("/persons", operation_id="admin_create_person", status_code=201, responses=_ERRORS)
@admits(admin_caller)
def create_person(request: Request, body: PersonIn) -> JSONResponse:
    """Register a person (a driver, a dispatcher ...); identity proofing and passkeys come later.
    Admin clients, and both console roles (the badge office registers holders, port security officers)."""
    try:
        caller = caller_of(request)
    except AdminRefused as exc:
        return exc.response(request)
    container = request.app.state.container
    now, person_id = container.clock.now(), uuid.uuid4()
    with container.engine.begin() as conn:
        employer = (conn.execute(sa.select(organisations.c.active).where(
            organisations.c.id == body.employer_organisation_id)).first() if body.employer_organisation_id else None)
        if body.employer_organisation_id and employer is None:
            return problem(422, "unknown_organisation", "No such organisation.", instance=request.url.path)
        if employer is not None and not employer.active:
            return problem(409, "organisation_inactive", "The organisation is deactivated.", instance=request.url.path)
        conn.execute(persons.insert().values(
            id=person_id, given_name=body.given_name, family_name=body.family_name,
            employer_organisation_id=body.employer_organisation_id, locale=body.locale, status="active",
            created_at=now))
        audit.record("identity.admin.person.created", at=now, actor=caller.audit_actor, subject=str(person_id),
                     conn=conn, data={"employer_organisation_id": str(body.employer_organisation_id)
                                      if body.employer_organisation_id else None})
    return JSONResponse({"id": str(person_id)}, status_code=201)


@router.post("/persons/{person_id}/memberships", operation_id="admin_add_membership", status_code=201,
             responses=problem_responses(401, 403, 404, 409, 422))
@admits(admin_caller)
def add_membership(person_id: uuid.UUID, request: Request, body: MembershipIn) -> JSONResponse:
    """Give a person a role in an organisation. Through the console: the console roles themselves
    (port_security_admin, badge_office) and the roles that act for a company (dispatcher, org_admin)
    only by port security (the badge office registers drivers), and never to oneself (no officer widens
    his own rights). Such a role ends the person's live enrolment codes and suspends the person's
    passkeys enrolled with a code the badge office issued (or whose provenance is unknown), with every
    login session and grant of the person when there are any (identity.authn.cutoff
    ``privileged_role_granted``): a code issued, or used, before, when a badge officer could issue it,
    must not log anyone in as the holder of the new role. The answer's ``passkeys_suspended`` says how
    many: such a person gets a new code from port security.

    ``valid_until`` (migration 0019): the role counts until then, and is swept then with a removal's
    consequences (identity.memberships). Given again with another ``valid_until`` (none: unending), a
    role held changes it (200, audited as ``identity.admin.membership.changed``); one already past its
    end is given anew (201). ``port_security_admin`` with a ``valid_until`` needs another officer whose
    role does not expire (409 ``last_port_security_officer``). An officer whose own port-security role
    ends gives a privileged role until then at the latest (403 ``beyond_own_end``)."""
    try:
        caller = caller_of(request)
        if body.role in c.PRIVILEGED_ROLES:
            require_role(caller, PORT_SECURITY_ROLE)
    except AdminRefused as exc:
        return exc.response(request)
    if body.role not in MEMBER_ROLES:
        return problem(422, "invalid_role", f"role is one of {', '.join(MEMBER_ROLES)}.", instance=request.url.path)
    if caller.person_id == str(person_id):
        return own_refused("own_membership", "An officer does not change his own roles.").response(request)
    container = request.app.state.container
    now, until = container.clock.now(), body.valid_until
    if until is not None and until.utcoffset() is None:
        return problem(422, "invalid_valid_until", "valid_until needs a UTC offset (RFC 3339).",
                       instance=request.url.path)
    if until is not None and until <= now:
        return problem(422, "valid_until_not_future", "valid_until must be in the future.", instance=request.url.path)
    if body.role in c.PRIVILEGED_ROLES and (refused := _beyond_own_end(request, caller, until)):
        return refused.response(request)
    with container.engine.begin() as conn:
        # The person's row locked first: an enrolment code issued meanwhile either commits before this
        # grant (and is ended below) or reads the new role once it commits (enrolment.lock_person).
        if enrolment.lock_person(conn, person_id) is None:
            return problem(404, "not_found", "No such person.", instance=request.url.path)
        active = conn.execute(sa.select(organisations.c.active)
                              .where(organisations.c.id == body.organisation_id)).scalar_one_or_none()
        if active is None:
            return problem(422, "unknown_organisation", "No such organisation.", instance=request.url.path)
        if not active:
            return problem(409, "organisation_inactive", "The organisation is deactivated.", instance=request.url.path)
        key = (memberships.c.person_id == person_id, memberships.c.organisation_id == body.organisation_id,
               memberships.c.role == body.role)
        held = conn.execute(sa.select(memberships.c.valid_until).where(*key)).first()
        if held is not None and (held.valid_until is None or held.valid_until > now) and held.valid_until == until:
            return problem(409, "membership_exists", "The person already has this role there.",
                           instance=request.url.path)
        if body.role == PORT_SECURITY_ROLE and until is not None:
            try:
                keep_an_officer(conn, person_id, body.organisation_id)
            except MembershipRefused as exc:
                return problem(409, exc.code, exc.message, instance=request.url.path)
        capped = codes_follow_end(conn, person_id, body.role, until, now=now)
        if held is not None and (held.valid_until is None or held.valid_until > now):
            conn.execute(memberships.update().where(*key).values(valid_until=until))
            audit.record("identity.admin.membership.changed", at=now, actor=caller.audit_actor,
                         subject=str(person_id), conn=conn,
                         data={"organisation_id": str(body.organisation_id), "role": body.role,
                               "valid_until": _iso(until), "was_valid_until": _iso(held.valid_until),
                               "enrolment_codes_capped": capped})
            return JSONResponse({"person_id": str(person_id), "organisation_id": str(body.organisation_id),
                                 "role": body.role, "valid_until": _iso(until), "passkeys_suspended": 0})
        # Not held, or held no more (past its end, not swept yet): given anew, as any grant.
        conn.execute(memberships.delete().where(*key))
        conn.execute(memberships.insert().values(person_id=person_id, organisation_id=body.organisation_id,
                                                 role=body.role, created_at=now, valid_until=until))
        done = cutoff.Promoted(0, 0, 0, 0)
        if body.role in c.PRIVILEGED_ROLES:
            done = cutoff.privileged_role_granted(conn, sessions=sessions_for(request.app),
                                                  grants=grants_for(request.app), person_id=person_id, now=now)
        audit.record("identity.admin.membership.added", at=now, actor=caller.audit_actor, subject=str(person_id),
                     conn=conn, data={"organisation_id": str(body.organisation_id), "role": body.role,
                                      "valid_until": _iso(until),
                                      "enrolment_codes_ended": done.enrolment_codes_ended,
                                      "enrolment_codes_capped": capped,
                                      "passkeys_suspended": done.passkeys_suspended,
                                      "sessions_ended": done.sessions_ended, "grants_revoked": done.grants_revoked})
    return JSONResponse({"person_id": str(person_id), "organisation_id": str(body.organisation_id),
                         "role": body.role, "valid_until": _iso(until),
                         "passkeys_suspended": done.passkeys_suspended}, status_code=201)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


_MEMBERSHIP_REFUSED = {"not_found": 404, "membership_not_found": 404, "driver_has_live_nominations": 409,
                       "last_port_security_officer": 409}


@router.delete("/persons/{person_id}/memberships/{organisation_id}/{role}", operation_id="admin_remove_membership",
               responses=problem_responses(401, 403, 404, 409, 422))
def remove_membership(person_id: uuid.UUID, organisation_id: uuid.UUID, role: str, request: Request) -> JSONResponse:
    """Take a person's role in an organisation away, by the rules of giving it: the privileged roles
    (port_security_admin, badge_office, dispatcher, org_admin) only by port security, the driver role
    by the badge office too, and never an officer's own roles. A privileged role stops working at once:
    the person's grants whose tokens can carry it are revoked (``grants_revoked``); the driver role is
    gone from his tokens at their next refresh. A driver membership is not removed while that
    organisation holds live nominations of him: 409 ``driver_has_live_nominations`` with their
    ``release_ids``, for the haulier to nominate another driver first (identity.memberships)."""
    try:
        caller = caller_of(request)
        if role in c.PRIVILEGED_ROLES:
            require_role(caller, PORT_SECURITY_ROLE)
    except AdminRefused as exc:
        return exc.response(request)
    if role not in MEMBER_ROLES:
        return problem(422, "invalid_role", f"role is one of {', '.join(MEMBER_ROLES)}.", instance=request.url.path)
    if caller.person_id == str(person_id):
        return own_refused("own_membership", "An officer does not change his own roles.").response(request)
    container = request.app.state.container
    try:
        done = remove(container.engine, grants=grants_for(request.app), person_id=person_id,
                      organisation_id=organisation_id, role=role, actor=caller.actor, now=container.clock.now())
    except MembershipRefused as exc:
        extra = {"release_ids": [str(r) for r in exc.release_ids]} if exc.release_ids else {}
        return problem(_MEMBERSHIP_REFUSED.get(exc.code, 422), exc.code, exc.message, instance=request.url.path,
                       **extra)
    return JSONResponse({"person_id": str(person_id), "organisation_id": str(organisation_id), "role": role,
                         "grants_revoked": done.grants_revoked})


def _client_role(request: Request, client_id: str) -> str | None:
    with request.app.state.container.engine.connect() as conn:
        role: str | None = conn.execute(sa.select(oauth_clients.c.role)
                                        .where(oauth_clients.c.client_id == client_id)).scalar_one_or_none()
    return role


# ---- organisations and persons, for the console (issue 4) --------------------------------------------

SEARCH_MAX = 50


def _like(text: str) -> str:
    """A LIKE pattern for ``text`` anywhere, its own wildcards escaped (with ``escape="\\"``)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _org(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "name": row.name, "kind": row.kind, "eori": row.eori, "vat": row.vat,
            "terminal_code": row.terminal_code, "created_at": row.created_at.isoformat(), **status_fields(row)}


@router.get("/organisations", operation_id="admin_list_organisations", responses=_ERRORS)
def list_organisations(request: Request, q: str | None = Query(default=None, max_length=100),  # noqa: B008
                       limit: int = 100, offset: int = Query(default=0, ge=0)) -> JSONResponse:  # noqa: B008
    """Organisations by name (``q``: part of the name, EORI, VAT or terminal code), by name, paged."""
    try:
        caller = caller_of(request, port_security)
        audit_read(request, caller, "identity.admin.organisations.searched",
                   data={"query": query_fingerprint(request, q) if q else None, "offset": offset})
    except AdminRefused as exc:
        return exc.response(request)
    query = sa.select(organisations).order_by(organisations.c.name, organisations.c.id)
    if q and q.strip():
        pattern = _like(q.strip().lower())
        query = query.where(sa.or_(*(sa.func.lower(col).like(pattern, escape="\\") for col in (
            organisations.c.name, organisations.c.eori, organisations.c.vat, organisations.c.terminal_code))))
    with request.app.state.container.engine.connect() as conn:
        rows = conn.execute(query.limit(max(1, min(limit, 500))).offset(offset)).all()
    return JSONResponse({"items": [_org(r) for r in rows]})


@router.post("/organisations", operation_id="admin_create_organisation", status_code=201,
             responses=problem_responses(401, 403, 409, 422))
@admits(port_security)
def create_organisation(request: Request, body: OrganisationIn) -> JSONResponse:
    """Register an organisation (identified by EORI and/or VAT; a terminal by its code)."""
    try:
        caller = caller_of(request, port_security)
    except AdminRefused as exc:
        return exc.response(request)
    try:
        kind = OrgKind(body.kind)
    except ValueError:
        return problem(422, "invalid_kind", f"kind is one of {', '.join(k.value for k in OrgKind)}.",
                       instance=request.url.path)
    if not (body.eori or body.vat):
        return problem(422, "identifier_required", "An organisation is identified by an EORI and/or a VAT number.",
                       instance=request.url.path)
    if (kind is OrgKind.TERMINAL) != (body.terminal_code is not None):
        return problem(422, "terminal_code", "A terminal has a terminal code, and only a terminal.",
                       instance=request.url.path)
    if body.terminal_code is not None and not is_terminal_code(body.terminal_code):
        # Review 123, finding 1: a code that does not start with its port's would hide that port's bans.
        log.info("identity.admin.organisation.refused.terminal_code")
        return problem(422, "invalid_terminal_code", f"A terminal code is {TERMINAL_CODE_FORM}.",
                       instance=request.url.path)
    container = request.app.state.container
    now, org_id = container.clock.now(), uuid.uuid4()
    try:
        with container.engine.begin() as conn:
            conn.execute(organisations.insert().values(id=org_id, name=body.name.strip(), kind=kind.value,
                                                       eori=body.eori, vat=body.vat, terminal_code=body.terminal_code,
                                                       created_at=now))
            audit.record("identity.admin.organisation.created", at=now, actor=caller.audit_actor,
                         subject=str(org_id), conn=conn, data={"kind": kind.value})
            row = conn.execute(sa.select(organisations).where(organisations.c.id == org_id)).one()
    except sa.exc.IntegrityError:  # the unique EORI, VAT or terminal code: nothing was written
        log.info("identity.admin.organisation.refused.taken")
        return problem(409, "organisation_exists", "An organisation with this EORI, VAT or terminal code exists.",
                       instance=request.url.path)
    log.info("identity.admin.organisation.created")
    return JSONResponse(_org(row), status_code=201)


@router.get("/persons", operation_id="admin_search_persons", responses=_ERRORS)
def search_persons(request: Request, q: str = Query(max_length=100),  # noqa: B008
                   limit: int = 20) -> JSONResponse:
    """Persons whose given or family name contains each word of ``q`` (case-insensitive), with how
    many badges each holds; for both console roles. The search is audited, not what it found."""
    try:
        caller = admin_caller(request)
    except AdminRefused as exc:
        return exc.response(request)
    words = q.lower().split()[:4]
    if len("".join(words)) < 2:  # one letter would list half the register
        return problem(422, "invalid_request", "Give at least two letters of a name.", instance=request.url.path)
    audit_read(request, caller, "identity.admin.persons.searched", data={"query": query_fingerprint(request, q)})
    name = sa.func.lower(persons.c.given_name + " " + persons.c.family_name)
    held = (sa.select(sa.func.count()).select_from(badges).where(badges.c.person_id == persons.c.id)
            .scalar_subquery())
    query = (sa.select(persons.c.id, persons.c.given_name, persons.c.family_name, persons.c.status,
                       persons.c.employer_organisation_id, held.label("badges"))
             .where(*(name.like(_like(w), escape="\\") for w in words))
             .order_by(persons.c.family_name, persons.c.given_name, persons.c.id)
             .limit(max(1, min(limit, SEARCH_MAX))))
    with request.app.state.container.engine.connect() as conn:
        rows = conn.execute(query).all()
    return JSONResponse({"items": [
        {"id": str(r.id), "given_name": r.given_name, "family_name": r.family_name, "status": r.status,
         "employer_organisation_id": str(r.employer_organisation_id) if r.employer_organisation_id else None,
         "badges": int(r.badges)} for r in rows]})


class OrgStatusIn(BaseModel):
    reason: str = Field(max_length=500, description="why: kept on the organisation and on the audit trail")


_ORG_STATUS = {"not_found": 404, "status_unchanged": 409, "organisation_reserved": 403}


def _org_status(request: Request, organisation_id: uuid.UUID, body: OrgStatusIn, *, active: bool) -> JSONResponse:
    try:
        caller = caller_of(request, port_security)
    except AdminRefused as exc:
        return exc.response(request)
    container = request.app.state.container
    with container.engine.connect() as conn:
        kind = conn.execute(sa.select(organisations.c.kind)
                            .where(organisations.c.id == organisation_id)).scalar_one_or_none()
    if caller.person_id is not None and kind == OrgKind.PORT_AUTHORITY.value and not active:
        # As with admin clients: a console session neither locks out the port authority's own admin
        # clients nor its officers' organisation; an administrator does that with an admin client.
        log.info("identity.admin.refused.reserved_organisation")
        return problem(403, "organisation_reserved", "The port authority is deactivated by an administrator, not "
                       "through the console.", instance=request.url.path)
    try:
        set_active(container.engine, grants_for(request.app), organisation_id, active=active, actor=caller.actor,
                   reason=body.reason, now=container.clock.now(), access_token_ttl=container.settings.access_token_ttl,
                   on_change=provider_for(request.app).clients.changed)
    except OrganisationRefused as exc:
        return problem(_ORG_STATUS.get(exc.code, 422), exc.code, exc.message, instance=request.url.path)
    with container.engine.connect() as conn:
        row = conn.execute(sa.select(organisations).where(organisations.c.id == organisation_id)).one()
    return JSONResponse(_org(row))


@router.post("/organisations/{organisation_id}:deactivate", operation_id="admin_deactivate_organisation",
             responses=problem_responses(401, 403, 404, 409, 422))
@admits(port_security)
def deactivate_organisation(organisation_id: uuid.UUID, request: Request, body: OrgStatusIn) -> JSONResponse:
    """Deactivate an organisation, saying why: its clients' tokens are revoked and they get no new ones;
    it receives no new rights, transfers or nominations (``organisation_inactive``)."""
    return _org_status(request, organisation_id, body, active=False)


@router.post("/organisations/{organisation_id}:reactivate", operation_id="admin_reactivate_organisation",
             responses=problem_responses(401, 403, 404, 409, 422))
@admits(port_security)
def reactivate_organisation(organisation_id: uuid.UUID, request: Request, body: OrgStatusIn) -> JSONResponse:
    """Reactivate a deactivated organisation, saying why; its clients ask for new tokens."""
    return _org_status(request, organisation_id, body, active=True)


class PersonSuspendIn(BaseModel):
    reason: str = Field(max_length=500, description="why: kept on the audit trail")


class PersonReinstateIn(BaseModel):
    reason: str = Field(max_length=500, description="why: kept on the audit trail")


_PERSON_STATUS = {"not_found": 404, "status_unchanged": 409, "own_suspension": 403, "own_reinstatement": 403}


@router.post("/persons/{person_id}:suspend", operation_id="admin_suspend_person",
             responses=problem_responses(401, 403, 404, 409, 422))
@admits(port_security)
def suspend_person(person_id: uuid.UUID, request: Request, body: PersonSuspendIn) -> JSONResponse:
    """Suspend a person, saying why: no more logins or refreshed tokens, every login session ended and
    every grant revoked (refresh and access tokens), at once (identity.authn.cutoff). Port security;
    an officer never suspends himself through the console. ``client_secrets_shown``: the active clients
    whose current secret an officer was shown (he registered them in the console or rotated their
    secret last); a secret outlives his suspension, so rotate those again if he may have kept one."""

    def suspend(engine: sa.Engine, actor: str, now: datetime) -> dict[str, Any]:
        cut = cutoff.suspend_person(engine, sessions=sessions_for(request.app), grants=grants_for(request.app),
                                    person_id=person_id, actor=actor, reason=body.reason, now=now,
                                    guard=lambda conn: keep_an_officer(conn, person_id, None))
        return {"status": "suspended", "sessions_ended": cut.sessions_ended, "grants_revoked": cut.grants_revoked,
                "client_secrets_shown": list(cut.client_secrets_shown)}

    return _change_person_status(request, person_id, suspend, own=("own_suspension",
                                                                   "An officer does not suspend himself."))


@router.post("/persons/{person_id}:reinstate", operation_id="admin_reinstate_person",
             responses=problem_responses(401, 403, 404, 409, 422))
@admits(port_security)
def reinstate_person(person_id: uuid.UUID, request: Request, body: PersonReinstateIn) -> JSONResponse:
    """Lift a person's suspension, saying why: the person may log in again. The sessions ended and the
    grants revoked stay so (the person logs in again), a passkey suspended for a counter regression
    stays suspended, and enrolment codes issued before the suspension are ended (identity.authn.cutoff);
    the answer says how many active passkeys the person has (0: a new enrolment code is needed). Port
    security; an officer never reinstates himself through the console."""

    def reinstate(engine: sa.Engine, actor: str, now: datetime) -> dict[str, Any]:
        done = cutoff.reinstate_person(engine, person_id=person_id, actor=actor, reason=body.reason, now=now)
        return {"status": "active", "enrolment_codes_ended": done.enrolment_codes_ended,
                "passkeys_active": done.passkeys_active, "passkeys_suspended": done.passkeys_suspended}

    return _change_person_status(request, person_id, reinstate, own=("own_reinstatement",
                                                                     "An officer does not reinstate himself."))


def _change_person_status(request: Request, person_id: uuid.UUID,
                          change: Callable[[sa.Engine, str, datetime], dict[str, Any]], *,
                          own: tuple[str, str]) -> JSONResponse:
    """What a suspension and a reinstatement share: port security's caller (admitted before the body was
    read), never the officer himself (``own``: the refusal's code and detail), then ``change`` (the
    engine, the caller's actor as badge histories store it, now; identity.authn.cutoff) and its answer
    after the person's id, or its PersonStatusRefused as a problem (``_PERSON_STATUS``)."""
    try:
        caller = caller_of(request, port_security)
    except AdminRefused as exc:
        return exc.response(request)
    if caller.person_id == str(person_id):
        return own_refused(*own).response(request)
    container = request.app.state.container
    try:
        answer = change(container.engine, caller.actor, container.clock.now())
    except cutoff.PersonStatusRefused as exc:
        return problem(_PERSON_STATUS.get(exc.code, 422), exc.code, exc.message, instance=request.url.path)
    except MembershipRefused as exc:  # port security keeps a standing officer (a suspension)
        return problem(409, exc.code, exc.message, instance=request.url.path)
    return JSONResponse({"id": str(person_id), **answer})


ALERTS_SHOWN = 20
ALERT_KIND = "screening.ban.nomination_alert"  # as identity.api.bans lists them (it imports this module)


@router.get("/persons/{person_id}", operation_id="admin_get_person", responses=_ERRORS)
def get_person(person_id: uuid.UUID, request: Request) -> JSONResponse:
    """A person for the console: names, status, memberships, and the port-ban screening now (clear,
    banned or unavailable, the list's age, the references of the bans that hit) with the alerts a ban
    raised on the person's open nominations. The view is audited, not what it showed."""
    try:
        caller = admin_caller(request)
        audit_read(request, caller, "identity.admin.person.viewed", subject=str(person_id))
    except AdminRefused as exc:
        return exc.response(request)
    container = request.app.state.container
    settings, now = container.settings, container.clock.now()
    with container.engine.connect() as conn:
        row = conn.execute(sa.select(persons).where(persons.c.id == person_id)).first()
        if row is None:
            return problem(404, "not_found", "No such person.", instance=request.url.path)
        members = conn.execute(
            sa.select(memberships.c.organisation_id, memberships.c.role, memberships.c.valid_until,
                      organisations.c.name, organisations.c.active)
            .join(organisations, organisations.c.id == memberships.c.organisation_id)
            .where(memberships.c.person_id == person_id)
            .order_by(organisations.c.name, memberships.c.role)).all()
        check = ban_check(conn, person_id, now, port=None, max_list_age=timedelta(seconds=settings.ban_list_max_age))
        alerts = conn.execute(
            sa.select(audit_log.c.at, audit_log.c.data)
            .where(audit_log.c.kind == ALERT_KIND, audit_log.c.data["driver_person_id"].as_string() == str(person_id))
            .order_by(audit_log.c.id.desc()).limit(ALERTS_SHOWN)).all()
    configured = bool(settings.ban_register_jwk or settings.ban_register_jwk_path)
    return JSONResponse({
        "id": str(row.id), "given_name": row.given_name, "family_name": row.family_name, "status": row.status,
        "employer_organisation_id": str(row.employer_organisation_id) if row.employer_organisation_id else None,
        "national_id_linked": row.national_id_hash is not None,
        "memberships": [{"organisation_id": str(m.organisation_id), "organisation_name": m.name, "role": m.role,
                         "organisation_active": bool(m.active), "valid_until": _iso(m.valid_until),
                         "expired": m.valid_until is not None and m.valid_until <= now} for m in members],
        "screening": {"register_configured": configured, "status": check.status.value,
                      "list_age_seconds": check.list_age_seconds, "ban_references": list(check.references)},
        "ban_alerts": [{"at": a.at.isoformat(), "release_id": a.data.get("release_id"),
                        "ban_reference": a.data.get("ban_reference")} for a in alerts],
    })

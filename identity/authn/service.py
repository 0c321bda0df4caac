"""Passkey use cases: log in, register (after a login or with an enrolment code), manage, enrol.

One method per use case, one transaction each (STYLE.md #5); the routers in ``identity.api.passkeys``
only translate HTTP. Every refusal raises :class:`PasskeyError` with a stable code (mapped to a status
in the router's one table) and is logged with its reason; it is audited too when it concerns a credential
of ours (``_refuse_login``: an anonymous caller's made-up ids and forged flows are not written down).

A ceremony ("flow") is two calls, ``begin_*`` (a challenge and the options) and ``finish_*``. A challenge
is used once (WebAuthn §13.4.3): of the same flow, replayed or raced, at most one finish goes through,
and never one whose flow may have been used before the cache's dataset began (quaygate/dataset.py).

A login starts anonymous, so its flow is stored nowhere (review 67, finding 4: Redis runs under
noeviction, and what an anonymous caller can make us store fills it): the flow id is the flow, sealed
(identity.authn.flows: purpose, issue time, lifetime, a nonce, under a MAC; the challenge is derived
from it). ``finish_authentication`` opens it, verifies the assertion's signature against its challenge,
and only then claims it, with one ``SET NX`` until it expires (``Cache.claim``, refused for a flow
issued before the cache's epoch): only a caller holding a registered passkey makes a write. A
registration is begun by a known person (a recent login session, or an enrolment code), so its flow is
kept in the cache under a random id, and ``finish_registration`` takes it with one atomic ``GETDEL``
before anything else (``Cache.put``/``take``).

    begin_authentication --> sealed flow (purpose, issued, lifetime, nonce) --finish_authentication:
                             open, verify the signature, claim (SET NX)--> session | refused
    begin_registration   --> stored flow (challenge, person, sid | enrolment code hash)
                                                    --finish_registration (take)--> credential (+ session)
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import sqlalchemy as sa

from quaygate.appstate import built_once
from quaygate.schema import persons

from .. import audit
from ..bans.screening import from_settings as ban_screening
from ..domain import assurance
from ..grants import GrantStore, grants_for
from ..ratelimit import LoginGuard, login_guard_for
from ..sessions import LoginSession, SessionStore, hold_person, session_live, sessions_for
from . import enrolment, passkeys
from .credentials import (
    ACTIVE,
    PRIVILEGED_ROLE_GRANTED,
    REMOVED,
    SUSPENDED,
    CredentialStore,
    Provenance,
    StoredCredential,
)
from .cutoff import cut_off
from .flows import FlowRefused, FlowSeal, SealedFlow

if TYPE_CHECKING:
    from quaygate.cache import Cache
    from quaygate.settings import Settings

log = logging.getLogger(__name__)

AUTHENTICATION = "authentication"
REGISTRATION = "registration"
# Adding a passkey to an existing account is what an attacker with a stolen session would do first, and
# removing or renaming the owner's next (review 122, finding 1): each needs a login this recent
# (Keycloak's "max auth age" for credential setup is 5 minutes; a driver adding his second phone from
# the account page a little later should not have to log in again).
REGISTRATION_MAX_AUTH_AGE = timedelta(minutes=15)
# A passkey logs in at acr passkey, so only a login at least that strong may add one (else a basic
# upstream login, which meets no acr demand, would raise itself to passkey: docs/itsme.md). Compared
# with ``assurance.satisfies``, as every acr demand is; the face step-up refuses the same logins
# (identity.domain.face.STEP_UP_BASES).
REGISTRATION_MIN_ACR = assurance.ACR_PASSKEY
# And a person who holds a privileged role (claims.PRIVILEGED_ROLES: an officer, a company's dispatcher
# or org_admin) adds one only from a session one of his privileged enrolments opened, and changes his
# passkeys or signs out elsewhere only from such a session (review 145, finding 1): an upstream login
# ranks above passkey, and whoever controlled the itsme identity an officer was linked to added a passkey
# of his own, whose login opened the admin console (review 108 wants a passkey there), and took the
# officer's own passkeys away. So an officer's active passkeys are all privileged enrolments, as a role
# grant already makes them (identity.authn.cutoff ``privileged_role_granted``).
DEFAULT_RETURN_TO = "/app/"
_RETURN_PREFIXES = ("/oauth2/", "/app/")
_NAME_MAX = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FLOW_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# A login flow's claim outlives its expiry by this much: a replica whose clock is behind another's
# (NTP keeps them within far less) still finds the claim while it takes the flow for unexpired.
_CLAIM_MARGIN = 5.0


# The refusals that tell the person whom to turn to (a new enrolment code, a suspension lifted): the
# office that issues his codes (enrolment.issuing_office), port security for a person who holds a
# privileged role, which the badge office could not help. Each is raised only once the caller has shown
# he is the person, or holds his code: a passkey's signature verified, a login session, an enrolment
# code found.
OFFICE_CODES = frozenset({"passkey_suspended", "person_suspended", "person_banned", "person_not_active",
                          "enrolment_code_expired", "enrolment_code_used", "insufficient_authentication"})


class PasskeyError(Exception):
    """A refused passkey call. ``code`` is public (problem ``code``); ``detail`` is for the audit log;
    ``retry_after`` (seconds) comes with ``rate_limited``; ``office`` with an OFFICE_CODES refusal of a
    known person: whom he turns to (enrolment.BADGE_OFFICE or PORT_SECURITY)."""

    def __init__(self, code: str, detail: str = "", *, retry_after: int | None = None,
                 office: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.office = office


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One login attempt: when, and from where."""

    now: datetime
    address: str | None


class _Refused(Exception):
    """A login refused while its connection is held: audited once it is returned (``finish_authentication``)."""

    def __init__(self, code: str, detail: str, stored: StoredCredential | None) -> None:
        super().__init__(code)
        self.code, self.detail, self.stored = code, detail, stored


class _Stale(Exception):
    """A session too old or too weak to change the person's passkeys (``PasskeyService._recent_session``)."""

    def __init__(self, code: str, detail: str, person_id: uuid.UUID | None) -> None:
        super().__init__(code)
        self.code, self.detail, self.person_id = code, detail, person_id


@dataclass(frozen=True, slots=True)
class Removed:
    """A passkey removed: how many active ones the person has left; ``signed_out`` when it had opened the
    remover's own session, which ended with it."""

    active_remaining: int
    signed_out: bool


@dataclass(frozen=True, slots=True)
class LoginResult:
    cookie: str
    session: LoginSession
    return_to: str


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    credential_id: str
    name: str
    created_at: datetime
    cookie: str | None  # a new session when the registration was an enrolment (no session before)


@dataclass(frozen=True, slots=True)
class Flow:
    purpose: str
    challenge: bytes
    expires_at: datetime
    person_id: uuid.UUID | None = None
    sid: str | None = None
    code_hash: str | None = None


def safe_return_to(value: Any) -> str:
    """Where to send the browser after a login: a relative path into our own authorization endpoint,
    app or account pages, else ``/app/`` (OAuth 2.0 Security BCP §4.11: no open redirector). Refuses
    absolute URLs, scheme-relative ``//host`` and ``/\\host`` (browsers read both as another host),
    control characters and dot segments."""
    if not isinstance(value, str) or not value or len(value) > 2000:
        return DEFAULT_RETURN_TO
    if not value.startswith("/") or value.startswith("//") or "\\" in value or _CONTROL.search(value):
        return DEFAULT_RETURN_TO
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return DEFAULT_RETURN_TO
    if any(seg in ("..", ".") for seg in parts.path.split("/")) or "%2e" in parts.path.lower():
        return DEFAULT_RETURN_TO
    path = parts.path
    if path.startswith(_RETURN_PREFIXES) or path == "/account" or path.startswith("/account/"):
        return value
    return DEFAULT_RETURN_TO


def suspended_code(status_reason: str | None) -> str:
    """The public code of a login refused for a suspended passkey, by why it was suspended: the person
    is told whom to turn to. A passkey suspended when a privileged role was granted
    (identity.authn.cutoff ``privileged_role_granted``) is replaced with a code from port security
    only, which alone issues codes for a person who holds such a role (identity.api.admin
    ``enrolment_code_refused_roles``): ``passkey_suspended_privileged_role``. Any other (a counter
    regression): ``passkey_suspended``, with the office that issues the person's codes (OFFICE_CODES)."""
    return "passkey_suspended_privileged_role" if status_reason == PRIVILEGED_ROLE_GRANTED else "passkey_suspended"


def _ref(credential_id: str) -> str:
    """A credential id as an audit subject (at most 100 characters; ids may be up to 1023 bytes)."""
    if len(credential_id) <= 100:
        return credential_id
    return "sha256:" + hashlib.sha256(credential_id.encode()).hexdigest()


def clean_name(value: Any, *, default: str | None = None) -> str:
    """A passkey's display name: 1-100 characters, no control characters. Raises invalid_name."""
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise PasskeyError("invalid_name", "name is not a string")
    name = " ".join(_CONTROL.sub(" ", value).split())
    if not 0 < len(name) <= _NAME_MAX:
        raise PasskeyError("invalid_name", "name must have 1 to 100 characters")
    return name


class PasskeyService:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: sa.Engine,
        cache: Cache,
        clock: Any,
        sessions: SessionStore,
        grants: GrantStore,
        guard: LoginGuard | None = None,
    ) -> None:
        self._guard = guard
        self._grants = grants
        self._settings = settings
        self._engine = engine
        self._cache = cache
        self._clock = clock
        self._sessions = sessions
        self.credentials = CredentialStore(engine)
        self.rp = passkeys.relying_party(
            issuer=settings.issuer,
            rp_id=settings.webauthn_rp_id,
            name=settings.webauthn_rp_name,
            origins=settings.webauthn_origins,
            android_origins=settings.webauthn_android_origins,
        )
        issuer = urlsplit(settings.issuer)
        # CSRF: the browser origins our own pages are served from (never the android: origins, which
        # no browser sends in an Origin header).
        self.allowed_origins = frozenset([f"{issuer.scheme}://{issuer.netloc}", *settings.webauthn_origins])
        self._handle_key = settings.pepper_bytes()
        self._seal = FlowSeal(settings.pepper_bytes())
        self._ttl = settings.webauthn_challenge_ttl
        # A port ban in force refuses the login and the enrolment, as the brokered login's: once a register
        # is configured (identity.bans.screening ``banned``); None before.
        self._bans = ban_screening(settings, engine)

    # ---- authentication -------------------------------------------------------------------------

    def begin_authentication(self, *, origin: str | None) -> tuple[str, dict[str, Any]]:
        """The options of a login and its sealed flow (identity.authn.flows): nothing is stored, so an
        anonymous caller, however many times it asks, makes no write (review 67, finding 4)."""
        self.check_origin(origin)
        flow, sealed = self._seal.seal(AUTHENTICATION, now=self._clock.now().timestamp(), lifetime=self._ttl)
        return flow, passkeys.authentication_options(self.rp, challenge=sealed.challenge, timeout_ms=self._ttl * 1000)

    def finish_authentication(
        self, *, origin: str | None, flow: Any, credential: Any, return_to: Any = None, address: str | None = None,
        session_cookie: str | None = None,
    ) -> LoginResult:
        """WebAuthn §7.2. The order matters: nothing about the credential's or person's state is told
        before the signature holds, and the counter is judged only on a signed response.

        The flow is opened first (its seal, purpose and expiry: identity.authn.flows), and claimed once
        the signature over its challenge holds, before anything else is judged: of the same flow,
        replayed or raced, one caller goes on, whatever the outcome, and a flow issued before the
        cache's dataset began is refused (its claim may have been lost with the data). So an anonymous
        caller's refused attempt writes nothing per attempt to the cache: only the holder of a
        registered passkey makes the claim.

        The login guard (``identity.ratelimit.LoginGuard``) counts the attempt against the caller's
        address (its per-address login allowance) before the verification, and nothing else: no failure
        is counted against the credential the assertion names (review 122, finding 2). Before its
        signature holds, an assertion proves nothing of who sent it: anyone who knew a driver's credential
        id (it is in the audit trail, on his account page, and was in an enrolment's excludeCredentials)
        signed with a key of his own, named that id, and five posts locked the driver out, again and
        again. And a WebAuthn signature cannot be guessed, so a count of failures protects nothing a
        lockout could: the per-address allowance bounds the flood. Once the signature holds, the caller
        holds the key; what refuses him then (removed, suspended, a counter regression) is the
        credential's state, not a guess.

        The transaction that creates the session takes a share lock on the person's row first
        (``sessions.hold_person``) and judges the status it reads then: a suspension committing meanwhile
        is waited for and refuses the login, or waits for the login and ends its session. Under that lock,
        once a port-ban register is configured, a ban in force refuses the login too (``person_banned``, the
        brokered login's rule: identity.bans.screening ``banned``); screening ``unavailable`` does not.

        ``session_cookie``: the browser's; the session it names ends with this login, whose session takes
        over its grants if it was this person's (``SessionStore.create``, review 120 finding 1).
        """
        attempt = _Attempt(self._clock.now(), address)
        try:
            self.check_origin(origin)
            sealed = self._open_flow(flow, attempt.now)
            claim = passkeys.read_assertion(credential)
        except passkeys.CeremonyRefused as exc:
            self._refuse_login(exc.reason, exc.detail, attempt)
        except PasskeyError as exc:
            self._refuse_login(exc.code, exc.detail, attempt)
        if self._guard is not None:
            retry = self._guard.check(None, address)  # the address's allowance only (review 122, finding 2)
            if retry is not None:
                self._refuse_login("rate_limited", "login guard", attempt, retry_after=retry)
        now = attempt.now
        # One connection from the read to the commit: the credential is read in the transaction that
        # records its use. A refusal leaves the block (it has written nothing) and is audited once the
        # connection is back in the pool: never a second connection while this one is held, or a burst
        # of refused logins (a banned driver's, in a loop) would each hold one and wait for another and
        # freeze the pool for everyone (as review 137 found of /authorize); on SQLite every transaction
        # holds the write lock.
        try:
            with self._engine.connect() as conn:

                def refuse(code: str, detail: str, stored: StoredCredential | None = None) -> NoReturn:
                    raise _Refused(code, detail, stored)

                stored = self.credentials.get(claim.credential_id, conn)
                if stored is None:
                    refuse("passkey_unknown", "no such credential")
                try:
                    verified = passkeys.verify_assertion(
                        self.rp, credential=credential, challenge=sealed.challenge, public_key=stored.public_key
                    )
                except passkeys.CeremonyRefused as exc:
                    refuse("passkey_invalid", exc.detail, stored)
                if not passkeys.user_handle_matches(claim.user_handle, self._user_handle(stored.person_id)):
                    refuse("passkey_invalid", "user_handle_mismatch", stored)
                # The signature holds: now, and not before, the flow's one use is claimed.
                used_before = self._claim_flow_use(sealed, now)
                if used_before is not None:
                    refuse("challenge_expired", used_before, stored)
                if stored.status == REMOVED:
                    refuse("passkey_unknown", "removed", stored)
                if stored.status == SUSPENDED:
                    refuse(suspended_code(stored.status_reason), stored.status_reason or "suspended", stored)
                # Before the transaction writes anything: the person's row share-locked, its status read under
                # the lock (a suspension committed meanwhile is seen; one coming later waits for this commit).
                if hold_person(conn, stored.person_id) != "active":
                    refuse("person_suspended", "person not active", stored)
                # A ban never changes the status: judged here, under the same lock (identity.bans.screening).
                if self._bans is not None and self._bans.banned(conn, stored.person_id, now):
                    refuse("person_banned", "port ban in force", stored)
                used = not passkeys.sign_count_regressed(stored.sign_count, verified.sign_count) and \
                    self.credentials.record_use(conn, stored.credential_id, sign_count=verified.sign_count,
                                                backed_up=verified.backed_up, now=now)
                if used:
                    cookie, session = self._sessions.create(
                        stored.person_id, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY, now=now, conn=conn,
                        replacing=session_cookie,
                        credential_id=stored.credential_id,
                    )
                    audit.record(
                        "identity.login.passkey.succeeded",
                        at=now,
                        actor={"person_id": str(stored.person_id)},
                        subject=session.sid,
                        data={"credential_id": _ref(stored.credential_id), "acr": assurance.ACR_PASSKEY},
                        conn=conn,
                    )
                    conn.commit()
                else:
                    conn.rollback()
        except _Refused as r:
            self._refuse_login(r.code, r.detail, attempt, r.stored)
        if not used:
            # The counter went backwards; or another login moved it past this one, or the credential
            # was suspended or removed between our read and our write (the same rule, judged
            # atomically by the UPDATE).
            self._suspend_for_counter(stored, verified.sign_count, attempt)
        log.info("identity.login.passkey.succeeded")
        return LoginResult(cookie, session, safe_return_to(return_to))

    def _suspend_for_counter(self, stored: StoredCredential, presented: int, attempt: _Attempt) -> NoReturn:
        """WebAuthn §6.1.1: a counter that went backwards means a cloned authenticator. Which of the two
        is the thief is unknown, so every session and grant of the person ends with the credential, in
        its transaction (the office that issues his codes steps in: OFFICE_CODES)."""
        with self._engine.begin() as conn:
            suspended = self.credentials.suspend(conn, stored.credential_id, reason="counter_regression")
            if suspended:
                ended, revoked = self._cut_off(conn, stored.person_id, keep=None,
                                               reason="passkey_counter_regression", now=attempt.now)
                audit.record(
                    "identity.passkey.suspended.counter_regression",
                    at=attempt.now,
                    actor={"person_id": str(stored.person_id)},
                    subject=_ref(stored.credential_id),
                    data={"stored_sign_count": stored.sign_count, "presented_sign_count": presented,
                          "sessions_ended": ended, "grants_revoked": revoked},
                    conn=conn,
                )
        if suspended:
            log.warning("identity.passkey.suspended.counter_regression")
        self._refuse_login("passkey_suspended", "counter_regression", attempt, stored)

    def _refuse_login(
        self,
        code: str,
        detail: str,
        attempt: _Attempt,
        stored: StoredCredential | None = None,
        *,
        retry_after: int | None = None,
    ) -> NoReturn:
        """Log and raise a refused login, audited when the credential the assertion names exists
        (``stored``). A refusal before any credential is found (a made-up credential id, an expired or
        forged flow, the address over its login allowance) concerns no one: logged only, so an anonymous
        caller does not grow the audit trail (a row per request: the refusals past the login allowance are
        not bounded by it). No refusal counts against the credential (``finish_authentication``: review
        122, finding 2); each attempt counted against the address before it."""
        reason = detail if detail in ("counter_regression", "user_handle_mismatch", "removed") else code
        if stored is not None:
            audit.record(
                f"identity.login.passkey.refused.{reason}",
                at=attempt.now,
                actor={"person_id": str(stored.person_id)},
                subject=_ref(stored.credential_id),
                data={"code": code, "detail": detail[:200]},
                engine=self._engine,
            )
        log.info("identity.login.passkey.refused.%s", reason, extra={"fields": {"detail": detail[:200]}})
        raise PasskeyError(code, detail, retry_after=retry_after,
                           office=self._office(code, stored.person_id if stored is not None else None))

    # ---- registration ---------------------------------------------------------------------------

    def begin_registration(
        self,
        *,
        origin: str | None,
        session_cookie: str | None,
        enrolment_code: Any = None,
        address: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Options to create a passkey: for the holder of a live enrolment code (the badge office's
        identity proofing), else for the person of a recent login session. The code wins when both
        are present; it is checked here and used only by a successful :meth:`finish_registration`.

        Each call stores a flow (``_store_flow``), so each is counted first: a code's against its address's
        login allowance, a session's against that and its person's own (LoginGuard.check_registration;
        review 146, finding 2: a session's loop stored a flow a call, unbounded, in a Redis that evicts
        nothing). Past either, 429 ``rate_limited`` with Retry-After, nothing stored, logged only: an
        audit row per refused call would be the loop's write then."""
        self.check_origin(origin)
        now = self._clock.now()
        sid: str | None = None
        digest: str | None = None
        if enrolment_code is not None:
            # Codes have 80 bits, so guessing is hopeless; the per-address attempt limit still applies.
            retry = self._guard.check(None, address) if self._guard is not None else None
            if retry is not None:
                self._refuse_registration("rate_limited", "login guard", now=now, retry_after=retry, audited=False)
            try:
                code = enrolment.check(self._engine, enrolment_code, now=now)
            except enrolment.EnrolmentRefused as exc:
                self._refuse_registration(exc.reason, "options", now=now, person_id=exc.person_id)
            person_id, digest = code.person_id, code.code_hash
        else:
            try:
                session = self._recent_session(session_cookie, now=now)
                retry = (self._guard.check_registration(str(session.person_id), address)
                         if self._guard is not None else None)
                if retry is not None:
                    self._refuse_registration("rate_limited", "login guard", now=now, person_id=session.person_id,
                                              retry_after=retry, audited=False)
                # Asked here too, before the authenticator makes a credential we would not keep; judged
                # again under the person's lock when it is stored (``finish_registration``).
                with self._engine.connect() as conn:
                    _officers_provenance(conn, session.person_id, self.credentials.from_session(conn, session),
                                         now=now)
            except _Stale as exc:
                self._refuse_registration(exc.code, exc.detail, now=now, person_id=exc.person_id)
            person_id, sid = session.person_id, session.sid
        given, family, status = self._person(person_id)
        if status != "active":
            self._refuse_registration("person_suspended", "options", now=now, person_id=person_id)
        challenge = secrets.token_bytes(32)
        flow = self._store_flow(
            Flow(REGISTRATION, challenge, now + timedelta(seconds=self._ttl), person_id, sid, digest)
        )
        # The person's passkeys are excluded (WebAuthn §5.4 excludeCredentials: the same authenticator is
        # not registered twice) for the holder of his login session only: an enrolment code's holder is
        # told none of his credential ids (review 122, finding 2: they were a way to learn them). A
        # duplicate id is refused at verify anyway (passkey_already_registered).
        existing = [] if digest is not None else [
            (c.credential_id, list(c.transports)) for c in self.credentials.for_person(person_id) if c.status == ACTIVE]
        display = f"{given} {family}".strip()
        options = passkeys.registration_options(
            self.rp,
            challenge=challenge,
            user_id=self._user_handle(person_id),
            user_name=display,
            display_name=display,
            exclude=existing,
            timeout_ms=self._ttl * 1000,
        )
        return flow, options

    def finish_registration(
        self, *, origin: str | None, flow: Any, credential: Any, name: Any, session_cookie: str | None
    ) -> RegistrationResult:
        """WebAuthn §7.1, then in one transaction: use the enrolment code (once), store the credential
        with its provenance, audit, and (for an enrolment) open a session.

        The transaction takes the person's row lock first (enrolment.lock_person), as a role grant and a
        suspension do, and reads the clock, the person's status, the code and the session after it
        (review 67): a grant or a suspension committed while the ceremony ran is seen (its ended code,
        ended session or status refuse this), and one that comes later waits and then sees the new
        passkey (suspends it, or ends its session). Read before the lock, a suspension committed in
        between left a new passkey and a live session, and a code a grant had ended still passed. A port
        ban in force is judged under the lock as the login judges it (``person_banned``): the code stays
        unused. So is a privileged role (REGISTRATION_MIN_ACR's note; review 145, finding 1): a person who
        holds one in force gets no passkey that is not a privileged enrolment (an upstream session's, or
        one the badge office's passkey opened), refused ``insufficient_authentication`` and sent to port
        security; a role granted while the ceremony ran is seen here."""
        now = self._clock.now()
        try:
            self.check_origin(origin)
            state = self._claim_flow(flow, REGISTRATION, now)
            label = clean_name(name, default="Passkey")
        except PasskeyError as exc:
            self._refuse_registration(exc.code, exc.detail, now=now)
        assert state.person_id is not None
        person_id = state.person_id
        session: LoginSession | None = None
        if state.sid is not None:
            # Added from an account page: the same live session must still be there.
            session = self._sessions.get(session_cookie, now=now)
            if session is None or session.sid != state.sid:
                self._refuse_registration("login_required", "session gone", now=now, person_id=person_id)
        try:
            passkey = passkeys.verify_registration(self.rp, credential=credential, challenge=state.challenge)
        except passkeys.CeremonyRefused as exc:
            self._refuse_registration("passkey_invalid", exc.detail, now=now, person_id=person_id)
        cookie: str | None = None
        try:
            with self._engine.begin() as conn:
                status = enrolment.lock_person(conn, person_id)
                now = self._clock.now()  # after the wait for the lock
                if status is None:
                    raise PasskeyError("person_unknown", "verify")
                if status != "active":
                    raise PasskeyError("person_suspended", "verify")
                if self._bans is not None and self._bans.banned(conn, person_id, now):  # as the login's
                    raise PasskeyError("person_banned", "port ban in force")
                if session is not None and not session_live(conn, session.sid, now=now):
                    raise PasskeyError("login_required", "session ended")  # a cut-off meanwhile
                if state.code_hash is not None:
                    provenance = enrolment.consume(conn, state.code_hash, person_id=person_id, now=now)
                else:
                    assert session is not None
                    provenance = self.credentials.from_session(conn, session)
                _officers_provenance(conn, person_id, provenance, now=now)
                if self.credentials.exists(conn, passkey.credential_id):
                    raise PasskeyError("passkey_already_registered", "credential id taken")
                self.credentials.add(conn, person_id, passkey, name=label, now=now, provenance=provenance)
                audit.record(
                    "identity.passkey.registered",
                    at=now,
                    actor={"person_id": str(person_id)},
                    subject=_ref(passkey.credential_id),
                    data={
                        "via": "enrolment_code" if state.code_hash else "session",
                        "enrolled_via": provenance.via,
                        "privileged_enrolment": provenance.privileged,
                        "aaguid": passkey.aaguid,
                        "backup_eligible": passkey.backup_eligible,
                    },
                    conn=conn,
                )
                if state.code_hash is not None:
                    cookie, created = self._sessions.create(
                        person_id, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY, now=now, conn=conn,
                        replacing=session_cookie,
                        credential_id=passkey.credential_id,
                    )
                    audit.record(
                        "identity.login.passkey.succeeded",
                        at=now,
                        actor={"person_id": str(person_id)},
                        subject=created.sid,
                        data={"credential_id": _ref(passkey.credential_id), "via": "enrolment"},
                        conn=conn,
                    )
        except enrolment.EnrolmentRefused as exc:
            self._refuse_registration(exc.reason, "verify", now=now, person_id=person_id)
        except _Stale as exc:
            self._refuse_registration(exc.code, exc.detail, now=now, person_id=person_id)
        except PasskeyError as exc:
            self._refuse_registration(exc.code, exc.detail, now=now, person_id=person_id)
        except sa.exc.IntegrityError:  # a concurrent registration of the same credential id
            self._refuse_registration("passkey_already_registered", "race", now=now, person_id=person_id)
        log.info("identity.passkey.registered")
        return RegistrationResult(passkey.credential_id, label, now, cookie)

    def _refuse_registration(
        self,
        code: str,
        detail: str,
        *,
        now: datetime,
        person_id: uuid.UUID | None = None,
        retry_after: int | None = None,
        audited: bool = True,
    ) -> NoReturn:
        """Log and raise a refused registration; audited unless ``audited`` is False (a refusal past a rate
        limit: a row per refused call is what a loop would make us write)."""
        if audited:
            audit.record(
                f"identity.passkey.registration.refused.{code}",
                at=now,
                actor={"person_id": str(person_id)} if person_id else {},
                data={"code": code, "detail": detail[:200]},
                engine=self._engine,
            )
        log.info("identity.passkey.registration.refused.%s", code)
        raise PasskeyError(code, detail, retry_after=retry_after, office=self._office(code, person_id))

    # ---- the person's own passkeys --------------------------------------------------------------

    def list_passkeys(self, *, session_cookie: str | None) -> list[StoredCredential]:
        session = self._session(session_cookie)
        return self.credentials.for_person(session.person_id)

    def rename(self, *, origin: str | None, session_cookie: str | None, credential_id: str, name: Any) -> str:
        """Rename one of the person's passkeys, from a recent strong login (``_manage_session``)."""
        self.check_origin(origin)
        now = self._clock.now()
        session = self._manage_session(session_cookie, "rename", credential_id, now=now)
        label = clean_name(name)
        try:
            with self._engine.begin() as conn:
                self._officers_own(conn, session, now=now)
                if not self.credentials.rename(conn, session.person_id, credential_id, label):
                    raise PasskeyError("not_found", "no such passkey of this person")
                audit.record("identity.passkey.renamed", at=now, actor={"person_id": str(session.person_id)},
                             subject=_ref(credential_id), conn=conn)
        except _Stale as exc:
            self._refuse_manage("rename", credential_id, exc, now=now)
        log.info("identity.passkey.renamed")
        return label

    def remove(self, *, origin: str | None, session_cookie: str | None, credential_id: str) -> Removed:
        """Mark the passkey removed; returns how many active passkeys the person has left, and whether the
        caller's own session ended with it.

        Removing the last one is allowed (a lost phone must be removable at once, and the office that
        issues the person's codes, enrolment.issuing_office, can always hand out a new one); the pages
        warn before, and the answer's ``active_remaining`` of 0 says it. Every other session of the person
        ends, and every grant of the person is revoked (its refresh tokens and access tokens), in the same
        transaction: whoever logged in with the lost passkey is cut off. The remover's own session stays
        unless the removed passkey opened it (``LoginSession.credential_id``): then it ends too, and
        ``Removed.signed_out`` says so (review 122, finding 1: a thief on the owner's session cannot take
        the owner's passkeys away and stay). The person's own apps log in again through a session.

        It needs a recent strong login, as adding a passkey does (``_manage_session``): with a live session
        alone (12 h), a stolen cookie of any age removed every passkey of the owner and signed him out
        while it stayed (review 122, finding 1; Keycloak asks for a fresh login before a credential goes).
        A person who holds a privileged role needs one of his privileged enrolments to have opened it
        (``_officers_own``; review 145, finding 1): else whoever holds the itsme identity an officer is
        linked to takes his passkeys away and locks him out.
        """
        self.check_origin(origin)
        now = self._clock.now()
        session = self._manage_session(session_cookie, "removal", credential_id, now=now)
        own = session.credential_id == credential_id
        try:
            with self._engine.begin() as conn:
                self._officers_own(conn, session, now=now)
                if not self.credentials.remove(conn, session.person_id, credential_id):
                    raise PasskeyError("not_found", "no such passkey of this person")
                remaining = self.credentials.count_active(conn, session.person_id)
                ended, revoked = self._cut_off(conn, session.person_id, keep=None if own else session.sid,
                                               reason="passkey_removed", now=now)
                audit.record("identity.passkey.removed", at=now, actor={"person_id": str(session.person_id)},
                             subject=_ref(credential_id), conn=conn,
                             data={"active_remaining": remaining, "sessions_ended": ended,
                                   "grants_revoked": revoked, "own_session_ended": own})
        except _Stale as exc:
            self._refuse_manage("removal", credential_id, exc, now=now)
        log.info("identity.passkey.removed")
        return Removed(remaining, signed_out=own)

    def sign_out_elsewhere(self, *, origin: str | None, session_cookie: str | None) -> tuple[int, int]:
        """End every other login session of the caller and revoke every grant of his (his apps' refresh
        and access tokens); his own session stays, and his apps log in again through it. What a person
        does who left himself logged in on a lost or borrowed phone, or whose cookie was stolen: Keycloak's
        account console's "sign out all devices". (sessions ended, grants revoked).

        It needs a recent strong login, as removing a passkey does (``_manage_session``): with a live
        session alone, a stolen cookie of any age would sign the owner out everywhere while it stayed. And,
        for a person who holds a privileged role, one his privileged enrolment opened (``_officers_own``)."""
        self.check_origin(origin)
        now = self._clock.now()
        session = self._manage_session(session_cookie, "sign_out_elsewhere", None, now=now)
        try:
            with self._engine.begin() as conn:
                self._officers_own(conn, session, now=now)
                ended, revoked = self._cut_off(conn, session.person_id, keep=session.sid,
                                               reason="signed_out_elsewhere", now=now)
                audit.record("identity.session.signed_out_elsewhere", at=now,
                             actor={"person_id": str(session.person_id)}, subject=str(session.person_id), conn=conn,
                             data={"sessions_ended": ended, "grants_revoked": revoked})
        except _Stale as exc:
            self._refuse_manage("sign_out_elsewhere", None, exc, now=now)
        log.info("identity.session.signed_out_elsewhere")
        return ended, revoked

    # ---- badge office ---------------------------------------------------------------------------

    def issue_enrolment_code(
        self, person_id: uuid.UUID, *, actor: str, refused_roles: frozenset[str],
        ttl: timedelta = enrolment.DEFAULT_TTL,
    ) -> tuple[str, datetime]:
        """A one-time code for the person's first passkey, in one transaction with its audit entry.
        ``actor`` as badge histories store it (identity.audit ``person_actor``): the officer and the
        console client, or an admin client; the trail names both, as every admin action's entry does,
        and the code keeps the client as its issuer (``created_by``, a passkey's provenance) and the
        officer (``issued_by``): it ends with his issuing role, and is capped at its end (review 122,
        finding 3; enrolment.issue_code: PasskeyError("issuer_role_ended") when he holds none now).
        ``refused_roles``: the roles of a person this issuer may not have a code for (identity.api.admin
        ``enrolment_code_refused_roles``), checked under the person's row lock with the insert
        (enrolment.issue_code): PasskeyError("insufficient_role")."""
        now = self._clock.now()
        who = audit.actor_fields(actor)
        try:
            with self._engine.begin() as conn:
                code, expires_at = enrolment.issue_code(
                    self._engine, person_id, created_by=who["client_id"], now=now, ttl=ttl,
                    refused_roles=refused_roles, conn=conn,
                    issued_by=uuid.UUID(who["person_id"]) if "person_id" in who else None,
                )
                audit.record("identity.enrolment_code.issued", at=now, actor=who,
                             subject=str(person_id), data={"expires_at": expires_at.isoformat()}, conn=conn)
        except enrolment.EnrolmentRefused as exc:
            log.info("identity.enrolment_code.refused.%s", exc.reason)
            raise PasskeyError(exc.reason) from exc
        log.info("identity.enrolment_code.issued")
        return code, expires_at

    # ---- helpers --------------------------------------------------------------------------------

    def check_origin(self, origin: str | None) -> None:
        """CSRF (Fetch §3.2 Origin header): the login session is a cookie, so every state-changing
        call must come from a page of ours. Browsers send Origin on every POST/PATCH/DELETE fetch;
        a missing one is refused too."""
        if origin is None or origin not in self.allowed_origins:
            log.info("identity.passkey.refused.origin")
            raise PasskeyError("origin_refused", f"origin {str(origin)[:100]!r} not allowed")

    def _cut_off(self, conn: sa.Connection, person_id: uuid.UUID, *, keep: str | None, reason: str,
                 now: datetime) -> tuple[int, int]:
        """identity.authn.cutoff: (sessions ended, grants revoked)."""
        cut = cut_off(conn, sessions=self._sessions, grants=self._grants, person_id=person_id, keep=keep,
                      reason=reason, now=now)
        return cut.sessions_ended, cut.grants_revoked

    def _office(self, code: str, person_id: uuid.UUID | None) -> str | None:
        """Whom the person a refusal with ``code`` concerns is told to turn to, for OFFICE_CODES (raised
        once he has shown he is that person); else None."""
        if person_id is None or code not in OFFICE_CODES:
            return None
        with self._engine.connect() as conn:
            return enrolment.issuing_office(conn, person_id)

    def _user_handle(self, person_id: uuid.UUID) -> bytes:
        return passkeys.user_handle(person_id, self._handle_key)

    def _person(self, person_id: uuid.UUID) -> tuple[str, str, str]:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(persons.c.given_name, persons.c.family_name, persons.c.status).where(
                    persons.c.id == person_id
                )
            ).first()
        if row is None:
            raise PasskeyError("person_unknown")
        return row.given_name, row.family_name, row.status

    def _session(self, cookie: str | None) -> LoginSession:
        session = self._sessions.get(cookie, now=self._clock.now())
        if session is None:
            raise PasskeyError("login_required", "no live session")
        return session

    def _recent_session(self, cookie: str | None, *, now: datetime) -> LoginSession:
        """The live session behind the cookie if its login is recent (REGISTRATION_MAX_AUTH_AGE) and at
        least as strong as a passkey's (REGISTRATION_MIN_ACR); else _Stale, with the refusal's code."""
        session = self._sessions.get(cookie, now=now)
        if session is None:
            raise _Stale("login_required", "no live session", None)
        if now - session.auth_time > REGISTRATION_MAX_AUTH_AGE:
            raise _Stale("reauthentication_required", "login too old", session.person_id)
        if not assurance.satisfies(session.acr, REGISTRATION_MIN_ACR):
            raise _Stale("insufficient_authentication", f"session acr {session.acr[:100]}", session.person_id)
        return session

    def _manage_session(self, cookie: str | None, use: str, credential_id: str | None, *,
                        now: datetime) -> LoginSession:
        """The session that may rename or remove a passkey, or sign out elsewhere: one a recent strong login
        opened, as for adding one (``_recent_session``; review 122, finding 1). A refusal of a known
        person's session is audited (``identity.passkey.<use>.refused.<code>``: a stolen session trying is
        worth seeing); its subject is the passkey, or the person."""
        try:
            return self._recent_session(cookie, now=now)
        except _Stale as exc:
            self._refuse_manage(use, credential_id, exc, now=now)

    def _refuse_manage(self, use: str, credential_id: str | None, exc: _Stale, *, now: datetime) -> NoReturn:
        """A management call refused (``_manage_session``), audited when the person is known; called once
        the use case's connection is back in the pool (the audit takes one of its own)."""
        if exc.person_id is not None:
            audit.record(f"identity.passkey.{use}.refused.{exc.code}", at=now,
                         actor={"person_id": str(exc.person_id)},
                         subject=_ref(credential_id) if credential_id is not None else str(exc.person_id),
                         data={"code": exc.code, "detail": exc.detail}, engine=self._engine)
        log.info("identity.passkey.%s.refused.%s", use, exc.code)
        raise PasskeyError(exc.code, exc.detail, office=self._office(exc.code, exc.person_id)) from exc

    def _officers_own(self, conn: sa.Connection, session: LoginSession, *, now: datetime) -> None:
        """For a person who holds a privileged role in force: _Stale(insufficient_authentication) unless
        one of his privileged enrolments opened ``session`` (CredentialStore.opened_by_privileged; review
        145, finding 1). In the use case's transaction, after a share lock on the person's row
        (sessions.hold_person), which a role grant's lock (enrolment.lock_person) waits for and is waited
        for by: a grant committed first is seen, one coming later sees what this did."""
        hold_person(conn, session.person_id)
        if enrolment.holds_privileged_role(conn, session.person_id, now=now) and \
                not self.credentials.opened_by_privileged(conn, session):
            raise _Stale("insufficient_authentication", "privileged role: no privileged passkey opened the session",
                          session.person_id)

    def _open_flow(self, flow_id: Any, now: datetime) -> SealedFlow:
        """A login's sealed flow (identity.authn.flows), opened: ours, sealed for a login, not expired;
        else challenge_expired. Nothing is read from or written to the cache here: a replay is found by
        ``_claim_flow_use``, once the assertion's signature holds."""
        if not isinstance(flow_id, str) or not _FLOW_ID.match(flow_id):
            raise PasskeyError("challenge_expired", "malformed flow id")
        try:
            return self._seal.open(flow_id, AUTHENTICATION, now=now.timestamp())
        except FlowRefused as exc:
            raise PasskeyError("challenge_expired", f"flow refused: {exc.reason}") from exc

    def _claim_flow_use(self, flow: SealedFlow, now: datetime) -> str | None:
        """Single use (WebAuthn §13.4.3) of a login's sealed flow: one atomic ``SET NX`` of its ref, kept
        until the flow expires (and ``_CLAIM_MARGIN`` more), through ``Cache.claim``, which refuses a flow
        issued before the cache's dataset began (quaygate/dataset.py: its claim may have been lost with
        the data, and a captured assertion would answer its challenge again). None when this call
        claimed it; else why not, for the audit trail."""
        ttl = flow.expires_at - now.timestamp() + _CLAIM_MARGIN
        got = self._cache.claim(f"webauthn:used:{flow.ref}", ttl, usable_from=flow.issued_at)
        if got:
            return None
        return "flow issued before the cache's epoch" if got.nonce is not None else "flow already used"

    def _store_flow(self, flow: Flow) -> str:
        flow_id = secrets.token_urlsafe(24)
        value = {
            "p": flow.purpose,
            "c": base64.urlsafe_b64encode(flow.challenge).decode(),
            "exp": flow.expires_at.isoformat(),
            "person": str(flow.person_id) if flow.person_id else None,
            "sid": flow.sid,
            "code": flow.code_hash,
        }
        self._cache.put(f"webauthn:flow:{flow_id}", json.dumps(value).encode(), self._ttl)
        return flow_id

    def _claim_flow(self, flow_id: Any, purpose: str, now: datetime) -> Flow:
        """Single use (WebAuthn §13.4.3): the flow is taken with one atomic GETDEL, so of a replay or
        a race only one caller ever reads it, and never one stored before the cache's dataset began
        (quaygate/dataset.py: a Redis started from an older snapshot brings back flows taken since, and
        a captured assertion would answer its challenge again). A replay, a race's loser or an expired
        flow all answer challenge_expired."""
        if not isinstance(flow_id, str) or not _FLOW_ID.match(flow_id):
            raise PasskeyError("challenge_expired", "malformed flow id")
        raw = self._cache.take(f"webauthn:flow:{flow_id}")
        if raw is None:
            raise PasskeyError("challenge_expired", "unknown, expired or already used flow")
        value = json.loads(raw)
        flow = Flow(
            purpose=value["p"],
            challenge=base64.urlsafe_b64decode(value["c"]),
            expires_at=datetime.fromisoformat(value["exp"]),
            person_id=uuid.UUID(value["person"]) if value.get("person") else None,
            sid=value.get("sid"),
            code_hash=value.get("code"),
        )
        if flow.purpose != purpose:
            raise PasskeyError("challenge_expired", "flow of another ceremony")
        if now >= flow.expires_at:
            raise PasskeyError("challenge_expired", "flow expired")
        return flow


def _officers_provenance(conn: sa.Connection, person_id: uuid.UUID, provenance: Provenance, *,
                         now: datetime) -> None:
    """A passkey of ``provenance`` for the person: _Stale(insufficient_authentication) when it is not a
    privileged enrolment and he holds a privileged role in force (REGISTRATION_MIN_ACR's note; review
    145, finding 1), as a role grant suspends such a passkey (credentials.suspend_unprivileged)."""
    if not provenance.privileged and enrolment.holds_privileged_role(conn, person_id, now=now):
        raise _Stale("insufficient_authentication", f"privileged role: provenance {provenance.via[:60]} not privileged",
                     person_id)


def passkeys_for(app: Any) -> PasskeyService:
    """The app's PasskeyService, built once from ``app.state.container``."""
    def build() -> PasskeyService:
        c = app.state.container
        return PasskeyService(settings=c.settings, engine=c.engine, cache=c.cache, clock=c.clock,
                              sessions=sessions_for(app), grants=grants_for(app), guard=login_guard_for(app))

    return built_once(app, "identity_passkeys", build)

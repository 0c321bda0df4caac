"""Face enrolment and 1:1 verification (issue 6): the use cases.

- ``enrol``: the badge office takes an ID photo or a live capture; the capture must show exactly one
  face, large and sharp enough (``identity.domain.face``); its 128-number template is sealed
  (``identity.face.sealing``) and stored, replacing an older one. The image is never stored, logged
  or written to disk: it is analysed in memory in a worker process and dropped.
- ``verify_face`` / ``verify_face_blocking``: 1:1 match of a capture against the person's template,
  with a tolerance (the terminal's, or the default). Never raises for a bad capture: the outcome is a
  ``FaceMatch`` (distance, matched, reason) the gate turns into its decision. The distance, the
  tolerance, the decision and the liveness answer go on the audit trail; the image does not.
  A capture that matched is claimed by its keyed digest (``CaptureStore``, in PostgreSQL, for
  ``replay_window``): the same bytes matched again for another use are ``face_replayed``, since a live
  camera never gives the same bytes twice. The digest is HMAC-SHA256 under a key derived from the data
  key (``DataCipher.derive``), so neither the table nor a copy of it tells which photo it was, and it
  names the person, so one photo's digests for two persons are unrelated. The claim is one statement
  (about a millisecond next to the ~0.1 s match) and only a match makes one.
  Whoever is not the person himself (the gate) gets the same answer for a bad capture whether or not a
  face is enrolled: the capture is analysed and judged first (``rules.first_refusal``), so neither the
  answer nor its time says whether there was a template to compare it with.
- Which enrolment is current is the audit trail's to say (``identity.domain.face_enrolment``, review
  92): every enrolment and withdrawal writes, in the transaction of the row, an entry naming the
  template with the person's enrolment generation and a tag under a key derived from the data key.
  A stored template that the latest tagged entry does not name (an older row restored by an insider,
  a row written beside the app, a row present after a withdrawal) does not open: ``face_unavailable``
  (at the gate a review, never an allow), logged at error level as ``identity.face.template.not_current``
  and audited. The read is one index probe beside the template's, off the event loop with it.
- ``step_up``: a logged-in person (passkey or national ID) matches his face and his login session is
  replaced by one with ``acr`` ``urn:quaygate:acr:face`` and ``face`` in ``amr`` (the session store's
  "a stronger login replaces the session"). Failed matches count towards the login guard's lockout
  (``identity.ratelimit.LoginGuard``, subject ``face:<person_id>``), so a stolen session cannot try
  photo after photo.

The CPU-heavy part runs in the process pool (``identity.face.pool``); the database parts are short
and synchronous, run in a thread from the async methods, never on the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import sqlalchemy as sa

from quaygate.crypto import DataCipher

from .. import audit
from ..domain import face as rules
from ..domain import face_enrolment as enrolments
from ..domain.face import FaceCode, FaceMatch
from ..ratelimit import LoginGuard
from ..sessions import LoginSession, SessionStore
from .engine import Analysis
from .liveness import Liveness, LivenessDetector, NotChecked
from .pool import FacePool, FaceUnavailable
from .sealing import TAG_PURPOSE, TemplateUnreadable, enrolment_tag, open_template, seal_template, tag_verifies
from .store import CaptureStore, TemplateRow, TemplateStore

log = logging.getLogger(__name__)

# How long a matched capture's digest refuses the same bytes again. A copied capture is useful to
# whoever holds it for as long as the enrolled face looks like it (years), so the window is long; the
# bound is storage (about 0.2 kB a capture, docs/face.md) and the data key's life (a new key starts
# the digests afresh).
DEFAULT_REPLAY_WINDOW = timedelta(days=365)
_DIGEST_PURPOSE = b"face-capture-digest:v1"


class FaceError(Exception):
    """A refused face call. ``code`` is public (the problem's ``code``)."""

    def __init__(self, code: str, message: str = "", *, retry_after: int | None = None) -> None:
        super().__init__(code)
        self.code = str(code)
        self.message = message or MESSAGES.get(self.code, self.code)
        self.retry_after = retry_after


# Clear messages for the badge office and the driver (safe to show: no biometric detail).
MESSAGES = {
    FaceCode.IMAGE_UNREADABLE: "The image could not be read: send a JPEG or PNG photo.",
    FaceCode.IMAGE_TOO_LARGE: "The image is too large.",
    FaceCode.NO_FACE: "No face was found in the image.",
    FaceCode.MULTIPLE_FACES: "More than one face is in the image: exactly one person must be in the picture.",
    FaceCode.TOO_SMALL: "The face is too small: come closer to the camera or crop the photo to the face.",
    FaceCode.BLURRED: "The face is too blurred: hold still and make sure the face is in focus.",
    FaceCode.NOT_ENROLLED: "No face is enrolled for this person.",
    FaceCode.MISMATCH: "The face does not match.",
    FaceCode.NOT_LIVE: "The capture was not accepted as a live face.",
    FaceCode.TOLERANCE_INVALID: (f"The face tolerance must be between {rules.MIN_TOLERANCE} and "
                                 f"{rules.MAX_TOLERANCE}."),
    FaceCode.SOURCE_INVALID: f"source is one of {', '.join(rules.SOURCES)}.",
    FaceCode.BUSY: "Face matching is busy: try again in a moment.",
    FaceCode.REPLAYED: "This capture was already used: take a new photo with the camera.",
    FaceCode.UNAVAILABLE: "Face matching is unavailable.",
    "not_found": "No such person.",
    "person_not_active": "The person is suspended.",
    "concurrent_change": "Another enrolment of this person happened at the same time: try again.",
    "login_required": "Please log in first.",
    "step_up_not_allowed": "A face match raises only a passkey or national-ID login.",
    "rate_limited": "Too many failed face matches. Please wait and try again.",
}


@dataclass(frozen=True, slots=True)
class Enrolment:
    person_id: uuid.UUID
    template_id: uuid.UUID
    source: str
    face_px: int
    sharpness: float
    enrolled_at: datetime
    replaced: bool


@dataclass(frozen=True, slots=True)
class EnrolledFace:
    """The stored enrolment as the badge office sees it: the row, and whether the trail names it as the
    current one (False: restored, written beside the app or left after a withdrawal; it does not open)."""

    row: TemplateRow
    current: bool


@dataclass(frozen=True, slots=True)
class StepUp:
    cookie: str  # the new session's cookie value, shown once
    session: LoginSession
    match: FaceMatch


class FaceService:
    def __init__(self, *, engine: sa.Engine, cipher: DataCipher, pool: FacePool, tolerance: float,
                 max_image_bytes: int, liveness: LivenessDetector | None = None,
                 sessions: SessionStore | None = None, guard: LoginGuard | None = None,
                 replay_window: timedelta = DEFAULT_REPLAY_WINDOW) -> None:
        if replay_window <= timedelta(0):
            raise ValueError("the face replay window must be positive")
        self._engine = engine
        self._cipher = cipher
        self._digest_key = cipher.derive(_DIGEST_PURPOSE)
        self._tag_key = cipher.derive(TAG_PURPOSE)
        self.replay_window = replay_window
        self._pool = pool
        self.default_tolerance = rules.tolerance_or_default(tolerance)
        self.max_image_bytes = max_image_bytes
        self._liveness = liveness or NotChecked()
        self._sessions = sessions
        self._guard = guard

    # ---- enrolment ------------------------------------------------------------------------------

    async def enrol(self, person_id: uuid.UUID, image: bytes, *, source: str, actor: str,
                    now: datetime) -> Enrolment:
        """Enrol (or re-enrol) a person's face from one capture; FaceError when it is refused."""
        if source not in rules.SOURCES:
            raise FaceError(FaceCode.SOURCE_INVALID)
        self._check_size(image)
        await anyio.to_thread.run_sync(self._check_person, person_id)
        analysis = await self._analyse(image)
        del image  # the capture's last reference here: nothing below sees it
        return await anyio.to_thread.run_sync(self._store_enrolment, person_id, analysis, source, actor, now)

    def withdraw(self, person_id: uuid.UUID, *, actor: str, now: datetime) -> None:
        """Erase a person's template (leaving the port, or at his request); FaceError when none. The
        tagged entry of the next generation names no template: a row written back afterwards is not
        current."""
        with self._engine.begin() as conn:
            store = TemplateStore(conn)
            store.lock_person(person_id)
            row = store.get(person_id)
            if row is None or not store.delete(person_id):
                raise FaceError(FaceCode.NOT_ENROLLED)
            generation = self._current(store, person_id).next_generation
            audit.record(enrolments.WITHDRAWN, at=now, actor=audit.actor_fields(actor),
                         subject=str(person_id), conn=conn,
                         data={"template_id": str(row.template_id), "generation": generation,
                               "tag": enrolment_tag(self._tag_key, enrolments.WITHDRAWN, person_id, generation, None)})

    def enrolled(self, person_id: uuid.UUID) -> EnrolledFace | None:
        """The stored enrolment (the console's view), and whether it is the current one."""
        with self._engine.connect() as conn:
            store = TemplateStore(conn)
            row = store.get(person_id)
            if row is None:
                return None
            current = self._current(store, person_id)
        return EnrolledFace(row, enrolments.not_current_reason(current, str(row.template_id)) is None)

    def _check_size(self, image: bytes) -> None:
        if not image:
            raise FaceError(FaceCode.IMAGE_UNREADABLE)
        if len(image) > self.max_image_bytes:
            raise FaceError(FaceCode.IMAGE_TOO_LARGE)

    def _check_person(self, person_id: uuid.UUID) -> None:
        with self._engine.connect() as conn:
            status = TemplateStore(conn).person_status(person_id)
        if status is None:
            raise FaceError("not_found")
        if status != "active":
            raise FaceError("person_not_active")

    def _store_enrolment(self, person_id: uuid.UUID, analysis: Analysis, source: str, actor: str,
                         now: datetime) -> Enrolment:
        who = audit.actor_fields(actor)
        if analysis.code is not None or analysis.encoding is None:
            code = analysis.code or FaceCode.NO_FACE
            log.info("identity.face.enrol.refused.%s", code)
            audit.record("identity.face.enrol.refused", at=now, actor=who, subject=str(person_id),
                         data=_quality(analysis, code=code, source=source), engine=self._engine)
            raise FaceError(code)
        template_id = uuid.uuid4()
        row = TemplateRow(person_id=person_id, template_id=template_id,
                          sealed=seal_template(self._cipher, person_id, template_id, analysis.encoding),
                          key_id=self._cipher.key_id, source=source, face_px=analysis.face_px or 0,
                          sharpness=analysis.sharpness or 0.0, enrolled_by=actor[:100], enrolled_at=now)
        try:
            with self._engine.begin() as conn:
                store = TemplateStore(conn)
                store.lock_person(person_id)  # one enrolment or withdrawal of the person at a time
                generation = self._current(store, person_id).next_generation
                replaced = store.put(row)
                audit.record(enrolments.ENROLLED, at=now, actor=who, subject=str(person_id), conn=conn,
                             data={**_quality(analysis, source=source), "template_id": str(template_id),
                                   "replaced": replaced, "generation": generation,
                                   "tag": enrolment_tag(self._tag_key, enrolments.ENROLLED, person_id, generation,
                                                        template_id)})
        except sa.exc.IntegrityError as exc:
            raise FaceError("concurrent_change") from exc
        log.info("identity.face.enrolled")
        return Enrolment(person_id, template_id, source, row.face_px, row.sharpness, now, replaced)

    # ---- 1:1 verification -----------------------------------------------------------------------

    async def verify_face(self, person_id: uuid.UUID, image_bytes: bytes, tolerance: float | None = None, *,
                          purpose: str = "gate", actor: dict[str, Any] | None = None,
                          context: dict[str, Any] | None = None, now: datetime | None = None,
                          used_for: str | None = None, own_face: bool = False, claim: bool = True) -> FaceMatch:
        """Match a capture against the person's enrolled face. Never raises for a bad capture or a
        missing template (the reason says it); FaceError only for a tolerance out of range.

        ``used_for``: what this match is for (``gate:<terminal>:<request_id>``, ``step_up:<sid>``); the
        same capture matched again for the same use is not a replay (a retry), for another one it is
        ``face_replayed``. None: a use of its own, so any earlier match of these bytes is a replay.
        ``own_face``: the caller is the person himself, and is told first that no face is enrolled;
        anyone else gets the capture judged first (``rules.first_refusal``). ``claim`` False: a dry run
        (the gate's ``check`` mode, which opens nothing): a replay is still found, but the capture is not
        claimed, so the ``commit`` that follows a check with the same capture is no replay of it."""
        tol = self._tolerance(tolerance)
        enrolled, digest = await anyio.to_thread.run_sync(self._prepare, person_id, image_bytes)
        early = self._early_refusal(enrolled, image_bytes, tol, own_face)
        liveness = Liveness.NOT_CHECKED
        analysis = Analysis(code=early.reason) if early is not None else None
        if analysis is None:
            try:
                analysis = await self._analyse(image_bytes)
                liveness = await anyio.to_thread.run_sync(self._liveness.check, image_bytes)
            except FaceError as exc:
                analysis = Analysis(code=exc.code)
        del image_bytes
        done = analysis
        call = _Call(purpose, actor, context, now or _now(), used_for or f"{purpose}:{uuid.uuid4()}", own_face,
                     claim)
        return await anyio.to_thread.run_sync(
            lambda: self._conclude(person_id, enrolled, done, liveness, tol, digest, call))

    def verify_face_blocking(self, person_id: uuid.UUID, image_bytes: bytes, tolerance: float | None = None, *,
                             purpose: str = "gate", actor: dict[str, Any] | None = None,
                             context: dict[str, Any] | None = None, now: datetime | None = None,
                             used_for: str | None = None, own_face: bool = False, claim: bool = True) -> FaceMatch:
        """``verify_face`` for plain ``def`` routes (FastAPI runs them in its thread pool)."""
        tol = self._tolerance(tolerance)
        enrolled, digest = self._prepare(person_id, image_bytes)
        early = self._early_refusal(enrolled, image_bytes, tol, own_face)
        liveness = Liveness.NOT_CHECKED
        analysis = Analysis(code=early.reason) if early is not None else None
        if analysis is None:
            try:
                analysis = self._analyse_blocking(image_bytes)
                liveness = self._liveness.check(image_bytes)
            except FaceError as exc:
                analysis = Analysis(code=exc.code)
        del image_bytes
        call = _Call(purpose, actor, context, now or _now(), used_for or f"{purpose}:{uuid.uuid4()}", own_face,
                     claim)
        return self._conclude(person_id, enrolled, analysis, liveness, tol, digest, call)

    def _tolerance(self, tolerance: float | None) -> float:
        try:
            return rules.tolerance_or_default(tolerance, self.default_tolerance)
        except ValueError as exc:
            raise FaceError(FaceCode.TOLERANCE_INVALID) from exc

    def _prepare(self, person_id: uuid.UUID, image: bytes) -> tuple[tuple[float, ...] | FaceCode, bytes]:
        """The person's template (or why there is none) and the capture's keyed digest (HMAC over up to
        a few MB: off the event loop, with the database read)."""
        return self._template(person_id), self._digest(person_id, image)

    def _digest(self, person_id: uuid.UUID, image: bytes) -> bytes:
        """HMAC-SHA256 of the capture's bytes for this person, under a key derived from the data key:
        never the image, nor a plain hash anyone could compute from a copy of it."""
        mac = hmac.new(self._digest_key, b"face-capture:v1:" + person_id.bytes, hashlib.sha256)
        mac.update(image)
        return mac.digest()

    def _template(self, person_id: uuid.UUID) -> tuple[float, ...] | FaceCode:
        """The person's template, once the trail names it as his current enrolment."""
        with self._engine.connect() as conn:
            store = TemplateStore(conn)
            row = store.get(person_id)
            if row is None:
                return FaceCode.NOT_ENROLLED
            current = self._current(store, person_id)
        reason = enrolments.not_current_reason(current, str(row.template_id))
        if reason is not None:
            self._not_current(person_id, row, current, reason)
            return FaceCode.UNAVAILABLE
        if current.legacy:
            self._upgrade(person_id, row.template_id)
        try:
            return open_template(self._cipher, person_id, row.template_id, row.sealed)
        except TemplateUnreadable:
            # Tampered, moved to another person's row, or sealed under another data key.
            log.error("identity.face.template.unreadable")
            return FaceCode.UNAVAILABLE

    def _current(self, store: TemplateStore, person_id: uuid.UUID) -> enrolments.Current:
        """What the person's enrolment entries say is current, each entry's tag checked here."""
        found = []
        for entry in store.enrolment_entries(person_id):
            data = entry.data if isinstance(entry.data, dict) else {}
            tag, generation = data.get("tag"), data.get("generation")
            named = None if entry.kind == enrolments.WITHDRAWN else data.get("template_id")
            tag_ok = None if tag is None and generation is None else tag_verifies(
                self._tag_key, tag, entry.kind, person_id, generation, named)
            found.append(enrolments.EnrolmentEntry(
                entry.id, entry.kind, named if isinstance(named, str) else None,
                generation if isinstance(generation, int) and not isinstance(generation, bool) else None, tag_ok))
        current = enrolments.current_enrolment(found)
        if current.forged:
            log.error("identity.face.enrolment.forged_entry", extra={"fields": {"forged": current.forged}})
        return current

    def _not_current(self, person_id: uuid.UUID, row: TemplateRow, current: enrolments.Current,
                     reason: str) -> None:
        """A stored template the trail does not name: written there behind the service's back. A tamper
        signal, at error level and on the trail; the match answers ``face_unavailable``."""
        log.error("identity.face.template.not_current", extra={"fields": {"reason": reason}})
        audit.record("identity.face.template.not_current", at=_now(), actor={"system": "face"},
                     subject=str(person_id), engine=self._engine,
                     data={"reason": reason, "template_id": str(row.template_id),
                           "current_template_id": current.template_id, "generation": current.generation,
                           "forged_entries": current.forged, "enrolled_at": row.enrolled_at.isoformat()})

    def _upgrade(self, person_id: uuid.UUID, template_id: uuid.UUID) -> None:
        """A template enrolled before the entries were tagged, which its untagged entry names: tag it
        now (generation 1), once, under the person's lock and with the row and the trail read again,
        so that from now on only tagged entries count (identity.domain.face_enrolment)."""
        with self._engine.begin() as conn:
            store = TemplateStore(conn)
            store.lock_person(person_id)
            row, current = store.get(person_id), self._current(store, person_id)
            if row is None or row.template_id != template_id or not current.legacy \
                    or current.template_id != str(template_id):
                return  # changed meanwhile: the next read decides afresh
            generation = current.next_generation
            audit.record(enrolments.UPGRADED, at=_now(), actor={"system": "face"}, subject=str(person_id),
                         conn=conn, data={"template_id": str(template_id), "generation": generation,
                                          "tag": enrolment_tag(self._tag_key, enrolments.UPGRADED, person_id,
                                                               generation, template_id)})
        log.info("identity.face.enrolment.upgraded")

    def _early_refusal(self, enrolled: tuple[float, ...] | FaceCode, image: bytes, tol: float,
                       own_face: bool) -> FaceMatch | None:
        """Refusals that need no analysis: the capture's size; and, for the person himself only, a
        missing template (no CPU spent on it). For anyone else the capture is analysed all the same,
        so that its answer, and the time it takes, do not say whether a face is enrolled."""
        if own_face and isinstance(enrolled, FaceCode):
            return rules.refused(enrolled, tol)
        try:
            self._check_size(image)
        except FaceError as exc:
            return rules.refused(FaceCode(exc.code), tol)
        return None

    def _conclude(self, person_id: uuid.UUID, enrolled: tuple[float, ...] | FaceCode, analysis: Analysis,
                  liveness: Liveness, tol: float, digest: bytes, call: _Call) -> FaceMatch:
        capture = None
        if analysis.code is not None or analysis.encoding is None:
            capture = FaceCode(analysis.code or FaceCode.NO_FACE)
        refusal = rules.first_refusal(enrolled if isinstance(enrolled, FaceCode) else None, capture,
                                      own_face=call.own_face)
        replay: dict[str, Any] = {}
        if refusal is not None:
            match = rules.refused(refusal, tol)
        elif liveness is Liveness.SPOOF:
            match = rules.refused(FaceCode.NOT_LIVE, tol)
        else:
            assert analysis.encoding is not None and not isinstance(enrolled, FaceCode)
            match = rules.decide(analysis.encoding, enrolled, tol)
            if match.matched:
                replay = self._claim(person_id, digest, call)
                if replay:  # the trail keeps the distance measured: the copy is of this person's face
                    replay["distance"] = match.distance
                    match = rules.refused(FaceCode.REPLAYED, tol)
        outcome = "matched" if match.matched else ("mismatched" if match.distance is not None else "refused")
        log.info("identity.face.verify.%s", outcome)
        audit.record(f"identity.face.verify.{outcome}", at=call.now, actor=call.actor or {"system": call.purpose},
                     subject=str(person_id), engine=self._engine,
                     data={"purpose": call.purpose, "distance": match.distance, "tolerance": tol,
                           "matched": match.matched, "reason": match.reason, "liveness": liveness.value,
                           "enrolled": enrolled is not FaceCode.NOT_ENROLLED, "face_px": analysis.face_px,
                           "sharpness": analysis.sharpness, **replay,
                           **(call.context or {})})
        return match

    def _claim(self, person_id: uuid.UUID, digest: bytes, call: _Call) -> dict[str, Any]:
        """Claim a matched capture for ``call``'s use; {} when it is fresh (or the same use again), else
        what the audit entry says of the replay: where and when these bytes were matched first."""
        since, use = call.now - self.replay_window, call.used_for[:200]
        with self._engine.begin() as conn:
            store = CaptureStore(conn)
            if not call.claim:  # a dry run: found, never claimed
                first = store.seen(person_id, digest)
                if first is None or first.seen_at < since or first.used_for == use:
                    return {}
            elif store.claim(person_id, digest, used_for=use, now=call.now, since=since):
                return {}
            else:
                first = store.seen(person_id, digest)
        log.warning("identity.face.verify.replayed")
        return {"replay_of": first.used_for if first else None,
                "replay_first_seen_at": first.seen_at.isoformat() if first else None}

    # ---- step-up --------------------------------------------------------------------------------

    async def step_up(self, *, session: LoginSession | None, image: bytes, address: str | None,
                      now: datetime) -> StepUp:
        """Raise ``session``, the live login session the caller was admitted with (looked up once, by
        its cookie, before the capture was read: identity.api.face), to acr face after a face match.
        It is not looked up again: one that lapsed since is refused here, and one ended since (a logout,
        another step-up) is refused when it is replaced, in the transaction that ends it
        (``_replace_session``), before any new session exists."""
        if self._sessions is None or self._guard is None:
            raise FaceError(FaceCode.UNAVAILABLE)
        if session is None or session.expires_at <= now:
            raise FaceError("login_required")
        try:
            acr, amr = rules.stepped_up(session.acr, session.amr)
        except ValueError as exc:
            raise FaceError("step_up_not_allowed") from exc
        await anyio.to_thread.run_sync(self._check_person, session.person_id)
        subject = f"face:{session.person_id}"
        guard = self._guard  # the cache (Redis) is blocking I/O: in a thread, like the database
        seen = await anyio.to_thread.run_sync(guard.check_attempt, subject, address)
        if seen.retry is not None:
            raise FaceError("rate_limited", retry_after=seen.retry)
        actor = {"person_id": str(session.person_id)}
        match = await self.verify_face(session.person_id, image, purpose="step_up", actor=actor, now=now,
                                       used_for=f"step_up:{session.sid}", own_face=True)
        del image
        if not match.matched:
            # A guess, a spoof, a copy of an earlier capture count towards the lockout; a blurred shot not.
            if match.reason in (FaceCode.MISMATCH, FaceCode.NOT_LIVE, FaceCode.REPLAYED):
                await anyio.to_thread.run_sync(guard.failed, subject, address)
            raise FaceError(match.reason or FaceCode.MISMATCH)
        if not seen.clean:  # nothing on record: nothing to forget, no thread hop
            await anyio.to_thread.run_sync(guard.succeeded, subject, address, seen)
        cookie, stepped = await anyio.to_thread.run_sync(self._replace_session, session, acr, amr, match, now)
        return StepUp(cookie, stepped, match)

    def _replace_session(self, old: LoginSession, acr: str, amr: tuple[str, ...], match: FaceMatch,
                         now: datetime) -> tuple[str, LoginSession]:
        assert self._sessions is not None
        with self._engine.begin() as conn:
            if not self._sessions.end(old.sid, now=now, conn=conn):
                # Ended since the caller was admitted: a logout, or two step-ups of one session at once
                # (the first replaced it). This one is refused, and the transaction rolls back.
                raise FaceError("login_required")
            cookie, session = self._sessions.create(old.person_id, acr=acr, amr=amr, now=now, conn=conn, of=old)
            audit.record("identity.login.face.stepped_up", at=now, actor={"person_id": str(old.person_id)},
                         subject=str(old.person_id), conn=conn,
                         data={"from_acr": old.acr, "acr": acr, "amr": list(amr), "distance": match.distance,
                               "tolerance": match.tolerance, "sid": session.sid, "previous_sid": old.sid})
        log.info("identity.login.face.stepped_up")
        return cookie, session

    # ---- the pool -------------------------------------------------------------------------------

    async def _analyse(self, image: bytes) -> Analysis:
        try:
            return await self._pool.analyse(image)
        except FaceUnavailable as exc:
            raise FaceError(exc.code) from exc

    def _analyse_blocking(self, image: bytes) -> Analysis:
        try:
            return self._pool.analyse_blocking(image)
        except FaceUnavailable as exc:
            raise FaceError(exc.code) from exc


@dataclass(frozen=True, slots=True)
class _Call:
    """Who asks for a verification, and for what (the audit entry's fields and the capture's use)."""

    purpose: str
    actor: dict[str, Any] | None
    context: dict[str, Any] | None
    now: datetime
    used_for: str
    own_face: bool
    claim: bool = True  # False: a dry run (the gate's check mode) finds a replay but claims nothing


def _quality(analysis: Analysis, **extra: Any) -> dict[str, Any]:
    return {"faces": analysis.faces, "face_px": analysis.face_px, "sharpness": analysis.sharpness, **extra}


def _now() -> datetime:
    return datetime.now(UTC)

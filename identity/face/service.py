"""Face enrolment and 1:1 verification (issue 6): the use cases.

- ``enrol``: the badge office takes an ID photo or a live capture; the capture must show exactly one
  face, large and sharp enough (``identity.domain.face``); its 128-number template is sealed
  (``identity.face.sealing``) and stored, replacing an older one. The image is never stored, logged
  or written to disk: it is analysed in memory in a worker process and dropped.
  A replacement is compared with the face it replaces, under the person's lock (review 131, finding 3:
  an officer could enrol an accomplice's face on a driver's record, and the trail said only "replaced").
  The distance goes on the enrolled entry. Above the default tolerance (another person's face), or
  when the old template does not open or is not the current one (nothing to compare it with), the
  replacement is refused, 409 ``face_differs`` (audited with the distance), unless the officer says why
  (``replace_reason``, as ``quaygate person set-national-id --replace REASON``, review 123); with the
  reason it is made, the reason and the distance are on the entry, and the log warns port security
  (``identity.face.enrolment.replaced_other_face``). A face withdrawn by the badge office counts as
  one that cannot be compared (review 148, finding 2: withdraw, then enrol, went round the check): the
  next enrolment needs the reason too, and is warned of (``_after_withdrawal``); one withdrawn by the
  retention sweep does not.
  A replacement is also compared with the anchor (review 154, finding 1): the face of the last enrolment
  judged on its own, the first one or the last one made as another face (with a reason, warned of; after
  a withdrawal, that one). Compared only with the face before it, a chain of replacements each within the
  tolerance of the one before (Obama, a 50 % blend with Biden, an 80 % one, Biden) went from one person
  to another with no reason and no warning, and back again to cover the tracks. A new face further than
  the tolerance from the anchor differs, however close it is to the face enrolled now. A retake that
  does not differ keeps the anchor: it is sealed in the template's row (``TemplateRow.anchor_sealed``,
  under its own ids, the same cipher) and erased with it; a replacement that differs is its own anchor.
- ``verify_face`` / ``verify_face_blocking``: 1:1 match of a capture against the person's template,
  with a tolerance (the terminal's, or the default). Never raises for a bad capture: the outcome is a
  ``FaceMatch`` (distance, matched, reason) the gate turns into its decision. The distance, the
  tolerance, the decision and the liveness answer go on the audit trail; the image does not.
  A capture that matched is claimed by its keyed digest (``CaptureStore``, in PostgreSQL, for
  ``replay_window``): the same bytes matched again for another use are ``face_replayed``, since a live
  camera never gives the same bytes twice. The digest is HMAC-SHA256 under a key derived from the data
  key (``DataCipher.derive``), so neither the table nor a copy of it tells which photo it was, and it
  names the person, so one photo's digests for two persons are unrelated. The claim is one statement
  (about a millisecond next to the ~0.1 s match) and only a match makes one, or an enrolment.
  The enrolment's photo is no capture either (review 165, finding 4: a company may hold the ID photo's
  scan, the badge office its own capture; the exact file matched at the gate at distance 0.0): the
  enrolment claims its digest in the same place, for ``enrol:<template_id>``, in the transaction that
  stores the template, so those bytes later are ``face_replayed``, after a replacement and a withdrawal
  too (``CaptureStore.strip`` keeps the digests). When the face was enrolled from an ID photo, a capture
  closer to it than ``rules.COPY_DISTANCE`` (0.1) is a copy of that photo, a re-encoded one too:
  ``face_replayed``, with no claim (``rules.decide``, given the template's source). Not after a live
  capture: another frame of the person from a similar camera may be as close, and at a step-up the refusal
  would count as a guess towards his lockout.
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
  photo after photo. Unusable captures (``QUALITY_CODES``: no face, blurred, unreadable ...) lock
  nobody out, but each costs a worker's time, so they have an allowance of their own per person
  (``bad_captures`` per ``bad_capture_window``, a ``RateLimiter`` sliding count): past it, 429
  ``rate_limited`` until one more would be within it (review 131, finding 2). Matches count too:
  ``step_ups`` per ``step_up_window`` per person (a stepped-up session may step up again), past it
  ``rate_limited`` (review 154, finding 2).
- Cost: every capture's header is judged before it is queued for a worker (``identity.face.header``:
  pixels per format, shape, a JPEG's frame and scans, a bounded walk of its markers or chunks), in a
  thread, never on the event loop, so a small file claiming a huge picture or a photo padded with
  thousands of markers never reaches one (review 165, finding 3); and every capture is queued under
  the pool's shares it takes (``_owner``): a gate's under its terminal's name, which has at most
  ``FacePool.per_owner`` of the pool's jobs at once; a step-up under the step-ups' and its person's, an
  enrolment under the enrolments', both under the share of all that is not a gate's, so neither can
  take the gate's half of the pool (review 154, finding 2).

The CPU-heavy part runs in the process pool (``identity.face.pool``); the database parts are short
and synchronous, run in a thread from the async methods, never on the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import anyio
import sqlalchemy as sa

from quaygate.crypto import DataCipher

from .. import audit
from ..domain import face as rules
from ..domain import face_enrolment as enrolments
from ..domain.face import FaceCode, FaceMatch
from ..ratelimit import LoginGuard, RateLimiter
from ..sessions import LoginSession, SessionStore
from . import header
from .engine import Analysis
from .liveness import Liveness, LivenessDetector, NotChecked
from .pool import ENROLMENTS, OFF_GATE, STEP_UP_OF, STEP_UPS, FacePool, FaceUnavailable
from .sealing import (
    TAG_PURPOSE,
    TemplateUnreadable,
    enrolment_tag,
    open_template,
    retag_mark,
    retag_mark_verifies,
    seal_template,
    tag_verifies,
)
from .store import ENROL_USE, CaptureStore, TemplateRow, TemplateStore

log = logging.getLogger(__name__)

# How long a matched capture's digest refuses the same bytes again. A copied capture is useful to
# whoever holds it for as long as the enrolled face looks like it (years), so the window is long; the
# bound is storage (about 0.2 kB a capture, docs/face.md). A new data key makes new digests: the old key's
# digest key is kept for the window (``previous_digest_keys``).
DEFAULT_REPLAY_WINDOW = timedelta(days=365)
# HKDF info of the key of the capture digests (``DataCipher.derive``). A dropped data key's digest key (what
# `quaygate keys face-digest-keys` prints) opens and tags nothing: it only recognises a capture.
DIGEST_PURPOSE = b"face-capture-digest:v1"
# The actor of the retention sweep's withdrawals (identity.face.retention): an enrolment after one needs no
# reason (``_after_withdrawal``). No API caller's actor has this shape (``audit.actor_fields``).
RETENTION_ACTOR = {"system": "face-retention"}


class FaceError(Exception):
    """A refused face call. ``code`` is public (the problem's ``code``)."""

    def __init__(self, code: str, message: str = "", *, retry_after: int | None = None) -> None:
        super().__init__(code)
        self.code = str(code)
        self.message = message or MESSAGES.get(self.code, self.code)
        self.retry_after = retry_after


# Clear messages for the badge office and the driver (safe to show: no biometric detail).
MESSAGES = {
    FaceCode.IMAGE_UNREADABLE: ("The image could not be read: send a JPEG or PNG photo, at most four times as "
                                "long as it is wide."),
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
    "face_differs": ("The new photo is not of the face enrolled now. To replace it with this face, say why in "
                     "replace_reason: the replacement is audited and reported to port security."),
    "replace_reason_invalid": "replace_reason is 1 to 500 characters.",
}
# face_differs when the new face is close to the one enrolled now but not to the anchor (``_replacing``).
ANCHOR_MESSAGE = ("The new photo is not of the face this person was enrolled with before the replacements since "
                  "(each close to the one before). To enrol this face, say why in replace_reason: the replacement "
                  "is audited and reported to port security.")
# face_differs when the person's face was withdrawn by the badge office (``_after_withdrawal``).
WITHDRAWN_MESSAGE = ("This person's face was withdrawn, so the new photo cannot be compared with it. To enrol this "
                     "face, say why in replace_reason: the enrolment is audited and reported to port security.")
MAX_REPLACE_REASON = 500
BAD_CAPTURES_MESSAGE = "Too many unusable captures. Please wait and try again."
STEP_UPS_MESSAGE = "Too many face step-ups. Please wait and try again."


@dataclass(frozen=True, slots=True)
class Enrolment:
    person_id: uuid.UUID
    template_id: uuid.UUID
    source: str
    face_px: int
    sharpness: float
    enrolled_at: datetime
    replaced: bool
    distance: float | None = None  # to the template replaced; None when none was, or it did not open


@dataclass(frozen=True, slots=True)
class EnrolledFace:
    """The stored enrolment as the badge office sees it: the row, and whether the trail names it as the
    current one (False: restored, written beside the app or left after a withdrawal; it does not open)."""

    row: TemplateRow
    current: bool


class _Enrolled(NamedTuple):
    """The person's current template, opened, and where its image came from (``rules.SOURCES``): the
    near-copy rule is an ID photo's alone (``rules.decide``)."""

    template: tuple[float, ...]
    source: str


@dataclass(frozen=True, slots=True)
class StepUp:
    cookie: str  # the new session's cookie value, shown once
    session: LoginSession
    match: FaceMatch


class FaceService:
    def __init__(self, *, engine: sa.Engine, cipher: DataCipher, pool: FacePool, tolerance: float,
                 max_image_bytes: int, liveness: LivenessDetector | None = None,
                 sessions: SessionStore | None = None, guard: LoginGuard | None = None,
                 replay_window: timedelta = DEFAULT_REPLAY_WINDOW, counter: RateLimiter | None = None,
                 bad_captures: int = 10, bad_capture_window: int = 900, step_ups: int = 5,
                 step_up_window: int = 900,
                 previous_digest_keys: Sequence[bytes] = ()) -> None:
        if replay_window <= timedelta(0):
            raise ValueError("the face replay window must be positive")
        self._engine = engine
        self._cipher = cipher
        # Derived keys under a keyring (quaygate.crypto; review 132, finding 4), each stored value decided:
        # - the capture digests (face_captures) follow the current data key: they live only for the replay
        #   window, so nothing is recomputed; until it has passed since a key change, a capture is also
        #   looked up under the previous keys' digests (``_claim``), so a replay across the change is
        #   still one: those of the previous data keys still configured, and ``previous_digest_keys``
        #   (QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS), the digest keys alone of data keys already dropped, which
        #   open and tag nothing (review 135, finding 1: a previous data key need not stay for a year).
        # - the enrolment tags (on audit entries, which never change) are made under the current key and
        #   checked under every configured key (``current_of``); `quaygate keys rekey-data` writes a new
        #   tagged entry for each person whose deciding entry only a previous key verifies
        #   (``retag_enrolment``), so dropping that key afterwards changes no one's current enrolment, and
        #   then its mark (``mark_retagged``), after which a previous key's entry counts only below the
        #   person's generation under the current key (review 135, finding 1: that key may have leaked).
        self._digest_keys = tuple(dict.fromkeys((*cipher.derive_all(DIGEST_PURPOSE), *previous_digest_keys)))
        self._tag_keys = cipher.derive_all(TAG_PURPOSE)
        self._tag_key = self._tag_keys[0]
        self.replay_window = replay_window
        self._pool = pool
        self.default_tolerance = rules.tolerance_or_default(tolerance)
        self.max_image_bytes = max_image_bytes
        self._liveness = liveness or NotChecked()
        self._sessions = sessions
        self._guard = guard
        self._counter = counter  # the step-up's unusable captures per person (module docstring)
        self.bad_captures = bad_captures
        self.bad_capture_window = bad_capture_window
        self.step_ups = step_ups  # the step-up's matches per person per step_up_window (module docstring)
        self.step_up_window = step_up_window

    # ---- enrolment ------------------------------------------------------------------------------

    async def enrol(self, person_id: uuid.UUID, image: bytes, *, source: str, actor: str,
                    now: datetime, replace_reason: str | None = None) -> Enrolment:
        """Enrol (or re-enrol) a person's face from one capture; FaceError when it is refused.
        ``replace_reason``: why another face replaces the one enrolled (module docstring)."""
        if source not in rules.SOURCES:
            raise FaceError(FaceCode.SOURCE_INVALID)
        reason = None if replace_reason is None else " ".join(replace_reason.split())
        if reason is not None and not 0 < len(reason) <= MAX_REPLACE_REASON:
            raise FaceError("replace_reason_invalid")
        self._check_size(image)
        refused = await anyio.to_thread.run_sync(self._admit, person_id, image)  # audited below
        analysis = (Analysis(code=refused.value) if refused is not None
                    else await self._analyse(image, (ENROLMENTS, OFF_GATE)))
        return await anyio.to_thread.run_sync(self._store_enrolment, person_id, analysis, source, actor, now,
                                              reason, image)

    def withdraw(self, person_id: uuid.UUID, *, actor: str, now: datetime) -> None:
        """Erase a person's template (leaving the port, or at his request); FaceError when none
        (``withdraw_in``, which the retention sweep uses too: identity.face.retention)."""
        with self._engine.begin() as conn:
            if withdraw_in(conn, self._tag_keys, person_id, actor=audit.actor_fields(actor), now=now) is None:
                raise FaceError(FaceCode.NOT_ENROLLED)

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

    def _admit(self, person_id: uuid.UUID, image: bytes) -> FaceCode | None:
        """The person checked (FaceError when he cannot be enrolled), then the refusal of the picture the
        capture's header claims, before a worker sees it, or None. Called in a thread: the header walk is
        CPU work, bounded but not for the event loop (review 165, finding 3)."""
        self._check_person(person_id)
        return header.refusal(image, self._pool.limits)

    def _check_person(self, person_id: uuid.UUID) -> None:
        with self._engine.connect() as conn:
            status = TemplateStore(conn).person_status(person_id)
        if status is None:
            raise FaceError("not_found")
        if status != "active":
            raise FaceError("person_not_active")

    def _store_enrolment(self, person_id: uuid.UUID, analysis: Analysis, source: str, actor: str,
                         now: datetime, reason: str | None = None, image: bytes | None = None) -> Enrolment:
        """Store the template of ``analysis`` (or audit its refusal) and claim ``image``'s keyed digest, the
        photo's one use (module docstring). In a thread: the HMAC is over up to a few MB, then the database."""
        who = audit.actor_fields(actor)
        if analysis.code is not None or analysis.encoding is None:
            code = analysis.code or FaceCode.NO_FACE
            log.info("identity.face.enrol.refused.%s", code)
            audit.record("identity.face.enrol.refused", at=now, actor=who, subject=str(person_id),
                         data=_quality(analysis, code=code, source=source), engine=self._engine)
            raise FaceError(code)
        digest = None if image is None else self._digest(self._digest_keys[0], person_id, image)
        del image  # the capture's last reference here: nothing below sees it
        template_id = uuid.uuid4()
        row = TemplateRow(person_id=person_id, template_id=template_id,
                          sealed=seal_template(self._cipher, person_id, template_id, analysis.encoding),
                          key_id=self._cipher.key_id, source=source, face_px=analysis.face_px or 0,
                          sharpness=analysis.sharpness or 0.0, enrolled_by=actor[:100], enrolled_at=now)
        try:
            with self._engine.begin() as conn:
                store = TemplateStore(conn)
                store.lock_person(person_id)  # one enrolment or withdrawal of the person at a time
                current, entries = _read_enrolment(store, self._tag_keys, person_id)
                old = store.get(person_id)
                replacing = (self._replacing(person_id, old, current, analysis.encoding) if old is not None
                             else _after_withdrawal(current, entries))
                if replacing is not None and replacing.differs and reason is None:
                    raise _Differs(replacing)  # rolls back; audited below
                generation = current.next_generation
                if replacing is not None and not replacing.differs:  # a retake: the anchor stays
                    row = replace(row, anchor_template_id=replacing.anchor_template_id,
                                  anchor_sealed=replacing.anchor_sealed)
                replaced = store.put(row)
                if digest is not None:
                    # The photo's one use (review 165, finding 4). A claim refused leaves these bytes claimed
                    # for another use (this photo enrolled before, then withdrawn; a capture that matched):
                    # refused all the same.
                    CaptureStore(conn).claim(person_id, digest, used_for=f"{ENROL_USE}{template_id}", now=now,
                                             since=now - self.replay_window)
                audit.record(enrolments.ENROLLED, at=now, actor=who, subject=str(person_id), conn=conn,
                             data={**_quality(analysis, source=source), "template_id": str(template_id),
                                   "replaced": replaced, "generation": generation,
                                   **(replacing.audited(reason) if replacing is not None else {}),
                                   "tag": enrolment_tag(self._tag_key, enrolments.ENROLLED, person_id, generation,
                                                        template_id)})
        except sa.exc.IntegrityError as exc:
            raise FaceError("concurrent_change") from exc
        except _Differs as refused:
            log.info("identity.face.enrol.refused.face_differs")
            audit.record("identity.face.enrol.refused", at=now, actor=who, subject=str(person_id),
                         engine=self._engine, data={**_quality(analysis, code="face_differs", source=source),
                                                    **refused.replacing.audited(None)})
            withdrawn, drifted = refused.replacing.after_withdrawal, refused.replacing.drifted
            raise FaceError("face_differs", WITHDRAWN_MESSAGE if withdrawn else ANCHOR_MESSAGE if drifted else "") \
                from None
        if replacing is not None and replacing.differs:
            log.warning("identity.face.enrolment.replaced_other_face",
                        extra={"fields": {"person_id": str(person_id), "distance": replacing.distance,
                                          "anchor_distance": replacing.anchor_distance,
                                          "after_withdrawal": replacing.after_withdrawal}})
        log.info("identity.face.enrolled")
        return Enrolment(person_id, template_id, source, row.face_px, row.sharpness, now, replaced,
                         replacing.distance if replacing is not None else None)

    def _replacing(self, person_id: uuid.UUID, old: TemplateRow, current: enrolments.Current,
                   encoding: tuple[float, ...]) -> _Replacing:
        """What a new enrolment replaces when a template is stored: its id and its distance to the new
        one, None when it does not open or the trail does not name it (then it counts as another face:
        nothing says whose it was); and the anchor's (module docstring): the old row's sealed anchor, or
        the old template itself when the row has none; its distance None when it does not open. The new
        face differs when either distance is None or above the default tolerance. With none stored,
        ``_after_withdrawal``."""
        distance = anchor_distance = None
        anchor_id, anchor_sealed = old.anchor_template_id, old.anchor_sealed
        if enrolments.not_current_reason(current, str(old.template_id)) is None:
            distance = self._distance(person_id, old.template_id, old.sealed, encoding)
            if anchor_id is None and anchor_sealed is None:
                anchor_id, anchor_sealed, anchor_distance = old.template_id, old.sealed, distance
            elif anchor_id is not None and anchor_sealed is not None:
                anchor_distance = self._distance(person_id, anchor_id, anchor_sealed, encoding)
        tol = self.default_tolerance
        differs = distance is None or distance > tol or anchor_distance is None or anchor_distance > tol
        return _Replacing(old.template_id, distance, differs, anchor_template_id=anchor_id,
                          anchor_distance=anchor_distance, anchor_sealed=anchor_sealed,
                          drifted=differs and distance is not None and distance <= tol)

    def _distance(self, person_id: uuid.UUID, template_id: uuid.UUID, sealed: str,
                  encoding: tuple[float, ...]) -> float | None:
        """The distance of ``encoding`` to a stored template (sealed under the person and ``template_id``),
        None when it does not open."""
        try:
            enrolled = open_template(self._cipher, person_id, template_id, sealed)
        except TemplateUnreadable:
            log.error("identity.face.template.unreadable")
            return None
        return round(rules.distance(encoding, enrolled), 4)

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
        enrolled, digests, early = await anyio.to_thread.run_sync(self._prepare, person_id, image_bytes, tol, own_face)
        liveness = Liveness.NOT_CHECKED
        analysis = Analysis(code=early.reason) if early is not None else None
        if analysis is None:
            try:
                analysis = await self._analyse(image_bytes, _owner(purpose, context, person_id))
                liveness = await anyio.to_thread.run_sync(self._liveness.check, image_bytes)
            except FaceError as exc:
                analysis = Analysis(code=exc.code)
        del image_bytes
        done = analysis
        call = _Call(purpose, actor, context, now or _now(), used_for or f"{purpose}:{uuid.uuid4()}", own_face,
                     claim)
        return await anyio.to_thread.run_sync(
            lambda: self._conclude(person_id, enrolled, done, liveness, tol, digests, call))

    def verify_face_blocking(self, person_id: uuid.UUID, image_bytes: bytes, tolerance: float | None = None, *,
                             purpose: str = "gate", actor: dict[str, Any] | None = None,
                             context: dict[str, Any] | None = None, now: datetime | None = None,
                             used_for: str | None = None, own_face: bool = False, claim: bool = True) -> FaceMatch:
        """``verify_face`` for plain ``def`` routes (FastAPI runs them in its thread pool)."""
        tol = self._tolerance(tolerance)
        enrolled, digests, early = self._prepare(person_id, image_bytes, tol, own_face)
        liveness = Liveness.NOT_CHECKED
        analysis = Analysis(code=early.reason) if early is not None else None
        if analysis is None:
            try:
                analysis = self._analyse_blocking(image_bytes, _owner(purpose, context, person_id))
                liveness = self._liveness.check(image_bytes)
            except FaceError as exc:
                analysis = Analysis(code=exc.code)
        del image_bytes
        call = _Call(purpose, actor, context, now or _now(), used_for or f"{purpose}:{uuid.uuid4()}", own_face,
                     claim)
        return self._conclude(person_id, enrolled, analysis, liveness, tol, digests, call)

    def _tolerance(self, tolerance: float | None) -> float:
        try:
            return rules.tolerance_or_default(tolerance, self.default_tolerance)
        except ValueError as exc:
            raise FaceError(FaceCode.TOLERANCE_INVALID) from exc

    def _prepare(self, person_id: uuid.UUID, image: bytes, tol: float,
                 own_face: bool) -> tuple[_Enrolled | FaceCode, tuple[bytes, ...], FaceMatch | None]:
        """The person's template (or why there is none), the capture's keyed digest (HMAC over up to a few
        MB) and its early refusal (``_early_refusal``: the header walk): off the event loop, with the
        database read (review 165, finding 3: the header was judged on the event loop)."""
        enrolled = self._template(person_id)
        digests = tuple(self._digest(key, person_id, image) for key in self._digest_keys)
        return enrolled, digests, self._early_refusal(enrolled, image, tol, own_face)

    @staticmethod
    def _digest(key: bytes, person_id: uuid.UUID, image: bytes) -> bytes:
        """HMAC-SHA256 of the capture's bytes for this person, under a key derived from the data key:
        never the image, nor a plain hash anyone could compute from a copy of it."""
        mac = hmac.new(key, b"face-capture:v1:" + person_id.bytes, hashlib.sha256)
        mac.update(image)
        return mac.digest()

    def _template(self, person_id: uuid.UUID) -> _Enrolled | FaceCode:
        """The person's template and its source, once the trail names it as his current enrolment."""
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
            return _Enrolled(open_template(self._cipher, person_id, row.template_id, row.sealed), row.source)
        except TemplateUnreadable:
            # Tampered, moved to another person's row, or sealed under another data key.
            log.error("identity.face.template.unreadable")
            return FaceCode.UNAVAILABLE

    def _current(self, store: TemplateStore, person_id: uuid.UUID) -> enrolments.Current:
        return current_of(store, self._tag_keys, person_id)

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

    def _early_refusal(self, enrolled: _Enrolled | FaceCode, image: bytes, tol: float,
                       own_face: bool) -> FaceMatch | None:
        """Refusals that need no analysis: the capture's size and the picture its header claims
        (``identity.face.header``); and, for the person himself only, a missing template (no CPU spent
        on it). For anyone else the capture is analysed all the same, so that its answer, and the time
        it takes, do not say whether a face is enrolled (a header refusal is the same either way)."""
        if own_face and isinstance(enrolled, FaceCode):
            return rules.refused(enrolled, tol)
        try:
            self._check_size(image)
        except FaceError as exc:
            return rules.refused(FaceCode(exc.code), tol)
        refused = header.refusal(image, self._pool.limits)
        return rules.refused(refused, tol) if refused is not None else None

    def _conclude(self, person_id: uuid.UUID, enrolled: _Enrolled | FaceCode, analysis: Analysis,
                  liveness: Liveness, tol: float, digests: tuple[bytes, ...], call: _Call) -> FaceMatch:
        capture = None
        if analysis.code is not None or analysis.encoding is None:
            capture = _capture_code(analysis.code)
        refusal = rules.first_refusal(enrolled if isinstance(enrolled, FaceCode) else None, capture,
                                      own_face=call.own_face)
        replay: dict[str, Any] = {}
        if refusal is not None:
            match = rules.refused(refusal, tol)
        elif liveness is Liveness.SPOOF:
            match = rules.refused(FaceCode.NOT_LIVE, tol)
        else:
            assert analysis.encoding is not None and not isinstance(enrolled, FaceCode)
            match = rules.decide(analysis.encoding, enrolled.template, tol, source=enrolled.source)
            if match.reason == FaceCode.REPLAYED:  # a copy of the enrolment's ID photo: nothing claimed
                log.warning("identity.face.verify.replayed")
                replay = {"replay_of": "enrolment", "replay_first_seen_at": None}
            elif match.matched:
                replay = self._claim(person_id, digests, call)  # {}: fresh, or the same use again
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

    def _claim(self, person_id: uuid.UUID, digests: tuple[bytes, ...], call: _Call) -> dict[str, Any]:
        """Claim a matched capture for ``call``'s use; {} when it is fresh (or the same use again), else
        what the audit entry says of the replay: where and when these bytes were matched first.
        ``digests``: under the current data key's digest key, then the previous keys' (a capture claimed
        before the data key changed is still found, within the replay window)."""
        since, use = call.now - self.replay_window, call.used_for[:200]
        digest = digests[0]
        with self._engine.begin() as conn:
            store = CaptureStore(conn)
            earlier = (store.seen(person_id, d) for d in digests[1:])
            first = next((f for f in earlier if f is not None and f.seen_at >= since and f.used_for != use), None)
            if first is not None:
                pass  # claimed under a previous data key, for another use: a replay
            elif not call.claim:  # a dry run: found, never claimed
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
        bad, matched = f"face-bad-captures:{session.person_id}", f"face-step-ups:{session.person_id}"
        if self._counter is not None:
            spent = await anyio.to_thread.run_sync(self._counter.exceeded, bad, self.bad_captures,
                                                   self.bad_capture_window)
            if spent is not None:
                log.info("identity.face.step_up.refused.bad_captures")
                raise FaceError("rate_limited", BAD_CAPTURES_MESSAGE, retry_after=spent)
            spent = await anyio.to_thread.run_sync(self._counter.exceeded, matched, self.step_ups,
                                                   self.step_up_window)
            if spent is not None:
                log.info("identity.face.step_up.refused.step_ups")
                raise FaceError("rate_limited", STEP_UPS_MESSAGE, retry_after=spent)
        actor = {"person_id": str(session.person_id)}
        match = await self.verify_face(session.person_id, image, purpose="step_up", actor=actor, now=now,
                                       used_for=f"step_up:{session.sid}", own_face=True)
        del image
        if not match.matched:
            # A guess, a spoof, a copy of an earlier capture count towards the lockout; a blurred shot
            # not, but towards the person's allowance of unusable captures (each cost a worker's time).
            if match.reason in (FaceCode.MISMATCH, FaceCode.NOT_LIVE, FaceCode.REPLAYED):
                await anyio.to_thread.run_sync(guard.failed, subject, address)
            elif match.reason in rules.QUALITY_CODES and self._counter is not None:
                await anyio.to_thread.run_sync(self._counter.hit, bad, self.bad_captures, self.bad_capture_window)
            raise FaceError(match.reason or FaceCode.MISMATCH)
        if not seen.clean:  # nothing on record: nothing to forget, no thread hop
            await anyio.to_thread.run_sync(guard.succeeded, subject, address, seen)
        cookie, stepped = await anyio.to_thread.run_sync(self._replace_session, session, acr, amr, match, now)
        if self._counter is not None:  # a match counts once its session is made (module docstring)
            await anyio.to_thread.run_sync(self._counter.hit, matched, self.step_ups, self.step_up_window)
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

    async def _analyse(self, image: bytes, owner: tuple[str, ...] = ()) -> Analysis:
        try:
            return _known(await self._pool.analyse(image, owner))
        except FaceUnavailable as exc:
            raise FaceError(exc.code) from exc

    def _analyse_blocking(self, image: bytes, owner: tuple[str, ...] = ()) -> Analysis:
        try:
            return _known(self._pool.analyse_blocking(image, owner))
        except FaceUnavailable as exc:
            raise FaceError(exc.code) from exc


def current_of(store: TemplateStore, tag_keys: Sequence[bytes], person_id: uuid.UUID) -> enrolments.Current:
    """What the person's enrolment entries say is current, each entry's tag checked here under each of
    ``tag_keys`` (the current data key's tag key first, then the previous keys')."""
    return _read_enrolment(store, tag_keys, person_id)[0]


class _Read(NamedTuple):
    """One of the person's enrolment entries as ``_read_enrolment`` read it: its data, the index in the tag
    keys of the key its tag verifies under (None: none, or it has no tag), its time, kind and actor."""

    data: Any
    key: int | None
    at: datetime
    kind: str
    actor: Any


def _read_enrolment(store: TemplateStore, tag_keys: Sequence[bytes],
                    person_id: uuid.UUID) -> tuple[enrolments.Current, dict[int, _Read]]:
    """``current_of``, and each entry it counted (``_Read``), by row id."""
    read = []
    for entry in store.enrolment_entries(person_id):
        data = entry.data if isinstance(entry.data, dict) else {}
        tag, generation = data.get("tag"), data.get("generation")
        named = None if entry.kind == enrolments.WITHDRAWN else data.get("template_id")
        flagged = data.get("retagged") is True  # covered by the tag (review 135, finding 4)
        key = None
        if not (tag is None and generation is None):
            key = next((n for n, k in enumerate(tag_keys)
                        if tag_verifies(k, tag, entry.kind, person_id, generation, named, retagged=flagged)), None)
        read.append((entry, data, named, generation, key))
    # Entries tagged under a data key since dropped (after `quaygate keys rekey-data` re-tagged the person)
    # verify under no configured key: those below a verified re-tag entry's generation are history the
    # re-tag already vouched for, not forgeries (and could decide nothing: a higher generation wins).
    retagged = max((g for (_, d, _, g, k) in read if k is not None and d.get("retagged") is True
                    and isinstance(g, int)), default=0)
    # A previous key may be the one that leaked (review 135, finding 1): with it and write access to the
    # database anyone makes an entry of a generation above the person's. Once `quaygate keys rekey-data` has
    # tagged every person's enrolment under the current key (its mark, ``mark_retagged``), a previous key's
    # entry counts only below the person's highest generation under the current key (history: every entry
    # the service writes is one above those before it); at or above it, it is a forgery. Until then, while
    # the key has just changed, the previous keys' entries decide as before (no one's face stops working).
    ours = max((g for (_, _, _, g, k) in read if k == 0 and _generation(g) is not None), default=0)
    above = [n for n, (_, _, _, g, k) in enumerate(read) if k is not None and k > 0 and (_generation(g) or 0) >= ours]
    if above and retagged_all(store, tag_keys[0]):
        for n in above:
            entry, data, named, generation, _ = read[n]
            read[n] = (entry, data, named, generation, None)
    found, keys = [], {}
    for entry, data, named, generation, key in read:
        tagged = not (data.get("tag") is None and generation is None)
        gen = _generation(generation)
        if tagged and key is None and gen is not None and gen < retagged:
            continue
        keys[entry.id] = _Read(data, key, entry.at, entry.kind, entry.actor)
        found.append(enrolments.EnrolmentEntry(
            entry.id, entry.kind, named if isinstance(named, str) else None, gen,
            None if not tagged else key is not None))
    current = enrolments.current_enrolment(found)
    if current.forged:
        log.error("identity.face.enrolment.forged_entry", extra={"fields": {"forged": current.forged}})
    return current, keys


def _generation(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def retagged_all(store: TemplateStore, tag_key: bytes) -> bool:
    """`quaygate keys rekey-data` has tagged every enrolment under the current data key (``tag_key``, its
    tag key): a ``RETAGGED_ALL`` entry whose tag verifies under it, which no previous key's holder makes."""
    return any(isinstance(data, dict) and retag_mark_verifies(tag_key, data.get("tag"))
               for data in store.retag_marks())


def mark_retagged(conn: sa.Connection, tag_keys: Sequence[bytes], *, actor: dict[str, Any], now: datetime,
                  retagged: int) -> None:
    """Say on the trail that every person's enrolment is now tagged under the current data key (`quaygate
    keys rekey-data`, after ``retag_enrolment`` for each person who needed it): from then on a previous key's
    tag counts only below the person's generation under the current key (``_read_enrolment``)."""
    audit.record(enrolments.RETAGGED_ALL, at=now, actor=actor, subject=None, conn=conn,
                 data={"retagged": retagged, "previous_keys": len(tag_keys) - 1, "tag": retag_mark(tag_keys[0])})


@dataclass(frozen=True, slots=True)
class Retag:
    """A person whose enrolment a previous data key decides, and the entry that decides it: its row, kind and
    time. `quaygate keys rekey-data` lists them as it tags them again (review 135, finding 4), so that those
    decided by an entry made since a suspected leak of the old key can be looked at."""

    person_id: uuid.UUID
    current: enrolments.Current
    row_id: int
    decided_at: datetime


def needs_retag(store: TemplateStore, tag_keys: Sequence[bytes], person_id: uuid.UUID) -> Retag | None:
    """The person's current enrolment when the tagged entry that decides it verifies only under a previous
    data key (dropping that key would leave it deciding nothing); None otherwise."""
    current, keys = _read_enrolment(store, tag_keys, person_id)
    if current.generation == 0:
        return None  # no tagged entry decides (none, or the legacy rule): nothing a data key bears on
    deciding = {row_id: (read.key, read.at) for row_id, read in keys.items()
                if read.key is not None and read.data.get("generation") == current.generation}
    if not deciding or min(key for key, _ in deciding.values()) == 0:
        return None
    row_id = max(deciding)  # the later row on a tie (identity.domain.face_enrolment): a copy decides as its original
    return Retag(person_id, current, row_id, deciding[row_id][1])


def retag_enrolment(conn: sa.Connection, tag_keys: Sequence[bytes], person_id: uuid.UUID, *, actor: dict[str, Any],
                    now: datetime) -> Retag | None:
    """Under the person's lock: when his deciding enrolment entry verifies only under a previous data key,
    write the same decision again at the next generation, tagged under the current key and marked
    ``retagged`` (identity.domain.face_enrolment's rules unchanged: the highest generation decides). The
    person and his deciding entry when one was written, else None; a second call writes none."""
    store = TemplateStore(conn)
    store.lock_person(person_id)
    found = needs_retag(store, tag_keys, person_id)
    if found is None or found.current.kind is None:
        return None
    current = found.current
    generation = current.next_generation
    kind = enrolments.WITHDRAWN if current.kind == enrolments.WITHDRAWN else enrolments.UPGRADED
    audit.record(kind, at=now, actor=actor, subject=str(person_id), conn=conn,
                 data={"template_id": current.template_id, "generation": generation, "retagged": True,
                       "retag_of": found.row_id,
                       "tag": enrolment_tag(tag_keys[0], kind, person_id, generation, current.template_id,
                                            retagged=True)})
    return found


def withdraw_in(conn: sa.Connection, tag_keys: Sequence[bytes], person_id: uuid.UUID, *, actor: dict[str, Any],
                now: datetime, why: dict[str, Any] | None = None) -> TemplateRow | None:
    """Withdraw the person's template in ``conn``'s transaction, under his lock; the row withdrawn, or
    None when there was none. The tagged entry of the next generation names no template: a row written
    back afterwards is not current. The person's matched captures lose what they were used for and
    when (``CaptureStore.strip``: the gate requests and sessions they name are a movement history);
    their digests stay, so an old capture sent again after a re-enrolment is still a replay (review 131,
    finding 4). ``why``: more for the entry (the retention sweep's reason)."""
    store = TemplateStore(conn)
    store.lock_person(person_id)
    row = store.get(person_id)
    if row is None or not store.delete(person_id):
        return None
    generation = current_of(store, tag_keys, person_id).next_generation
    stripped = CaptureStore(conn).strip(person_id, now=now)
    audit.record(enrolments.WITHDRAWN, at=now, actor=actor, subject=str(person_id), conn=conn,
                 data={"template_id": str(row.template_id), "generation": generation, "captures_stripped": stripped,
                       **(why or {}),
                       "tag": enrolment_tag(tag_keys[0], enrolments.WITHDRAWN, person_id, generation, None)})
    return row


@dataclass(frozen=True, slots=True)
class _Replacing:
    """The enrolment a new one replaces: its template, the distance between the two faces (None: the old
    one did not open, is not current, or was withdrawn) and whether they differ (above the default
    tolerance, or None, to the old face or to the anchor). ``after_withdrawal``: the old one was withdrawn
    by a person (``_after_withdrawal``). The anchor (``FaceService._replacing``): its template id, its
    distance to the new face (None: it did not open, or the old one is not current) and its sealed
    template, which a retake's row keeps (never audited)."""

    template_id: uuid.UUID | None
    distance: float | None
    differs: bool
    after_withdrawal: bool = False
    anchor_template_id: uuid.UUID | None = None
    anchor_distance: float | None = None
    anchor_sealed: str | None = field(default=None, repr=False)
    drifted: bool = False  # differs from the anchor alone: close to the face enrolled now

    def audited(self, reason: str | None) -> dict[str, Any]:
        done: dict[str, Any] = {"replaced_template_id": None if self.template_id is None else str(self.template_id),
                                "distance": self.distance, "differs": self.differs}
        if self.after_withdrawal:
            done["after_withdrawal"] = True
        else:
            done["anchor_template_id"] = None if self.anchor_template_id is None else str(self.anchor_template_id)
            done["anchor_distance"] = self.anchor_distance
        return done if reason is None else {**done, "replace_reason": reason}


def _after_withdrawal(current: enrolments.Current, entries: dict[int, _Read]) -> _Replacing | None:
    """What an enrolment replaces when no template is stored (review 148, finding 2): nothing when the
    person was never enrolled, or when the retention sweep withdrew his face (a person back at work after
    leaving the port: expected, and no officer makes the sweep act quickly, identity.face.retention). When
    the entry that decides is a withdrawal by a person (the badge office's DELETE), the withdrawn template
    is gone (erased, as a withdrawal must: nothing keeps it, so nothing compares with it) and the new face
    counts as another one: without it, an officer withdrew a driver's face and enrolled his accomplice's
    with no reason and no warning, where replacing it straight away needs both (review 131, finding 3)."""
    if current.kind != enrolments.WITHDRAWN:
        return None
    entry = entries.get(current.row_id) if current.row_id is not None else None  # the entry that decides
    if entry is not None and entry.actor == RETENTION_ACTOR:
        return None
    named = entry.data.get("template_id") if entry is not None else None
    try:
        template_id = uuid.UUID(named) if isinstance(named, str) else None
    except ValueError:
        template_id = None
    return _Replacing(template_id, None, True, after_withdrawal=True)


class _Differs(Exception):
    """Another face would replace the enrolled one, and no reason was given: the transaction rolls back."""

    def __init__(self, replacing: _Replacing) -> None:
        super().__init__("face_differs")
        self.replacing = replacing


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


def _owner(purpose: str, context: dict[str, Any] | None, person_id: uuid.UUID) -> tuple[str, ...]:
    """The shares of the worker pool a capture takes (``FacePool.share``): a gate's, its terminal's (the
    gate client's token is scoped to it), so that one terminal cannot fill the pool; a step-up, the
    step-ups' and its person's; every one that is not a gate's, the share of all that is not, so that
    none of them can take the gate's workers (review 154, finding 2)."""
    if purpose == "gate":
        terminal = (context or {}).get("terminal")
        return (f"gate:{terminal}",) if terminal is not None else ()
    if purpose == "step_up":
        return STEP_UPS, f"{STEP_UP_OF}{person_id}", OFF_GATE
    return (OFF_GATE,)


def _capture_code(code: str | None) -> FaceCode:
    """The refusal of a capture the worker analysed without an encoding: its code when it is one of ours,
    else image_unreadable (logged). A worker's code was once an exception's text, and ``FaceCode(text)``
    raised: the step-up, the enrolment and the gate answered 500 (review 165, finding 1)."""
    if code is None:
        return FaceCode.NO_FACE
    try:
        return FaceCode(code)
    except ValueError:
        log.error("identity.face.analysis.unknown_code")
        return FaceCode.IMAGE_UNREADABLE


def _known(analysis: Analysis) -> Analysis:
    """``analysis`` with a code the service knows (``_capture_code``), so that the enrolment's refusal, its
    audit entry and a match's reason never carry a library's text."""
    if analysis.code is None:
        return analysis
    code = _capture_code(analysis.code)
    return analysis if code == analysis.code else replace(analysis, code=code.value)


def _quality(analysis: Analysis, **extra: Any) -> dict[str, Any]:
    return {"faces": analysis.faces, "face_px": analysis.face_px, "sharpness": analysis.sharpness, **extra}


def _now() -> datetime:
    return datetime.now(UTC)

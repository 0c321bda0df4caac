"""Which face enrolment of a person is the current one (review 92): the audit trail says, not the row.

A person's sealed template lives in one row of ``face_templates``, replaced by each new enrolment. The
seal binds the template to the person and to its enrolment (``template_id``), so a template moved onto
another row does not open; but an insider with write access to the database who kept an older row (the
enrolment the badge office replaced because it was an impostor's face) could write it back whole, and
it would open. So the row is trusted only when the person's enrolment entries on the audit trail name
it as the current enrolment:

- ``identity.face.enrolled`` (and ``identity.face.enrolment.upgraded``, below) names the template it
  made current; ``identity.face.withdrawn`` names none. They are written in the transaction that writes
  or deletes the row, so a crash cannot leave a row without its entry.
- Each entry carries the person's enrolment **generation** (1, 2, 3 ... one more than the last, counted
  under a lock on the person) and a **tag**: HMAC-SHA256 over the kind, the person, the generation and
  the template, under a key derived from the data key, which is never in the database. An insider can
  insert an audit row, and the sealer would chain and sign it like any other (sealing vouches that an
  entry was not changed afterwards, not who wrote it), so reading only sealed entries would stop
  nothing and would keep a new enrolment from opening until the sealer ran. The tag is what he cannot
  make: an entry whose tag does not verify is a forgery and counts for nothing. A verified entry he
  copies again keeps its old generation, so the newest generation still wins.
- The current enrolment is the one named by the tagged entry of the highest generation (the later row
  on a tie, which only a copy of the same entry makes). A template whose id is not that one is not
  current: an older row restored, a row written with no entry, a row present after a withdrawal.

Entries written before this rule (no generation, no tag): while a person has no tagged entry, the latest
of his untagged entries decides, as the trail always recorded them (every enrolment since the first
wrote its template id in the same transaction); the service then writes a tagged
``identity.face.enrolment.upgraded`` naming that template (generation 1), and from then on the untagged
entries count for nothing. Until that first use, an insider who also inserts an untagged entry can
restore an older row of such a person: re-enrolling closes it at once.

When the data key is replaced (README, "Replacing the data key"), an entry whose tag only a previous key
verifies counts, once `quaygate keys rekey-data` has re-tagged every person under the current key and said
so, only below the person's highest generation under the current key (review 135, finding 1: the previous
key may be the one that leaked); at or above it, the caller hands it over as a forgery (identity.face.service).

Standard library only: the caller verifies the tags and hands over what it found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ENROLLED = "identity.face.enrolled"
UPGRADED = "identity.face.enrolment.upgraded"
WITHDRAWN = "identity.face.withdrawn"
KINDS = (ENROLLED, UPGRADED, WITHDRAWN)  # the audit kinds that say which enrolment is current
# `quaygate keys rekey-data` has tagged every person's enrolment under the current data key (identity.face.
# service ``mark_retagged``): from then on an entry that only a previous key's tag verifies counts only below
# the person's highest generation under the current key (review 135, finding 1).
RETAGGED_ALL = "identity.face.enrolments.retagged"


@dataclass(frozen=True, slots=True)
class EnrolmentEntry:
    """One of the person's enrolment entries as read from the trail, its tag already checked.

    ``tag_ok``: True when its tag verifies, False when it has one that does not (a forgery), None when
    it has none (written before the rule)."""

    row_id: int
    kind: str
    template_id: str | None
    generation: int | None
    tag_ok: bool | None


@dataclass(frozen=True, slots=True)
class Current:
    """What the trail says of a person's enrolment. ``template_id`` None: none is current (never
    enrolled, or withdrawn). ``legacy``: decided by an untagged entry (to be upgraded on first use).
    ``generation``: the highest verified generation (0 when none), which the next entry exceeds by one.
    ``forged``: how many entries carried a tag that did not verify (a tamper signal). ``kind``: the
    deciding entry's kind, None when no entry decides; ``row_id``, that entry's row id."""

    template_id: str | None
    generation: int
    legacy: bool
    forged: int
    kind: str | None = None
    row_id: int | None = None

    @property
    def next_generation(self) -> int:
        return self.generation + 1


def current_enrolment(entries: Iterable[EnrolmentEntry]) -> Current:
    """The person's current enrolment by the rules of the module docstring."""
    tagged: list[EnrolmentEntry] = []
    untagged: list[EnrolmentEntry] = []
    forged = 0
    for entry in entries:
        if entry.kind not in KINDS:
            continue
        if entry.tag_ok is None:
            untagged.append(entry)
        elif entry.tag_ok and entry.generation is not None and entry.generation > 0:
            tagged.append(entry)
        else:
            forged += 1
    if tagged:
        last = max(tagged, key=lambda e: (e.generation or 0, e.row_id))
        return Current(_named(last), last.generation or 0, legacy=False, forged=forged, kind=last.kind,
                       row_id=last.row_id)
    if untagged:
        last = max(untagged, key=lambda e: e.row_id)
        named = _named(last)
        return Current(named, 0, legacy=named is not None, forged=forged, kind=last.kind, row_id=last.row_id)
    return Current(None, 0, legacy=False, forged=forged)


def _named(entry: EnrolmentEntry) -> str | None:
    return None if entry.kind == WITHDRAWN else entry.template_id


def not_current_reason(current: Current, template_id: str) -> str | None:
    """Why a stored template is not the current enrolment, or None when it is: ``no_entry`` (the trail
    names no enrolment of this person), ``withdrawn`` (the last entry withdrew it), ``superseded`` (the
    trail names another template: an older row restored, or one written beside the trail)."""
    if current.template_id == template_id:
        return None
    if current.kind is None:
        return "no_entry"
    return "withdrawn" if current.kind == WITHDRAWN else "superseded"

"""HTTP preconditions on a release right (RFC 9110 §13.1.1, §8.8.3): its version is its entity tag.

    GET and every write answer that carries the right     ETag: "<version>"
    a write on the right with If-Match                    compared with the right's version in the use
                                                          case, under the row lock (services/common.py
                                                          ``require_current``): a mismatch is 412
                                                          ``precondition_failed``, nothing written

A light made red or scan is the one write a stale If-Match does not refuse (services/lifecycle.py
``set_light``): it can only make the right less pickable, and the holder, by nominating again, could
otherwise starve customs' conditioned holds. A green is compared as any write.

If-Match stays optional: without it a write goes through at any version, as before. The header is read
here, its grammar checked; the comparison is the use case's. A value that is neither ``*`` nor a list
of entity tags is 400 ``invalid_if_match``: an integrator sending ``5`` for ``"5"`` hears of it, rather
than every write being refused as stale.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from fastapi import Depends, Header

from release_service.domain.errors import DomainError, ErrorCode
from release_service.services.common import IfMatch

# One element of the list (RFC 9110 §5.6.1, §8.8.3): OWS, an entity tag or nothing (empty elements are
# allowed), OWS, then a comma or the end. etagc = %x21 / %x23-7E / obs-text: a tag may hold a comma.
_ELEMENT = re.compile(r'[ \t]*(?:(W/)?"([\x21\x23-\x7e\x80-\xff]*)")?[ \t]*(?:,|\Z)')
MAX_IF_MATCH = 1024

IF_MATCH_DESCRIPTION = (
    "Write only if the right is still at this version (RFC 9110 §13.1.1): the `ETag` of the right as "
    "last read (GET /api/v1/releases/{id}, or the answer of a write), e.g. `\"7\"`, or a list of them, or "
    "`*`. A right that changed since (another party's write, a gate move) refuses the write with 412 "
    "`precondition_failed` and nothing is written; read it again. A light set `red` or `scan` is never "
    "refused for a stale version (a hold only makes the right less pickable); a `green` is. Weak tags "
    "(`W/\"7\"`) never match. "
    "Optional: without it a write goes through at any version. A value that is not `*` or entity tags is "
    "400 `invalid_if_match`.")
ETAG_HEADER = {"ETag": {"description": "The right's version as an entity tag, e.g. `\"7\"`: send it back in "
                                       "`If-Match` to write only if nothing changed since.",
                        "schema": {"type": "string"}}}


def etag(version: int) -> str:
    """The strong entity tag of a right at ``version``."""
    return f'"{version}"'


def parse_if_match(raw: str) -> IfMatch:
    """``If-Match``'s value: ``*``, or one or more entity tags (RFC 9110 §13.1.1). Raises DomainError
    ``invalid_if_match`` for anything else (an unquoted version, no tag at all, over 1 024 characters)."""
    text = raw.strip(" \t")
    if text == "*":
        return IfMatch(any=True)
    if len(text) > MAX_IF_MATCH:
        raise DomainError(ErrorCode.INVALID_IF_MATCH, f"If-Match is longer than {MAX_IF_MATCH} characters.")
    strong: set[str] = set()
    seen = 0
    pos = 0
    while pos < len(text):
        m = _ELEMENT.match(text, pos)
        if m is None or m.end() == pos:
            raise DomainError(ErrorCode.INVALID_IF_MATCH, 'If-Match is "*" or entity tags such as "7" (quoted), '
                              "as the ETag of the right gives them.")
        if m.group(2) is not None:
            seen += 1
            if m.group(1) is None:  # If-Match compares strongly: a weak tag matches nothing
                strong.add(m.group(2))
        pos = m.end()
    if not seen:
        raise DomainError(ErrorCode.INVALID_IF_MATCH, "If-Match names no entity tag.")
    return IfMatch(tags=frozenset(strong))


def if_match(value: Annotated[str | None, Header(alias="If-Match", description=IF_MATCH_DESCRIPTION)] = None
             ) -> IfMatch | None:
    """The request's If-Match, parsed; None without one."""
    return None if value is None else parse_if_match(value)


Precondition = Annotated[IfMatch | None, Depends(if_match)]


def stated(if_match: IfMatch) -> str:
    """The precondition as one canonical string, for an Idempotency-Key's fingerprint: the same versions
    however spelled (spaces, order, empty elements) give the same string, other versions another."""
    return "*" if if_match.any else json.dumps(sorted(if_match.tags))

"""quaygate/jsonbody.py: the gate's answer encoded once and embedded as encoded, read back as json reads it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from quaygate.jsonbody import Body, dumps, loads


def test_a_body_is_encoded_once_and_embedded_as_those_bytes() -> None:
    body = Body(decision="allow", reasons=[], driver="J. P***s", committed=False, repairs=[{"position": 3}])
    encoded = body.encoded()
    assert body.encoded() is encoded  # kept, not made again
    row = {"id": uuid.uuid4(), "response": body, "decided_at": datetime.now(UTC)}
    out = dumps(row)
    assert encoded in out  # the very bytes, not an encoding of its own
    assert loads(out)["response"] == dict(body) == json.loads(encoded)
    assert dumps(body) is encoded


def test_uuids_and_aware_datetimes_read_back_as_str_and_isoformat_wrote_them() -> None:
    at = datetime(2026, 11, 22, 4, 5, 6, 789, tzinfo=timezone(timedelta(hours=1)))
    whole = datetime(2026, 11, 22, tzinfo=UTC)
    rid = uuid.uuid4()
    got = loads(dumps({"id": rid, "at": at, "whole": whole, "none": None, "n": 1.5}))
    assert got == {"id": str(rid), "at": at.isoformat(), "whole": whole.isoformat(), "none": None, "n": 1.5}
    assert datetime.fromisoformat(got["at"]) == at


def test_text_beyond_ascii_reads_back_the_same() -> None:
    body = Body(driver="É. Ö***ü", container="MSCU1234566")
    assert json.loads(dumps({"response": body})) == {"response": {"driver": "É. Ö***ü", "container": "MSCU1234566"}}


def test_what_json_cannot_hold_is_refused() -> None:
    with pytest.raises(TypeError):
        dumps({"x": object()})

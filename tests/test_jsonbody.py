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


def test_a_body_deep_inside_and_other_subclasses_are_written_as_json_writes_them() -> None:
    """A Body anywhere in the value is embedded as encoded; a subclass of str, int, float, dict or list
    is written as its plain value, the way ``json.dumps`` writes it."""
    import enum

    class Tag(str):
        def __str__(self) -> str:
            return "not what json writes"

    class Count(int):
        pass

    class Ratio(float):
        pass

    class Colour(enum.StrEnum):
        GREEN = "green"

    class Mapping(dict[str, int]):
        pass

    class Items(list[int]):
        pass

    body = Body(decision="allow")
    value = {"deep": [{"response": body}], "tag": Tag("t"), "n": Count(3), "r": Ratio(0.25),
             "colour": Colour.GREEN, "m": Mapping(a=1), "l": Items([1, 2])}
    out = dumps(value)
    assert body.encoded() in out
    plain = {**value, "deep": [{"response": dict(body)}]}
    assert loads(out) == json.loads(json.dumps(plain))
    assert loads(out)["tag"] == "t" and loads(out)["colour"] == "green"


@pytest.mark.parametrize("raw", [
    b'{"a": 1, "a": 2}', b'{"x": "\\u00e9\\ud83d\\ude00"}', b'[0.1, 1E-7, 0.1e1, 1e308, -0.0, 123456789012345678]',
    b'{"n": NaN, "i": Infinity}', b'[123456789012345678901234567890]', b'[9223372036854775808, -9223372036854775809]',
    b'[18446744073709551616]', b'{"number": "1234567890123456789012"}', b'"\\ud800"', b'\xef\xbb\xbf{"bom": true}',
    b'  {"spaced" : [ ] }  ', b'{"deep": [[[[[[]]]]]]}',
])
def test_loads_as_json_reads_what_json_reads_as_json_reads_it(raw: bytes) -> None:
    from quaygate.jsonbody import loads_as_json

    got = loads_as_json(raw)
    assert json.dumps(got) == json.dumps(json.loads(raw)) and type(got) is type(json.loads(raw))


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,]", b"{'a': 1}", b"\xff", b"[" * 100_000])
def test_loads_as_json_refuses_what_json_refuses(raw: bytes) -> None:
    from quaygate.jsonbody import loads_as_json

    with pytest.raises((ValueError, RecursionError)) as ours:
        loads_as_json(raw)
    with pytest.raises((ValueError, RecursionError)) as theirs:
        json.loads(raw)
    assert type(ours.value) is type(theirs.value)

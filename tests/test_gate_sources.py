"""Gate sources: each vendor fixture parses to the expected read; each malformed variant is refused
with SourceError (never another exception)."""
# ruff: noqa: F811 - ``parsed_bodies`` is a fixture imported here and requested by name

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gate_adapters.core.reads import (
    BadgeRead,
    ContainerRead,
    FaceMatch,
    FaceRead,
    PlateRead,
    SourceError,
    check_fresh,
    country_alpha2,
)
from gate_adapters.sources import axis, generic_json, hikvision, mqtt, ocr_portal

from .test_gate_source_resilience import parsed_bodies  # noqa: F401 - a fixture requested by name

FIXTURES = Path(__file__).parent / "fixtures" / "gate"
HIK_MULTIPART_TYPE = "multipart/form-data; boundary=----HikBoundary7MA4YWxkTrZu0gW"
CHANNELS = {"1": "in-3", "10.20.3.42/2": "in-4"}
AXIS_CAMERAS = {"ACCC8EF0F4A5/1": "in-3"}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> dict:
    return json.loads(fixture(name))


AXIS, OCR = "axis_lpv.json", "ocr_portal.json"


def _variant(name: str, **changes: object) -> bytes:
    """A fixture's JSON with some keys changed (None: removed)."""
    obj = fixture_json(name)
    for key, value in changes.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(obj).encode()


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- Hikvision ISAPI ANPR ---------------------------------------------------------------------


def test_hikvision_bare_xml() -> None:
    read = hikvision.parse(fixture("hikvision_anpr.xml"), "application/xml", channel_lanes=CHANNELS)
    assert read == PlateRead(
        lane="in-3",
        source="hikvision",
        camera="c0:56:e3:aa:10:41/1",
        text="1ABC234",
        country="BE",
        confidence=0.94,
        observed_at=at(2026, 11, 21, 14, 30, 1),
    )


def test_hikvision_multipart_reads_the_xml_part_and_ignores_the_pictures() -> None:
    read = hikvision.parse(fixture("hikvision_anpr_multipart.bin"), HIK_MULTIPART_TYPE, channel_lanes=CHANNELS)
    assert read is not None
    assert (read.text, read.confidence, read.lane) == ("1ABC234", 0.94, "in-3")


def test_hikvision_isapi_namespace_ip_channel_mapping_and_numeric_country_index() -> None:
    body = fixture("hikvision_anpr_isapi.xml")
    read = hikvision.parse(body, None, channel_lanes=CHANNELS, country_codes={"42": "NLD"})
    assert read is not None
    assert (read.lane, read.text, read.country, read.confidence) == ("in-4", "BX12ZT", "NL", 0.71)
    unmapped = hikvision.parse(body, None, channel_lanes=CHANNELS)
    assert unmapped is not None and unmapped.country is None  # unknown index: never guessed


def test_hikvision_heartbeat_gives_none() -> None:
    assert hikvision.parse(fixture("hikvision_heartbeat.xml"), "text/xml", channel_lanes=CHANNELS) is None


def test_hikvision_explicit_lane_wins_over_mapping() -> None:
    read = hikvision.parse(fixture("hikvision_anpr.xml"), "application/xml", lane="out-1")
    assert read is not None and read.lane == "out-1"


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<EventNotificationAlert xmlns="http://www.hikvision.com/ver20/XMLSchema"><eventType>&lol2;</eventType>
</EventNotificationAlert>"""

EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<EventNotificationAlert xmlns="http://www.hikvision.com/ver20/XMLSchema"><eventType>&x;</eventType>
</EventNotificationAlert>"""


def _hik(replace: tuple[bytes, bytes] | None = None) -> bytes:
    body = fixture("hikvision_anpr.xml")
    return body.replace(*replace) if replace else body


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        pytest.param(_hik()[:400], "application/xml", "malformed or truncated", id="truncated"),
        pytest.param(BOMB, "application/xml", "DOCTYPE", id="entity-bomb"),
        pytest.param(EXTERNAL, "application/xml", "DOCTYPE", id="external-entity"),
        pytest.param(BOMB.decode().encode("utf-16"), "application/xml", "DOCTYPE", id="bomb-in-utf16"),
        pytest.param(_hik((b"<licensePlate>1ABC234</licensePlate>", b"")), None, "licensePlate", id="no-plate"),
        pytest.param(_hik((b"1ABC234", b"unknown")), None, "licensePlate", id="plate-unknown"),
        pytest.param(_hik((b">94<", b">140<")), None, "0..100", id="confidence-over-100"),
        pytest.param(_hik((b">94<", b">-3<")), None, "0..100", id="confidence-negative"),
        pytest.param(_hik((b">94<", b">high<")), None, "not a number", id="confidence-wrong-type"),
        pytest.param(_hik((b"<confidenceLevel>94</confidenceLevel>", b"")), None, "confidenceLevel", id="no-conf"),
        pytest.param(_hik((b"+01:00", b"")), None, "time zone", id="naive-datetime"),
        pytest.param(_hik((b"2026-11-21T15:30:01", b"yesterday")), None, "ISO 8601", id="bad-datetime"),
        pytest.param(_hik((b"<channelID>1</channelID>", b"<channelID>9</channelID>")), None, "lane", id="unmapped"),
        pytest.param(_hik((b"ver20/XMLSchema", b"evil/ns")), None, "EventNotificationAlert", id="foreign-ns"),
        pytest.param(_hik((b"<ANPR>", b"<X>")).replace(b"</ANPR>", b"</X>"), None, "ANPR", id="no-anpr-element"),
        pytest.param(_hik(), "application/json", "content type", id="wrong-content-type"),
        pytest.param(b"", None, "empty", id="empty"),
        pytest.param(_hik((b'encoding="UTF-8"', b'encoding="UTF-L"')), None, "encoding", id="unknown-encoding"),
        pytest.param(b"\xff\xfe\x00garbage", None, "malformed", id="binary-garbage"),
    ],
)
def test_hikvision_refuses(body: bytes, content_type: str | None, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        hikvision.parse(body, content_type, channel_lanes=CHANNELS)


def test_hikvision_refuses_an_oversized_body_before_parsing() -> None:
    body = fixture("hikvision_anpr.xml") + b" " * 2048
    with pytest.raises(SourceError, match="larger than"):
        hikvision.parse(body, "application/xml", channel_lanes=CHANNELS, max_bytes=1024)
    padded_xml = fixture("hikvision_anpr.xml").replace(b"<UUID>", b"<!--" + b"x" * 70_000 + b"--><UUID>")
    with pytest.raises(SourceError, match="XML part is larger"):
        hikvision.parse(padded_xml, "application/xml", channel_lanes=CHANNELS)


MULTIPART = fixture("hikvision_anpr_multipart.bin")


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        pytest.param(MULTIPART, "multipart/form-data", "boundary", id="no-boundary"),
        pytest.param(
            MULTIPART.replace(b"application/xml", b"image/jpeg").replace(b"anpr.xml", b"a"),
            HIK_MULTIPART_TYPE,
            "no XML part",
            id="no-xml-part",
        ),
        pytest.param(MULTIPART, "multipart/form-data; boundary=other", "no parts", id="wrong-boundary"),
    ],
)
def test_hikvision_refuses_bad_multipart(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        hikvision.parse(body, content_type, channel_lanes=CHANNELS)


# -- AXIS License Plate Verifier --------------------------------------------------------------


def test_axis_push_event() -> None:
    read = axis.parse(fixture("axis_lpv.json"), camera_lanes=AXIS_CAMERAS)
    assert read == PlateRead(
        lane="in-3",
        source="axis",
        camera="ACCC8EF0F4A5",
        text="1ABC234",
        country="BE",  # BEL (alpha-3) mapped to alpha-2
        confidence=0.873,
        observed_at=at(2026, 11, 21, 14, 30, 3, 250000),
    )


def test_axis_lost_event_gives_none() -> None:
    assert axis.parse(fixture("axis_lpv_lost.json"), camera_lanes=AXIS_CAMERAS) is None


def test_axis_datetime_fallback_with_offset_and_with_configured_zone() -> None:
    obj = fixture_json("axis_lpv.json")
    del obj["capture_timestamp"]
    read = axis.parse(json.dumps(obj).encode(), camera_lanes=AXIS_CAMERAS)
    assert read is not None and read.observed_at == at(2026, 11, 21, 14, 30, 3, 250000)
    obj["datetime"] = "20261121 153003250"
    brussels_winter = timezone(timedelta(hours=1))
    read = axis.parse(json.dumps(obj).encode(), camera_lanes=AXIS_CAMERAS, camera_tz=brussels_winter)
    assert read is not None and read.observed_at == at(2026, 11, 21, 14, 30, 3, 250000)
    with pytest.raises(SourceError, match="no offset"):
        axis.parse(json.dumps(obj).encode(), camera_lanes=AXIS_CAMERAS)


def test_axis_camera_without_roi_mapping_uses_the_camera_key() -> None:
    read = axis.parse(fixture("axis_lpv.json"), camera_lanes={"ACCC8EF0F4A5": "in-7"})
    assert read is not None and read.lane == "in-7"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(fixture("axis_lpv.json")[:200], "JSON", id="truncated"),
        pytest.param(b"[1, 2]", "JSON object", id="not-an-object"),
        pytest.param(_variant(AXIS, plateUTF8=None, plateUnicode=None, plateText=None), "plate text", id="no-plate"),
        pytest.param(_variant(AXIS, plateUTF8="", plateUnicode="", plateText=""), "plate text", id="empty-plate"),
        pytest.param(_variant(AXIS, plateUTF8=123), "plateUTF8", id="plate-wrong-type"),
        pytest.param(_variant(AXIS, plateConfidence="87.3"), "0..1", id="confidence-percent"),
        pytest.param(_variant(AXIS, plateConfidence=True), "not a number", id="confidence-bool"),
        pytest.param(_variant(AXIS, plateConfidence="NaN"), "0..1", id="confidence-nan"),
        pytest.param(_variant(AXIS, plateConfidence=None), "plateConfidence", id="no-confidence"),
        pytest.param(_variant(AXIS, carState="parked"), "carState", id="bad-state"),
        pytest.param(_variant(AXIS, capture_timestamp="-5"), "out of range", id="bad-timestamp"),
        pytest.param(_variant(AXIS, capture_timestamp=None, datetime="21/11/2026"), "datetime", id="bad-datetime"),
        pytest.param(_variant(AXIS, camera_info=None, sensorProviderID=None), "camera identity", id="no-camera"),
        pytest.param(_variant(AXIS, camera_info="ACCC"), "camera_info", id="camera-info-type"),
        pytest.param(_variant(AXIS, camera_info={"SerialNumber": "B8A44F000001"}), "lane", id="unmapped-camera"),
        pytest.param(b"{" + b" " * 70_000 + b"}", "larger than", id="oversized"),
    ],
)
def test_axis_refuses(body: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        axis.parse(body, camera_lanes=AXIS_CAMERAS)


# -- container OCR portal ---------------------------------------------------------------------


def test_ocr_portal_minimum_char_confidence_and_kept_per_char_list() -> None:
    read = ocr_portal.parse(fixture("ocr_portal.json"), portal_lanes={"P2-L3": "in-3"})
    assert read.number == "MSCU1234566"
    assert read.confidence == 0.62  # the weakest character, the '3'
    assert read.per_char is not None and len(read.per_char) == 11 and read.per_char[6] == 0.62
    assert (read.lane, read.camera, read.observed_at) == ("in-3", "ocr-portal-2", at(2026, 11, 21, 14, 30, 4, 120000))


def test_ocr_portal_confidence_is_the_lower_of_its_own_and_the_weakest_character() -> None:
    """A portal's overall 0.95 must not hide a character read at 0.62: the read stays doubtful (the
    service then looks for a valid look-alike twin before it takes the number). A lower overall one
    stands."""
    obj = fixture_json("ocr_portal.json")
    read = ocr_portal.parse(json.dumps(obj | {"confidence": 0.95}).encode(), lane="in-3")
    assert read.confidence == 0.62 and read.per_char is not None
    read = ocr_portal.parse(json.dumps(obj | {"confidence": 0.5}).encode(), lane="in-3")
    assert read.confidence == 0.5


def test_ocr_portal_without_lane_mapping_uses_the_portal_lane_id() -> None:
    assert ocr_portal.parse(fixture("ocr_portal.json")).lane == "P2-L3"


def _chars(*pairs: tuple[object, object]) -> list[dict[str, object]]:
    return [{"char": c, "confidence": v} for c, v in pairs]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(fixture("ocr_portal.json")[:100], "JSON", id="truncated"),
        pytest.param(_variant(OCR, containerNumber=None), "containerNumber", id="missing-number"),
        pytest.param(_variant(OCR, containerNumber=12345), "containerNumber", id="number-wrong-type"),
        pytest.param(_variant(OCR, characters=None), "neither", id="no-confidence-at-all"),
        pytest.param(_variant(OCR, characters=_chars(("M", 0.9))), "spell", id="chars-do-not-spell"),
        pytest.param(_variant(OCR, characters=[]), "non-empty", id="chars-empty"),
        pytest.param(_variant(OCR, characters=["M"]), "objects", id="chars-wrong-type"),
        pytest.param(_variant(OCR, characters=_chars(("MS", 0.9))), "one character", id="two-char-entry"),
        pytest.param(_variant(OCR, characters=_chars(*(("M", 99),) * 11)), "0..1", id="char-confidence-percent"),
        pytest.param(_variant(OCR, confidence=1.5), "0..1", id="overall-out-of-range"),
        pytest.param(_variant(OCR, timestamp="2026-11-21T14:30:04"), "time zone", id="naive-time"),
        pytest.param(_variant(OCR, laneId="P9-L1"), "not mapped", id="unmapped-lane"),
    ],
)
def test_ocr_portal_refuses(body: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        ocr_portal.parse(body, portal_lanes={"P2-L3": "in-3"})


# -- generic JSON webhook ---------------------------------------------------------------------


def test_generic_plate() -> None:
    read = generic_json.parse(fixture("generic_plate.json"))
    assert isinstance(read, PlateRead)
    assert (read.text, read.country, read.confidence, read.camera) == ("1ABC234", "BE", 0.93, "anpr-bridge-3")
    assert read.observed_at == at(2026, 11, 21, 14, 30, 1, 250000)


def test_generic_container_confidence_defaults_to_weakest_character() -> None:
    read = generic_json.parse(fixture("generic_container.json"))
    assert isinstance(read, ContainerRead)
    assert (read.number, read.confidence) == ("MSCU1234566", 0.62)


def test_generic_badge_normalises_scheme_and_card_uid() -> None:
    read = generic_json.parse(fixture("generic_badge.json"))
    assert isinstance(read, BadgeRead)
    assert (read.scheme, read.number, read.card_uid) == ("alfapass", "AP-100230", "04A22B1C5D6E80")


def test_generic_badge_with_card_uid_only() -> None:
    obj = fixture_json("generic_badge.json") | {"badge": {"card_uid": "04a22b1c"}}
    read = generic_json.parse(json.dumps(obj).encode())
    assert isinstance(read, BadgeRead) and read.number is None and read.card_uid == "04A22B1C"


def test_generic_face_match_and_image() -> None:
    match = generic_json.parse(fixture("generic_face_match.json"))
    assert isinstance(match, FaceRead) and match.match is not None
    assert (match.match.matched, match.match.score, match.image) == (True, 0.87, None)
    image = generic_json.parse(fixture("generic_face_image.json"))
    assert isinstance(image, FaceRead) and image.image is not None and image.image.startswith(b"\xff\xd8")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(fixture("generic_plate.json")[:60], "JSON", id="truncated"),
        pytest.param(b"\xff\xfe{}", "UTF-8", id="not-utf8"),
        pytest.param(b'"plate"', "JSON object", id="not-an-object"),
        pytest.param(_variant("generic_plate.json", lane=None), "lane", id="no-lane"),
        pytest.param(_variant("generic_plate.json", lane="in 3/x"), "lane", id="bad-lane"),
        pytest.param(_variant("generic_plate.json", kind="truck"), "kind", id="bad-kind"),
        pytest.param(_variant("generic_plate.json", plate=None), "'plate' object", id="missing-plate"),
        pytest.param(_variant("generic_plate.json", plate={"text": "", "confidence": 0.9}), "text", id="empty-plate"),
        pytest.param(_variant("generic_plate.json", plate={"text": 1234, "confidence": 0.9}), "text", id="plate-int"),
        pytest.param(_variant("generic_plate.json", plate={"text": "1ABC234", "confidence": "0.9"}), "number", id="s"),
        pytest.param(_variant("generic_plate.json", plate={"text": "1ABC234", "confidence": 1.01}), "0..1", id="hi"),
        pytest.param(_variant("generic_plate.json", plate={"text": "1AB@234", "confidence": 0.9}), "letters", id="ch"),
        pytest.param(_variant("generic_plate.json", plate={"text": "A" * 13, "confidence": 0.9}), "1 to 12", id="len"),
        pytest.param(_variant("generic_plate.json", observed_at=None), "observed_at", id="no-time"),
        pytest.param(_variant("generic_plate.json", observed_at="2026-11-21T15:30:01"), "time zone", id="naive"),
        pytest.param(_variant("generic_plate.json", observed_at=1795271401), "observed_at", id="time-int"),
        pytest.param(_variant("generic_container.json", container={"number": "MSCU1234566"}), "confidence", id="nc"),
        pytest.param(
            _variant("generic_container.json", container={"number": "MSCU1234566", "per_char": [0.9]}),
            "length",
            id="per-char-length",
        ),
        pytest.param(_variant("generic_badge.json", badge={"scheme": "alfapass"}), "number or a card UID", id="nob"),
        pytest.param(_variant("generic_badge.json", badge={"card_uid": "04A22B"}), "card UID", id="uid-3-bytes"),
        pytest.param(_variant("generic_badge.json", badge={"card_uid": "ZZA22B1C"}), "card UID", id="uid-not-hex"),
        pytest.param(_variant("generic_face_match.json", face={}), "exactly one", id="face-empty"),
        pytest.param(_variant("generic_face_match.json", face={"image": "!!notbase64"}), "base64", id="face-b64"),
        pytest.param(
            _variant("generic_face_match.json", face={"match": {"matched": "yes", "score": 0.8}}),
            "true or false",
            id="face-matched-type",
        ),
        pytest.param(
            _variant("generic_face_match.json", face={"match": {"matched": True, "score": 87}}),
            "0..1",
            id="face-score-percent",
        ),
    ],
)
def test_generic_refuses(body: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        generic_json.parse(body)


def test_generic_refuses_an_oversized_body() -> None:
    with pytest.raises(SourceError, match="larger than"):
        generic_json.parse(fixture("generic_plate.json"), max_bytes=50)


# -- MQTT topic mapping -----------------------------------------------------------------------


def test_mqtt_generic_topic_takes_lane_and_terminal_from_the_topic() -> None:
    obj = fixture_json("generic_badge.json")
    del obj["lane"], obj["kind"]
    result = mqtt.parse("quaygate/ANT-K913/in-3/badge", json.dumps(obj).encode())
    assert result is not None and result.terminal == "ANT-K913"
    assert isinstance(result.read, BadgeRead) and result.read.lane == "in-3"


def test_mqtt_vendor_relays_by_topic_suffix() -> None:
    hik = mqtt.parse("quaygate/ANT-K913/in-3/anpr/hikvision", fixture("hikvision_anpr.xml"))
    ax = mqtt.parse("quaygate/ANT-K913/in-3/anpr/axis", fixture("axis_lpv.json"))
    ocr = mqtt.parse("quaygate/ANT-K913/in-3/ocr/portal", fixture("ocr_portal.json"))
    assert hik is not None and ax is not None and ocr is not None
    assert isinstance(hik.read, PlateRead) and hik.read.source == "hikvision" and hik.read.lane == "in-3"
    assert isinstance(ax.read, PlateRead) and ax.read.source == "axis" and ax.read.lane == "in-3"
    assert isinstance(ocr.read, ContainerRead) and ocr.read.lane == "in-3"


def test_mqtt_vendor_heartbeat_gives_none() -> None:
    assert mqtt.parse("quaygate/ANT-K913/in-3/anpr/hikvision", fixture("hikvision_heartbeat.xml")) is None
    assert mqtt.parse("quaygate/ANT-K913/in-3/anpr/axis", fixture("axis_lpv_lost.json")) is None


@pytest.mark.parametrize(
    ("topic", "payload", "message"),
    [
        pytest.param("quaygate/ANT-K913/in-3/plate", fixture("generic_badge.json"), "kind", id="kind-mismatch"),
        pytest.param("quaygate/ANT-K913/in-4/plate", fixture("generic_plate.json"), "lane", id="lane-mismatch"),
        pytest.param("quaygate/ANT-K913/+/plate", fixture("generic_plate.json"), "wildcard", id="wildcard"),
        pytest.param("quaygate/ANT-K913/#", fixture("generic_plate.json"), "topic", id="hash"),
        pytest.param("quaygate//in-3/plate", fixture("generic_plate.json"), "empty", id="empty-segment"),
        pytest.param("other/ANT-K913/in-3/plate", fixture("generic_plate.json"), "prefix", id="wrong-prefix"),
        pytest.param("quaygate/ANT-K913/in-3/anpr/dahua", fixture("axis_lpv.json"), "vendor", id="unknown-vendor"),
        pytest.param("quaygate/ANT-K913/in-3/anpr/hikvision", BOMB, "DOCTYPE", id="relayed-bomb"),
        pytest.param("quaygate/ANT-K913/in-3/plate", b"{not json", "JSON", id="bad-json"),
    ],
)
def test_mqtt_refuses(topic: str, payload: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        mqtt.parse(topic, payload)


# -- shared read rules ------------------------------------------------------------------------


def test_country_codes_alpha3_mapped_unknown_dropped() -> None:
    assert [country_alpha2(c) for c in ("BEL", "nld", "BE", "XYZ", "1", None)] == ["BE", "NL", "BE", None, None, None]


def test_reads_refuse_naive_times_directly() -> None:
    with pytest.raises(SourceError, match="time zone"):
        PlateRead(
            lane="in-3", source="t", camera="c", text="1ABC234", country=None, confidence=0.9,
            observed_at=datetime(2026, 11, 21, 14, 30),
        )  # fmt: skip


def _mutations(body: bytes, seed: int, count: int = 150) -> list[bytes]:
    """Deterministic corruptions: cuts, flipped bytes, duplicated and deleted slices."""
    import random

    rng = random.Random(seed)
    out: list[bytes] = []
    for _ in range(count):
        data = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.choice(("cut", "flip", "dup", "del"))
            if op == "cut":
                data = data[:i]
            elif op == "flip":
                data[i] = rng.randrange(256)
            elif op == "dup":
                data[i:i] = data[i : i + rng.randint(1, 40)]
            else:
                del data[i : i + rng.randint(1, 40)]
            if not data:
                break
        out.append(bytes(data))
    return out


@pytest.mark.parametrize(
    ("name", "parse"),
    [
        ("hikvision_anpr.xml", lambda b: hikvision.parse(b, "application/xml", channel_lanes=CHANNELS)),
        ("hikvision_anpr_multipart.bin", lambda b: hikvision.parse(b, HIK_MULTIPART_TYPE, channel_lanes=CHANNELS)),
        ("axis_lpv.json", lambda b: axis.parse(b, camera_lanes=AXIS_CAMERAS)),
        ("ocr_portal.json", lambda b: ocr_portal.parse(b)),
        ("generic_container.json", lambda b: generic_json.parse(b)),
        ("generic_face_image.json", lambda b: generic_json.parse(b)),
        ("generic_badge.json", lambda b: mqtt.parse("quaygate/T1/in-3/badge", b)),
    ],
)
def test_corrupted_payloads_give_a_read_or_source_error_never_another_exception(name: str, parse) -> None:
    outcomes = {"ok": 0, "refused": 0}
    for body in _mutations(fixture(name), seed=len(name)):
        try:
            parse(body)
            outcomes["ok"] += 1
        except SourceError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0  # the corruptions did reach the guards


_NOW = datetime(2026, 11, 21, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FaceRead(lane="in-3", source="t", camera="c", image=b"x", match=FaceMatch(True, 0.9),
                          observed_at=_NOW), "either"),
        (lambda: FaceRead(lane="in-3", source="t", camera="c", image=b"", match=None, observed_at=_NOW), "empty"),
        (lambda: BadgeRead(lane="in-3", source="t", reader="r", scheme="Alfa Pass!", number="AP-1", card_uid=None,
                           observed_at=_NOW), "scheme"),
        (lambda: BadgeRead(lane="in-3", source="t", reader="r", scheme=None, number="AP/1", card_uid=None,
                           observed_at=_NOW), "badge number"),
        (lambda: ContainerRead(lane="in-3", source="t", camera="c", number="M" * 16, confidence=0.9, per_char=None,
                               observed_at=_NOW), "container number"),
        (lambda: PlateRead(lane="in-3", source="t", camera="c", text="1ABC234", country=None, confidence="0.9",
                           observed_at=_NOW), "not a number"),
        (lambda: PlateRead(lane="in-3", source="t", camera="c", text="1ABC234", country=None, confidence=0.9,
                           observed_at="2026-11-21T14:30:00Z"), "date-time"),
        (lambda: PlateRead(lane="in-3", source="", camera="c", text="1ABC234", country=None, confidence=0.9,
                           observed_at=_NOW), "source"),
    ],
)  # fmt: skip
def test_reads_guard_their_own_fields(build, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        build()


@pytest.mark.parametrize(("observed", "message"), [
    (_NOW - timedelta(seconds=31), "before the read arrived"),  # a buffer re-sent, a replay
    (_NOW - timedelta(days=3), "before the read arrived"),
    (_NOW + timedelta(seconds=6), "after the read arrived"),  # a clock ahead by more than the slack
])
def test_a_read_observed_long_before_or_after_it_arrived_is_not_fresh(observed: datetime, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        check_fresh(observed, _NOW)


def test_a_read_within_the_age_and_the_clock_slack_is_fresh() -> None:
    for observed in (_NOW - timedelta(seconds=30), _NOW, _NOW + timedelta(seconds=5)):
        check_fresh(observed, _NOW)
    check_fresh(_NOW - timedelta(minutes=5), _NOW, max_age=timedelta(minutes=10))


def test_generic_container_confidence_is_the_lower_of_its_own_and_the_weakest_character() -> None:
    body = _variant("generic_container.json", container={"number": "MSCU1234566", "confidence": 0.8,
                                                         "per_char": [0.9] * 11})  # fmt: skip
    read = generic_json.parse(body)
    assert isinstance(read, ContainerRead) and read.confidence == 0.8 and read.per_char == (0.9,) * 11
    body = _variant("generic_container.json", container={"number": "MSCU1234566", "confidence": 0.97,
                                                         "per_char": [0.99] * 10 + [0.2]})  # fmt: skip
    read = generic_json.parse(body)
    assert isinstance(read, ContainerRead) and read.confidence == 0.2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_variant("generic_container.json", container={"number": "MSCU1234566", "per_char": "0.9"}), "per_char"),
        (_variant("generic_face_match.json", face={"match": [True, 0.9]}), "not an object"),
    ],
)
def test_generic_refuses_more(body: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        generic_json.parse(body)


def test_axis_camera_identity_falls_back_to_the_sensor_name() -> None:
    read = axis.parse(_variant(AXIS, camera_info=None), camera_lanes={"gate2-in3-anpr": "in-3"})
    assert read is not None and read.camera == "gate2-in3-anpr"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_variant(AXIS, capture_timestamp=None, datetime="20261340 153003250+0100"), "valid date-time"),
        (_variant(AXIS, plateConfidence="high"), "not a number"),
    ],
)
def test_axis_refuses_more(body: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        axis.parse(body, camera_lanes=AXIS_CAMERAS)


def test_hikvision_accepts_xml_without_a_namespace_and_refuses_too_many_parts() -> None:
    bare = fixture("hikvision_anpr.xml").replace(b' xmlns="http://www.hikvision.com/ver20/XMLSchema"', b"")
    read = hikvision.parse(bare, "text/xml", channel_lanes=CHANNELS)
    assert read is not None and read.text == "1ABC234"
    boundary = b"----HikBoundary7MA4YWxkTrZu0gW"
    part = b"--" + boundary + b"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff\xd9\r\n"
    body = part * (hikvision.MAX_PARTS + 1) + b"--" + boundary + b"--\r\n"
    with pytest.raises(SourceError, match="too many parts"):
        hikvision.parse(body, HIK_MULTIPART_TYPE, channel_lanes=CHANNELS)


def test_mqtt_refuses_a_topic_that_is_not_text() -> None:
    with pytest.raises(SourceError, match="topic"):
        mqtt.parse(b"quaygate/T1/in-3/plate", fixture("generic_plate.json"))  # type: ignore[arg-type]


@pytest.mark.parametrize("observed", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"])
def test_an_observed_at_outside_the_calendar_in_utc_is_a_source_error(observed: str) -> None:
    """ISO 8601, and no UTC time: astimezone raised OverflowError, past the HTTP source's SourceError
    handling (a 500 to the device)."""
    with pytest.raises(SourceError, match="outside the calendar"):
        generic_json.parse_object({"kind": "plate", "lane": "in-3", "observed_at": observed,
                                   "plate": {"text": "1ABC123", "confidence": 0.9}})


# -- Review 109: hostile bodies refused before a library parser sees them -----------------------------

HIK_BOUNDARY = "----HikBoundary7MA4YWxkTrZu0gW"


def _hik_part(headers: bytes, body: bytes, boundary: str = HIK_BOUNDARY) -> bytes:
    return b"--" + boundary.encode() + b"\r\n" + headers + b"\r\n\r\n" + body + b"\r\n"


def _hik_close(boundary: str = HIK_BOUNDARY) -> bytes:
    return b"--" + boundary.encode() + b"--\r\n"


XML_HEADERS = b'Content-Disposition: form-data; name="anpr.xml"; filename="anpr.xml"\r\nContent-Type: application/xml'


def _nested(levels: int) -> bytes:
    """A part that is a multipart that is a multipart ... ``levels`` deep (email.parser recurses per level)."""
    inner = b"x"
    for i in range(levels, 0, -1):
        inner = (b"--n%d\r\nContent-Type: multipart/mixed; boundary=n%d\r\n\r\n" % (i, i + 1) + inner
                 + b"\r\n--n%d--\r\n" % i)
    return _hik_part(b"Content-Type: multipart/mixed; boundary=n1", inner) + _hik_close()


def hostile_multipart() -> list[Any]:
    """Multipart bodies any device bound to a lane could post (review 109), with the content type each
    is sent with; each took email.parser seconds to minutes, or raised RecursionError."""
    xml = fixture("hikvision_anpr.xml")
    return [
        pytest.param(_hik_part(b'Content-Disposition: form-data; name="anpr.xml"; ' + b"a=b;" * 40_000
                               + b"\r\nContent-Type: application/xml", xml) + _hik_close(),
                     HIK_MULTIPART_TYPE, "8192 bytes of headers", id="40000-header-parameters"),
        pytest.param(b"--b\r\n\r\nx\r\n" * 150_000 + b"--b--\r\n", "multipart/form-data; boundary=b",
                     "too many parts", id="150000-tiny-parts"),
        pytest.param(_nested(1200), HIK_MULTIPART_TYPE, "nests", id="nested-1200-levels"),
        pytest.param(_hik_part(b"Content-Type: message/rfc822", b"Content-Type: text/plain\r\n\r\nhi")
                     + _hik_close(), HIK_MULTIPART_TYPE, "nests", id="message-part"),
        pytest.param(_hik_part(b"Content-Type: (a comment)\r\n multipart/mixed; boundary=c", b"--c--")
                     + _hik_close(), HIK_MULTIPART_TYPE, "nests", id="nested-behind-a-folded-line"),
        pytest.param(_hik_part(XML_HEADERS + b"; x=--" + HIK_BOUNDARY.encode() + b"a=b;" * 1500, xml)
                     + _hik_close(), HIK_MULTIPART_TYPE, "inside a line", id="boundary-inside-a-header"),
        pytest.param(b"--" + HIK_BOUNDARY.encode() + b"X-Long: " + b"a=b;" * 5000 + b"\r\n" + XML_HEADERS
                     + b"\r\n\r\n" + xml + b"\r\n" + _hik_close(), HIK_MULTIPART_TYPE, "more after it",
                     id="text-after-the-boundary"),
        pytest.param(_hik_part(XML_HEADERS, xml) + _hik_close(),
                     "multipart/form-data; boundary=" + HIK_BOUNDARY + "; a=b" * 300, "content type",
                     id="long-content-type"),
        # Review 116: within review 109's bounds, yet seconds of the parser's CPU each.
        pytest.param(b"".join(_hik_part(b"Content-Type: image/jpeg;" + b"a=b;" * 2000, b"x") for _ in range(15))
                     + _hik_part(XML_HEADERS, xml) + _hik_close(), HIK_MULTIPART_TYPE, "more than 32 parameters",
                     id="15-parts-of-2000-content-type-parameters"),
        pytest.param(_hik_part(b"X-A: b" + b";" * 33, b"x") + _hik_part(XML_HEADERS, xml) + _hik_close(),
                     HIK_MULTIPART_TYPE, "more than 32 parameters", id="33-parameters"),
        pytest.param(_hik_part(b"Content-Type: image/jpeg", b"\n" * (4 * 1024 * 1024 - 2048))
                     + _hik_part(XML_HEADERS, xml) + _hik_close(), HIK_MULTIPART_TYPE, "lines",
                     id="4-mib-of-newlines"),
        pytest.param(_hik_part(XML_HEADERS, xml) + _hik_close(), HIK_MULTIPART_TYPE + "; a=b" * 33,
                     "more than 32 parameters", id="content-type-of-33-parameters"),
    ]


@pytest.mark.parametrize(("body", "content_type", "message"), hostile_multipart())
def test_hikvision_refuses_a_hostile_multipart_before_email_parser_sees_it(
        body: bytes, content_type: str, message: str, parsed_bodies: list[int]) -> None:
    """hikvision.py module docstring: the scan refuses these, and the body never reaches the parser
    (its only call is the one that reads the boundary off the short header)."""
    parsed = parsed_bodies
    assert len(body) <= hikvision.MAX_BYTES  # within the size cap: the scan is what refuses it
    with pytest.raises(SourceError, match=message) as refused:
        hikvision.parse(body, content_type, lane="in-3")
    assert "refused before parsing" in str(refused.value) or message == "content type"
    assert all(size < 2048 for size in parsed), parsed  # the header only, never the body


def test_hikvision_multipart_as_cameras_send_it_still_parses() -> None:
    """What the scan lets through: the fixture, and the same with LF line endings, a preamble, transport
    padding after the boundaries, a folded header and a JPEG part, up to ``MAX_PARTS`` parts."""
    xml = fixture("hikvision_anpr.xml")
    jpeg = _hik_part(b'Content-Disposition: form-data; name="detectionPicture.jpg";\r\n filename="d.jpg"\r\n'
                     b"Content-Type: image/jpeg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 64 + b"\xff\xd9")
    body = (b"a preamble nobody reads\r\n" + _hik_part(XML_HEADERS, xml).replace(b"\r\n", b" \t\r\n", 1)
            + jpeg * (hikvision.MAX_PARTS - 1) + _hik_close() + b"an epilogue")
    for variant in (body, body.replace(b"\r\n", b"\n")):
        read = hikvision.parse(variant, HIK_MULTIPART_TYPE, channel_lanes=CHANNELS)
        assert read is not None and (read.text, read.lane) == ("1ABC234", "in-3")


def test_hikvision_multipart_with_pictures_of_random_bytes_up_to_the_size_cap_still_parses() -> None:
    """The line cap (review 116) leaves room for real JPEGs: entropy-coded bytes hold a line break by
    chance (some 32 000 in 4 MiB), under ``MAX_LINES``."""
    import random

    xml = fixture("hikvision_anpr.xml")
    noise = random.Random(116).randbytes(2 * 1024 * 1024 - 1024)
    body = (_hik_part(XML_HEADERS, xml) + _hik_part(b"Content-Type: image/jpeg", noise)
            + _hik_part(b"Content-Type: image/jpeg", noise) + _hik_close())
    assert len(body) <= hikvision.MAX_BYTES
    read = hikvision.parse(body, HIK_MULTIPART_TYPE, channel_lanes=CHANNELS)
    assert read is not None and read.text == "1ABC234"


def test_hikvision_turns_the_email_packages_own_errors_into_source_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """STYLE.md #7: with the scan off, a nested multipart makes email.parser raise RecursionError; the
    wrapper still answers SourceError (a 400), never that (a 500)."""
    monkeypatch.setattr(hikvision, "_refuse_hostile_multipart", lambda body, boundary: None)
    with pytest.raises(SourceError, match="malformed"):
        hikvision.parse(_nested(1200), HIK_MULTIPART_TYPE, lane="in-3")


def _plate_with_confidence(digits: int) -> bytes:
    return (b'{"kind": "plate", "lane": "in-3", "observed_at": "2026-11-21T14:30:03Z", '
            b'"plate": {"text": "1ABC234", "country": "BE", "confidence": 1%s}}' % (b"0" * (digits - 1)))


@pytest.mark.parametrize("digits", [5000, 400])
def test_a_number_of_thousands_of_digits_is_a_source_error(digits: int) -> None:
    """5000 digits: json.loads raises a plain ValueError (Python's int digits limit), 400: float() raises
    OverflowError; both went past SourceError (review 109: over MQTT that ended paho's thread)."""
    body = _plate_with_confidence(digits)
    with pytest.raises(SourceError, match="JSON" if digits > 4300 else "hold"):
        generic_json.parse(body, lane="in-3")
    with pytest.raises(SourceError):
        mqtt.parse("quaygate/T1/in-3/plate", body)
    if digits > 4300:  # a field Axis sends that we never read: json.loads alone raises
        axis_body = fixture("axis_lpv.json").replace(b'"lat": 51.2783', b'"lat": 5%s' % (b"1" * digits))
        with pytest.raises(SourceError, match="JSON"):
            axis.parse(axis_body, camera_lanes=AXIS_CAMERAS)

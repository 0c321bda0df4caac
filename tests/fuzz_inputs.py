"""Bad inputs for the API fuzz test (tests/test_api_fuzz.py); no tests here.

A small, seeded, schema-driven generator: it reads a JSON Schema from the published OpenAPI document
and says, for every field, what a wrong value of that field looks like (the wrong type, null, empty,
huge, control characters, a lone surrogate, out-of-range numbers, impossible dates ...). A case is
named by a stable id and its random choices come from ``rng(case_id)``: a failing case is reproduced by
its id alone, with no hypothesis database.

Bodies are rendered by ``render`` rather than ``json.dumps`` so that a case can hold what ``json.dumps``
cannot write: duplicate keys (``Dup``) and verbatim JSON text (``Raw``: ``NaN``, ``1e400``, a 5 000-digit
integer, a ``"\\ud800"`` escape, 1 000 levels of nesting).
"""

from __future__ import annotations

import copy
import json
import random
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

MISSING = object()  # the field is left out


def rng(case_id: str) -> random.Random:
    """The case's own generator: the same id gives the same choices, on any machine and in any order."""
    return random.Random(zlib.crc32(case_id.encode()))


class Raw(str):
    """JSON text put into a body as it is."""


@dataclass(frozen=True)
class Dup:
    """An object with repeated keys, in this order (RFC 8259 §4: names SHOULD be unique)."""

    pairs: tuple[tuple[str, Any], ...]


def render(value: Any) -> str:
    """JSON text of ``value`` with ``Raw`` and ``Dup`` honoured (ASCII only: escapes stay escapes)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Dup):
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


def deep(levels: int = 1000, *, kind: str = "array") -> Raw:
    """``levels`` nested arrays (``[[[...]]]``) or objects (``{"a":{"a":...}}``)."""
    if kind == "array":
        return Raw("[" * levels + "]" * levels)
    return Raw('{"a":' * levels + "{}" + "}" * levels)


def big_array(items: int = 100_000) -> Raw:
    return Raw("[" + ",".join(["0"] * items) + "]")


HUGE = 1024 * 1024  # a 1 MiB string: the default body limit, so the body around it is over it

# ---- the JSON Schema of the OpenAPI document ------------------------------------------------------


class Schemas:
    """``$ref`` resolution and the shape of a schema: its type, its enum, its format, nullable or not."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def resolve(self, schema: dict[str, Any] | None) -> dict[str, Any]:
        schema = schema or {}
        seen = 0
        while "$ref" in schema and seen < 20:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = {**self.spec["components"]["schemas"][name], **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def shape(self, schema: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
        """The schema without its ``anyOf [X, null]`` wrapping, and whether null is allowed."""
        schema = self.resolve(schema)
        options = schema.get("anyOf") or schema.get("oneOf")
        if options:
            kept = [self.resolve(o) for o in options if self.resolve(o).get("type") != "null"]
            nullable = len(kept) < len(options)
            inner = kept[0] if kept else {}
            merged = {**inner, **{k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}}
            return merged, nullable
        return schema, schema.get("type") == "null"

    def fields(self, schema: dict[str, Any] | None, prefix: tuple[Any, ...] = (),
               depth: int = 0) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], bool, bool]]:
        """Every field under ``schema``: (path, its schema unwrapped, required, nullable), objects and
        the first item of arrays walked into."""
        inner, _ = self.shape(schema)
        if depth > 4:
            return
        required = set(inner.get("required", ()))
        for name, sub in (inner.get("properties") or {}).items():
            sub_inner, nullable = self.shape(sub)
            path = (*prefix, name)
            yield path, sub_inner, name in required, nullable
            if sub_inner.get("type") == "object" or "properties" in sub_inner:
                yield from self.fields(sub_inner, path, depth + 1)
            elif sub_inner.get("type") == "array":
                items, _ = self.shape(sub_inner.get("items"))
                if items.get("properties"):
                    yield from self.fields(items, (*path, 0), depth + 1)


def shape_of(value: Any) -> dict[str, Any]:
    """A schema read off a valid example, for bodies the OpenAPI document leaves open (``object``)."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array", "items": shape_of(value[0]) if value else {}}
    if isinstance(value, dict):
        return {"type": "object", "properties": {k: shape_of(v) for k, v in value.items()}}
    return {}


def example_fields(example: dict[str, Any], prefix: tuple[Any, ...] = ()
                   ) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], bool, bool]]:
    """``Schemas.fields`` for a valid example: every key required, none nullable."""
    for name, value in example.items():
        path = (*prefix, name)
        yield path, shape_of(value), True, False
        if isinstance(value, dict):
            yield from example_fields(value, path)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            yield from example_fields(value[0], (*path, 0))


# ---- wrong values, by the kind of field -----------------------------------------------------------

WRONG_TYPE: dict[str, list[Any]] = {
    "string": [12345, True, [], {}, 1.5],
    "integer": ["12", True, [], {}, "abc"],
    "number": ["0.5", True, [], {}],
    "boolean": ["true", 1, "yes", [], {}],
    "array": ["x", {}, 1, True],
    "object": [[], "x", 1, True],
}

STRINGS: dict[str, Any] = {
    "empty": "",
    "blank": " \t\n ",
    "nul": "\x00",
    "control": "a\x00b\x01c\x1b[31m\x7f\x85",
    "lone_surrogate": Raw('"x\\ud800y"'),
    "reversed_surrogates": Raw('"\\udc00\\ud800"'),
    "bidi": "\u202eevil\u202c\u200b",
    "non_bmp": "\U0010ffff\U0001f6a2",
    "long_10k": "y" * 10_000,
    "sql": "' OR '1'='1' --;",
    "format": "%s%n{0}${jndi:ldap://x}",
    "path": "../../../../etc/passwd",
    "newline_header": "a\r\nSet-Cookie: x=y",
}

INTEGERS: dict[str, Any] = {
    "negative": -1,
    "zero": 0,
    "huge": 10**30,
    "int64_over": 2**63,
    "int64_under": -(2**63) - 1,
    "float": 1.5,
    "float_integral": 2.0,
    "exponent": Raw("1e3"),
    "overflow_float": Raw("1e400"),
    "digits_5000": Raw("9" * 5000),
    "nan": Raw("NaN"),
    "infinity": Raw("Infinity"),
    "minus_zero": Raw("-0"),
}

NUMBERS: dict[str, Any] = {
    "nan": Raw("NaN"),
    "infinity": Raw("Infinity"),
    "minus_infinity": Raw("-Infinity"),
    "overflow": Raw("1e400"),
    "underflow": Raw("1e-400"),
    "negative": -1.0,
    "huge": 1e308,
    "huge_int": 10**30,
    "digits_5000": Raw("9" * 5000),
    "denormal": 5e-324,
}

BOOLEANS: dict[str, Any] = {"int": 1, "string": "false", "null_string": "null"}

# RFC 3339 times a parser may mishandle: year 0, the calendar's edges with offsets that push the UTC
# instant outside it, leap seconds, impossible days, no offset, odd offsets and forms.
DATES: dict[str, Any] = {
    "year_0": "0000-01-01T00:00:00Z",
    "year_1_plus14": "0001-01-01T00:00:00+14:00",
    "year_9999_z": "9999-12-31T23:59:59Z",
    "year_9999_minus14": "9999-12-31T23:59:59-14:00",
    "year_9999_plus14": "9999-12-31T23:59:59+14:00",
    "year_9999_micro_minus1m": "9999-12-31T23:59:59.999999-00:01",
    "year_10000": "10000-01-01T00:00:00Z",
    "year_negative": "-0001-01-01T00:00:00Z",
    "leap_second": "2016-12-31T23:59:60Z",
    "leap_second_offset": "2016-12-31T23:59:60+01:00",
    "feb_30": "2026-02-30T00:00:00Z",
    "hour_24": "2026-01-01T24:00:00Z",
    "no_offset": "2026-01-01T00:00:00",
    "offset_24": "2026-01-01T00:00:00+24:00",
    "offset_seconds": "2026-01-01T00:00:00+01:00:30",
    "date_only": "2026-01-01",
    "week_date": "2026-W01-1T00:00:00Z",
    "long_fraction": "2026-01-01T00:00:00.12345678901234567890Z",
    "unix_number": 1_767_225_600,
    "unix_huge": 10**20,
    "unix_negative": -10**12,
    "unix_float": 1.7e9,
    "unix_string": "1767225600",
    "words": "tomorrow",
}

UUIDS: dict[str, Any] = {
    "garbage": "not-a-uuid",
    "nil": "00000000-0000-0000-0000-000000000000",
    "max": "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "braces": "{12345678-1234-5678-1234-567812345678}",
    "urn": "urn:uuid:12345678-1234-5678-1234-567812345678",
    "hex32": "12345678123456781234567812345678",
    "short": "1234",
    "int": 12345,
    "unknown": "6f0d2f58-0d7e-4c1e-9d3f-2b8e8f3f1a01",
}


def enum_wrongs(values: list[Any]) -> dict[str, Any]:
    first = str(values[0]) if values else "x"
    return {"unknown": "no_such_value", "upper": first.upper() if first.upper() != first else first + "X",
            "trailing_space": first + " ", "with_nul": first + "\x00", "empty": ""}


def wrongs(schema: dict[str, Any]) -> dict[str, Any]:
    """The wrong values to try in a field of this schema (beyond the wrong types and null)."""
    kind = schema.get("type")
    if "enum" in schema:
        return enum_wrongs(list(schema["enum"]))
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return {**DATES, "empty": ""}
        if fmt == "uuid":
            return UUIDS
        return STRINGS
    if kind == "integer":
        return INTEGERS
    if kind == "number":
        return NUMBERS
    if kind == "boolean":
        return BOOLEANS
    if kind == "array":
        return {"empty": [], "nulls": [None, None], "nested": [[[]]], "mixed": [1, "a", None, {}, []],
                "1k_strings": ["x"] * 1000}
    if kind == "object" or "properties" in schema:
        return {"empty": {}, "unknown_keys": {"\x00": 1, "": None, "a" * 1000: "b"}}
    return STRINGS


def core(schema: dict[str, Any]) -> tuple[str, ...]:
    """The wrong values every field of this kind gets (``wrongs`` names them); more are sampled."""
    kind = schema.get("type")
    if "enum" in schema:
        return ("unknown", "with_nul")
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return ("year_0", "year_9999_minus14", "year_9999_plus14", "leap_second")
        if fmt == "uuid":
            return ("garbage", "unknown")
        return ("empty", "control", "lone_surrogate")
    return {"integer": ("huge", "negative", "float", "int64_over"), "number": ("nan", "overflow", "negative"),
            "boolean": ("int", "string"), "array": ("empty", "mixed"), "object": ("empty",)}.get(kind or "", ())


def wrong_types(schema: dict[str, Any]) -> list[Any]:
    kind = schema.get("type") or ("object" if "properties" in schema else "string")
    return WRONG_TYPE.get(kind, WRONG_TYPE["string"])


# ---- putting a value into a body ------------------------------------------------------------------


def put(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``body`` with the field at ``path`` set to ``value`` (or removed: ``MISSING``); the
    objects on the way are made when the body lacks them."""
    out = copy.deepcopy(body)
    if not path:
        return value
    node = out
    for step, nxt in zip(path[:-1], path[1:], strict=True):
        if isinstance(node, list):
            while len(node) <= step:
                node.append({} if not isinstance(nxt, int) else [])
            node = node[step]
            continue
        if not isinstance(node.get(step), dict | list):
            node[step] = [] if isinstance(nxt, int) else {}
        node = node[step]
    last = path[-1]
    if isinstance(node, list):
        while len(node) <= last:
            node.append(None)
        if value is MISSING:
            node.pop(last)
        else:
            node[last] = value
    elif value is MISSING:
        node.pop(last, None)
    else:
        node[last] = value
    return out


def get(body: Any, path: tuple[Any, ...]) -> Any:
    node = body
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return node


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "(body)"


def pick(r: random.Random, pool: Any, k: int, *, besides: tuple[str, ...] = ()) -> list[str]:
    """``k`` names of ``pool`` (sorted, so the same seed picks the same), none of ``besides``."""
    keys = sorted(name for name in pool if name not in besides)
    return sorted(r.sample(keys, min(k, len(keys))))


# ---- forms, query strings and paths --------------------------------------------------------------

# Values for a form field or a query parameter: a ``Raw`` one is already percent-encoded.
FORM_VALUES: dict[str, Any] = {
    "empty": "", "nul": Raw("%00"), "control": Raw("%01%1B%7F"), "invalid_utf8": Raw("%FF%FE"),
    "surrogate_utf8": Raw("%ED%A0%80"), "overlong_utf8": Raw("%C0%AF"), "long_10k": "y" * 10_000, "huge": "x" * HUGE,
    "unicode": "é🚢\u202e", "repeated": ["a", "b"], "plus_space": Raw("a+b+"), "lone_percent": Raw("%"),
    "bad_percent": Raw("%zz"), "json": '{"a":[1]}', "crlf": "a\r\nSet-Cookie: x=y", "sql": "' OR 1=1--",
}
FORM_CORE = ("empty", "nul", "invalid_utf8")
# A request line is at most 64 KiB in httpx (16 KiB in h11, uvicorn's parser): the longest query value.
QUERY_STRINGS: dict[str, Any] = {**{k: v for k, v in FORM_VALUES.items() if k != "huge"}, "huge_16k": "x" * 16_000}
QUERY_INTS: dict[str, Any] = {
    "alpha": "abc", "float": "1.5", "negative": "-1", "zero": "0", "huge": "9" * 30, "digits_5000": "9" * 5000,
    "exponent": "1e3", "hex": "0x10", "nan": "NaN", "infinity": "inf", "underscore": "1_000", "spaces": " 1 ",
    "unicode_digits": "١٢", "min64": str(-(2**63) - 1), "nul": Raw("%00"), "repeated": ["1", "2"],
}
# Path parameter values, as they go into the URL (percent-encoded where they need it).
PATH_VALUES: dict[str, str] = {
    "garbage": "not-a-uuid", "nul": "%00", "invalid_utf8": "%FF%FE", "huge": "a" * 10_000,
    "unicode": "%C3%A9%F0%9F%9A%A2", "slash": "a%2Fb", "nil_uuid": "00000000-0000-0000-0000-000000000000",
    "int": "-12345", "dotdot": "%2E%2E", "space": "%20x%20", "sql": "1%27%20OR%20%271%27%3D%271",
    "crlf": "%0D%0ASet-Cookie:%20x=y", "surrogate_utf8": "%ED%A0%80", "semicolon": "x;y=z",
}
PATH_CORE = ("garbage", "nul", "invalid_utf8", "huge", "unknown")  # "unknown": a well-formed id of nothing


def encode_pairs(data: dict[str, Any]) -> str:
    """``application/x-www-form-urlencoded`` (or a query string) of ``data``: a ``Raw`` value goes as it is,
    a list repeats its name, anything else is percent-encoded as UTF-8 (a lone surrogate as the bytes
    'surrogatepass' writes, which are no UTF-8)."""
    out = []
    for name, value in data.items():
        for one in value if isinstance(value, list) else [value]:
            if one is MISSING:
                continue
            if isinstance(one, Raw):
                text = str(one)
            else:
                raw = one if isinstance(one, str) else str(one).lower() if isinstance(one, bool) else json.dumps(one)
                text = urllib.parse.quote(raw.encode("utf-8", "surrogatepass"), safe="")
            out.append(f"{urllib.parse.quote(name, safe='')}={text}")
    return "&".join(out)


def form(data: dict[str, Any]) -> tuple[bytes, str]:
    return encode_pairs(data).encode("ascii"), "application/x-www-form-urlencoded"


def json_body(body: Any) -> tuple[bytes, str]:
    return render(body).encode("utf-8", "surrogatepass"), "application/json"


# ---- a whole body gone wrong ----------------------------------------------------------------------

BODY_ALWAYS = ("absent", "not_json", "invalid_utf8", "array", "null", "deep_array", "big_array", "dup_keys",
               "unknown_field", "text_plain", "padded_1mib", "huge_string")
BODY_SAMPLED = ("empty", "truncated", "latin1", "utf16", "bom", "string", "number", "deep_object", "deep_in_field",
                "big_array_in_field", "many_keys", "multipart", "no_ctype", "bad_ctype", "form_ctype",
                "dup_keys_reversed", "nan_top", "trailing_garbage", "two_documents", "huge_number_top")
FORM_ALWAYS = ("absent", "json_ctype", "invalid_utf8", "dup_param", "unknown_param", "padded_1mib", "text_plain")
FORM_SAMPLED = ("empty", "garbage", "brackets", "many_params", "no_ctype", "multipart", "only_ampersands",
                "nul_name", "huge_name")

Fields = list[tuple[tuple[Any, ...], dict[str, Any], bool, bool]]
Encoder = Callable[[Any], tuple[bytes, str]]


def body_variant(kind: str, body: Any, encode: Encoder, fields: Fields, r: random.Random
                 ) -> tuple[bytes | None, dict[str, str]]:
    """The bytes and Content-Type of a valid ``body`` spoilt as a whole by ``kind`` (``encode`` puts a
    body on the wire: JSON, a form, a signed feed)."""
    valid, ctype = encode(body)
    same = {"Content-Type": ctype}
    target = r.choice(fields)[0] if fields else ("fuzz",)
    strings = [f[0] for f in fields if f[1].get("type") == "string"] or [target]

    def marked(marker: bytes) -> bytes:  # the valid body with raw bytes inside its first string value
        path = next((f[0] for f in fields if isinstance(get(body, f[0]), str)), None)
        return marker + valid if path is None else encode(put(body, path, "FUZZMARK"))[0].replace(b"FUZZMARK", marker)

    def dup(last_wrong: bool) -> bytes:  # the top-level key towards ``target`` twice: valid and wrong
        if not isinstance(body, dict) or not body:
            return encode(Dup((("a", 1), ("a", "x"))))[0]
        key = target[0] if target[0] in body else next(iter(body))
        wrong = r.choice([None, 12345, "x\x00", [], {}])
        pairs = [(k, v) for k, v in body.items() if k != key]
        twice = [(key, body[key]), (key, wrong)] if last_wrong else [(key, wrong), (key, body[key])]
        return encode(Dup(tuple(pairs + twice)))[0]

    variants: dict[str, Callable[[], tuple[bytes | None, dict[str, str]]]] = {
        "absent": lambda: (None, {}),
        "empty": lambda: (b"", same),
        "not_json": lambda: (b"{not json", same),
        "garbage": lambda: (bytes(r.randrange(256) for _ in range(256)), same),
        "truncated": lambda: (valid[: len(valid) // 2], same),
        "invalid_utf8": lambda: (marked(b"\xff\xfe\xc0\xaf"), same),
        "latin1": lambda: (marked("é".encode("latin-1")), {"Content-Type": "application/json; charset=iso-8859-1"}),
        "utf16": lambda: (render(body).encode("utf-16"), same),
        "bom": lambda: (b"\xef\xbb\xbf" + valid, same),
        "array": lambda: (b"[]", same),
        "null": lambda: (b"null", same),
        "string": lambda: (b'"x"', same),
        "number": lambda: (b"12", same),
        "nan_top": lambda: (b"NaN", same),
        "huge_number_top": lambda: (b"9" * 5000, same),
        "deep_array": lambda: (deep(1000).encode(), same),
        "deep_object": lambda: (deep(1000, kind="object").encode(), same),
        "deep_in_field": lambda: (encode(put(body, target, deep(1000)))[0], same),
        "big_array": lambda: (big_array().encode(), same),
        "big_array_in_field": lambda: (encode(put(body, target, big_array()))[0], same),
        "many_keys": lambda: (encode({**body, **{f"k{i}": i for i in range(10_000)}})[0], same),
        "dup_keys": lambda: (dup(last_wrong=True), same),
        "dup_keys_reversed": lambda: (dup(last_wrong=False), same),
        "unknown_field": lambda: (encode({**body, "fuzz_unknown": "x", "__proto__": {"admin": True}})[0], same),
        "huge_string": lambda: (encode(put(body, r.choice(strings), "x" * HUGE))[0], same),
        "text_plain": lambda: (valid, {"Content-Type": "text/plain"}),
        "form_ctype": lambda: (valid, {"Content-Type": "application/x-www-form-urlencoded"}),
        "json_ctype": lambda: (json_body(body)[0], {"Content-Type": "application/json"}),
        "no_ctype": lambda: (valid, {}),
        "bad_ctype": lambda: (valid, {"Content-Type": "application/json; charset=utf-42; ;;=="}),
        "multipart": lambda: (b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n' + valid + b"\r\n--b--\r\n",
                              {"Content-Type": "multipart/form-data; boundary=b"}),
        "padded_1mib": lambda: (valid + (b"&" if ctype.endswith("urlencoded") else b" ") * (HUGE + 1), same),
        "trailing_garbage": lambda: (valid + b"}garbage", same),
        "two_documents": lambda: (valid + valid, same),
        # forms
        "dup_param": lambda: (valid + b"&" + valid.split(b"&")[0] + b"x", same),
        "unknown_param": lambda: (valid + b"&fuzz_unknown=1&__proto__=x", same),
        "brackets": lambda: (valid + b"&a" + b"[b]" * 1000 + b"=1", same),
        "many_params": lambda: (valid + b"".join(b"&k%d=%d" % (i, i) for i in range(10_000)), same),
        "only_ampersands": lambda: (b"&&&=&=&", same),
        "nul_name": lambda: (valid + b"&%00=%00", same),
        "huge_name": lambda: (valid + b"&" + b"n" * 100_000 + b"=1", same),
    }
    return variants[kind]()

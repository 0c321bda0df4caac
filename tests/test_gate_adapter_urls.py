"""The adapter's URL settings (config.py rule 11, review 173): a URL the adapter cannot use is refused when
the settings are read (``--check`` says so, exit 2, naming the key), never found out mid-shift; and an
HTTP barrier that fails in any way on an "open" is a barrier that did not hear it (sinks.py rule 6), so
the lane latches instead of the lane's thread dying. The controller is a real local HTTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gate_adapters.adapter import main as adapter_main
from gate_adapters.runtime.config import ConfigError, parse
from gate_adapters.runtime.sinks import BarrierCommand, BarrierUnreachable, Command, HttpBarrier

from .factories import TERMINAL
from .test_gate_barrier_auth import Controller, _doc, controller  # noqa: F401 - the fixture, by name

OPEN = Command("in-1", BarrierCommand.OPEN, "d-1", call_officer=False)

# Each passed urlsplit (or failed it with a traceback) and was found out by httpx only, at the first command.
BAD_URLS = [
    "http://127.0.0.1:abc/barrier",  # a port that is no number
    "http://[::1/barrier",  # an IPv6 address not closed
    "http://[zz]/barrier",  # no IPv6 address
    "http://10.0.0.5:99999/barrier",  # a port out of range
    "http://10.0.0.5:0/barrier",  # port 0
    "http://1.2.3.999/barrier",  # no IPv4 address
    "http://exa mple.lan/barrier",  # a space in the host
    "http://:8080/barrier",  # no host
    "http://-barrier-.lan/b",  # no host name
    "http://barrier.lan/b\x00",  # a control character
    "ftp://barrier.lan/b",  # not http(s)
]


def _toml(tmp_path: Path, *, base_url: str, barrier_url: str) -> Path:
    config = tmp_path / "gate-adapter.toml"
    (tmp_path / "s").write_text("secret")
    (tmp_path / "s").chmod(0o600)
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "o.sqlite3"\ndev = true\n[service]\n'
                      f'base_url = "{base_url}"\n[auth]\nclient_id = "g"\nclient_secret_file = "s"\n[http]\n'
                      f'[[lanes]]\nlane = "in-1"\n'
                      f'barrier = {{ kind = "http", url = "{barrier_url}" }}\n')
    return config


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("dev", [False, True])
def test_a_barrier_url_the_adapter_cannot_use_is_refused_when_the_settings_are_read(
        tmp_path: Path, url: str, dev: bool) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(_doc(tmp_path, {"url": url, "token_file": "barrier.token"}, dev=dev), base=tmp_path)
    assert exc.value.key == "lanes[0].barrier.url", str(exc.value)


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("key", ["base_url", "issuer"])
def test_a_service_url_the_adapter_cannot_use_is_refused(tmp_path: Path, url: str, key: str) -> None:
    doc = _doc(tmp_path, {"url": "https://barrier.lan/b", "token_file": "barrier.token"}, dev=True)
    doc["service"] = {"base_url": "https://quaygate.example.eu", key: url}
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == f"service.{key}", str(exc.value)


def test_check_says_what_is_wrong_with_a_url_in_a_plain_message_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the barrier's port 'abc' printed "settings OK" (exit 0); an IPv6 address not closed in
    service.base_url was a ValueError traceback (exit 1)."""
    good = "http://127.0.0.1:8000"
    config = _toml(tmp_path, base_url=good, barrier_url="http://127.0.0.1:abc/barrier")
    assert adapter_main(["--config", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gate-adapter: bad settings: lanes[0].barrier.url: ") and "port" in err, err
    config = _toml(tmp_path, base_url="http://[::1/barrier", barrier_url="http://127.0.0.1:8001/barrier")
    assert adapter_main(["--config", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gate-adapter: bad settings: service.base_url: ") and "Traceback" not in err, err
    config = _toml(tmp_path, base_url="http://[::1]:8000", barrier_url="http://[::1]:8001/barrier")
    assert adapter_main(["--config", str(config), "--check"]) == 0, capsys.readouterr().err  # IPv6, well written


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://quaygate.example.eu/", "http://[::1]:8089",
                                 "https://gate_1.k1700.lan:8443/quaygate", "http://localhost/"])
def test_a_good_url_is_taken_as_it_was(tmp_path: Path, url: str) -> None:
    doc = _doc(tmp_path, {"url": url + "/barrier" if not url.endswith("/") else url + "barrier",
                          "token_file": "barrier.token"}, dev=True)
    doc["service"] = {"base_url": url}
    settings = parse(doc, base=tmp_path)
    assert settings.service.base_url == url.rstrip("/")


def test_an_http_barrier_that_fails_in_any_way_did_not_hear_the_open(controller: Controller) -> None:  # noqa: F811
    """Before: httpx.InvalidURL (not an httpx.HTTPError) went past the sink's error handling and out of the
    lane, after the allow was committed: no latch, for every truck. Now any failure is rule 6's."""
    sink = HttpBarrier("http://127.0.0.1:abc/barrier", timeout=0.5)  # what the settings refuse now
    with pytest.raises(BarrierUnreachable) as exc:
        sink.send(OPEN)
    assert exc.value.command is OPEN and exc.value.reason == "InvalidURL"

    class Broken:
        def post(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug below the sink")

    with pytest.raises(BarrierUnreachable):
        HttpBarrier(controller.url, http=Broken()).send(OPEN)  # type: ignore[arg-type]
    assert HttpBarrier(controller.url, timeout=2).send(OPEN) is OPEN  # the controller itself hears it
    assert controller.next()["body"]["command"] == "open"


# -- no secret in a URL (review 173, finding 4) -----------------------------------------------------------

SECRET_URLS = [
    "https://admin:S3cret@10.0.0.5/b",  # a user and password: httpx sent them as HTTP Basic
    "https://S3cret@10.0.0.5/b",  # a user (or a token) alone
    "https://10.0.0.5/b?token=S3cret",  # a query string
    "https://10.0.0.5/b#S3cret",  # a fragment
]


@pytest.mark.parametrize("url", SECRET_URLS)
@pytest.mark.parametrize("key", ["lanes[0].barrier.url", "service.base_url", "service.issuer", "auth.audience"])
def test_a_user_password_or_query_in_a_url_is_refused_and_never_repeated(tmp_path: Path, url: str, key: str) -> None:
    """Before: http://admin:S3cret@10.0.0.5/b with signing started outside dev (barrier_risk None), httpx
    sent Authorization: Basic admin:S3cret, and the start-up warning and httpx's request log printed it.
    A secret lives in a file of its own (token_file, password_file), never in a URL."""
    barrier = {"url": url if key.startswith("lanes") else "https://barrier.lan/b", "token_file": "barrier.token"}
    doc = _doc(tmp_path, barrier)
    section, _, name = key.partition(".")
    if section in ("service", "auth"):
        doc[section] = {**doc[section], name: url}
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == key, str(exc.value)
    assert "S3cret" not in str(exc.value) and "admin" not in str(exc.value)


def test_the_adapter_logs_no_request_line_of_httpx(tmp_path: Path, controller: Controller,  # noqa: F811
                                                 caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: at log_level INFO httpx logged "HTTP Request: POST http://admin:S3cret@..." for every barrier
    command (and every verify). The adapter's logging set up as ``main`` does it: httpx says nothing below
    WARNING."""
    import logging

    from gate_adapters import adapter as adapter_module
    from gate_adapters.adapter import _sink, barrier_parts

    config = _toml(tmp_path, base_url="http://127.0.0.1:8000", barrier_url=controller.url)

    def run(settings: Any) -> int:  # instead of starting the adapter: one command, as a lane gives it
        _sink(settings.lanes[0], settings, None, barrier_parts(settings)).send(OPEN)
        return 0

    monkeypatch.setattr(adapter_module, "run", run)
    caplog.set_level(logging.INFO)
    try:
        assert adapter_main(["--config", str(config)]) == 0
    finally:
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert controller.next()["body"]["command"] == "open"
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("httpx", "httpcore"))] == []

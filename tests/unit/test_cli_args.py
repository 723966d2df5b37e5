"""The command line's flag types (meshgate/_args.py): a bad value is refused by argparse with the flag
named, on the command line and in a MESHGATE_* default alike; it was a traceback, or a server that
started with it (port -1 bound 65535, a drain of 1e308 s never ended)."""

from __future__ import annotations

import argparse

import pytest

from meshgate import _args
from meshgate.cli import _parser


@pytest.mark.parametrize("value", ["0.0.0.0:9001", ":9001", "[::1]:0", "host.example:65535"])
def test_listen_addresses(value: str) -> None:
    assert _args.listen_address(value) == value


@pytest.mark.parametrize(
    "value", ["localhost", "h:abc", ":99999", "127.0.0.1:-1", "[::1", "", "a b:1", "h:٩١"]
)
def test_bad_listen_addresses(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected HOST:PORT"):
        _args.listen_address(value)


def test_an_address_to_connect_to_has_a_host_and_a_port() -> None:
    assert _args.address("127.0.0.1:18000") == "127.0.0.1:18000"
    for bad in (":18000", "h:0", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.address(bad)


def test_seconds_timeouts_ports_and_levels() -> None:
    assert _args.seconds("0") == 0 and _args.seconds("2.5") == 2.5 and _args.timeout("5") == 5
    for bad in ("-5", "nan", "inf", "1e308", "abc"):
        with pytest.raises(argparse.ArgumentTypeError, match="seconds from 0 to 86400"):
            _args.seconds(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0"):
        _args.timeout("0")
    assert _args.port("9901") == 9901 and _args.log_level("DEBUG") == "debug"
    for bad_port in ("0", "-1", "99999999999", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.port(bad_port)
    with pytest.raises(argparse.ArgumentTypeError, match="debug, info, warning or error"):
        _args.log_level("5")


def test_a_bad_environment_default_names_its_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHGATE_GRACE", "abc")
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["serve"])
    assert exited.value.code == 2
    assert (
        "argument --grace: expected a number of seconds from 0 to 86400, got 'abc'" in capsys.readouterr().err
    )


def test_explain_takes_an_http_request_it_could_be_sent() -> None:
    """A method that is no token, a path without '/', a header that would be two (CR LF) or whose name
    is no token: refused (they were explained as if sent)."""
    assert (
        _args.method("POST") == "POST"
        and _args.request_path("/v2/models/m/infer?x=1") == "/v2/models/m/infer?x=1"
    )
    for bad_method in ("BAD METHOD", "", "GET\r\n"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.method(bad_method)
    for bad_path in ("noslash", "", "http://h/x", "/a\r\nb"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.request_path(bad_path)
    assert _args.header("X-Api-Key:  k ") == ("x-api-key", "k")
    for bad_header in ("x: a\r\nb: c", "bad name: v", "novalue", ": v"):
        with pytest.raises(ValueError, match="a header is 'Name: value' on one line"):
            _args.header(bad_header)

"""`meshgate serve --event-loop`: which loop each choice runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from meshgate.server import loop_factory


def test_auto_and_uvloop_run_on_uvloop_asyncio_on_the_standard_loop() -> None:
    for name in ("auto", "uvloop"):
        factory = loop_factory(name)
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    assert loop_factory("asyncio") is None
    with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown event loop 'trio'"):
        loop_factory("trio")

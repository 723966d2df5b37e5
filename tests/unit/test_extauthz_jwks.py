"""The JWKS refresher against an in-process httpx transport (no sockets): TTLs, failures, unknown kid."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from meshgate.extauthz.jwks import JwksRefresher, RemoteKeys, cache_ttl
from meshgate.policy.model import Issuer
from tests.unit.test_extauthz_support import ISSUER, public_jwks

JWKS_URI = "http://keys.test/jwks.json"


def issuer(**extra: Any) -> Issuer:
    base: dict[str, Any] = {
        "name": "test",
        "issuer": ISSUER,
        "audiences": ("meshgate",),
        "jwks_uri": JWKS_URI,
    }
    base.update(extra)
    return Issuer.model_validate(base)


class FakeIdP:
    """Answers JWKS (and discovery) requests; `fail` makes it answer 503."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = public_jwks()
        self.cache_control = "max-age=600"
        self.fail = False
        self.calls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(str(request.url))
        if self.fail:
            return httpx.Response(503)
        if request.url.path.endswith("openid-configuration"):
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": JWKS_URI})
        return httpx.Response(200, json=self.jwks, headers={"cache-control": self.cache_control})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(idp: FakeIdP, clock: Clock, changes: list[int] | None = None) -> JwksRefresher:
    return JwksRefresher(
        client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(idp.handler)),
        clock=clock,
        on_change=(lambda: changes.append(1)) if changes is not None else None,
    )


@pytest.mark.parametrize(
    ("header", "ttl"),
    [(None, 300.0), ("max-age=600", 600.0), ("public, max-age=10", 300.0), ("max-age=999999", 86400.0),
     ("no-store", 300.0), ("s-maxage=5", 300.0)],
)  # fmt: skip
def test_cache_ttl_is_clamped(header: str | None, ttl: float) -> None:
    assert cache_ttl(header, issuer()) == ttl


def test_fetch_loads_keys_and_schedules_by_max_age() -> None:
    idp, clock = FakeIdP(), Clock()
    refresher = make(idp, clock)
    source = refresher.source_for(issuer())
    assert asyncio.run(refresher.refresh(source)) is True
    assert source.keys is not None and source.keys.has_kid("rsa-1")
    assert source.next_fetch == clock.now + 600


def test_failure_keeps_the_last_good_keys_and_backs_off() -> None:
    idp, clock = FakeIdP(), Clock()
    refresher = make(idp, clock)
    source = refresher.source_for(issuer())
    asyncio.run(refresher.refresh(source))
    good = source.keys
    idp.fail = True
    assert asyncio.run(refresher.refresh(source)) is False
    assert asyncio.run(refresher.refresh(source)) is False
    assert source.keys is good
    assert source.next_fetch == clock.now + 2.0  # 1 s, then 2 s


def test_garbage_document_keeps_the_last_good_keys() -> None:
    idp, clock = FakeIdP(), Clock()
    refresher = make(idp, clock)
    source = refresher.source_for(issuer())
    asyncio.run(refresher.refresh(source))
    idp.jwks = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}  # symmetric keys are never taken from a JWKS
    assert asyncio.run(refresher.refresh(source)) is False
    assert source.keys is not None and source.keys.has_kid("rsa-1")


def test_key_rotation_reports_a_change() -> None:
    idp, clock, changes = FakeIdP(), Clock(), []
    refresher = make(idp, clock, changes)
    source = refresher.source_for(issuer())
    asyncio.run(refresher.refresh(source))
    asyncio.run(refresher.refresh(source))
    assert changes == []
    idp.jwks = {"keys": idp.jwks["keys"][1:]}
    asyncio.run(refresher.refresh(source))
    assert changes == [1]
    assert source.keys is not None and not source.keys.has_kid("rsa-1")


def test_unknown_kid_refetch_at_most_once_per_interval() -> None:
    idp, clock = FakeIdP(), Clock()
    refresher = make(idp, clock)
    source = refresher.source_for(issuer(jwks_cache={"unknown_kid_refetch": "30s"}))
    refresher.sync([source])
    asyncio.run(refresher.refresh(source))
    assert source.next_fetch == clock.now + 600
    source.unknown_kid("new")
    assert source.next_fetch == clock.now  # due now
    source.next_fetch = clock.now + 600
    clock.now += 10
    source.unknown_kid("new")
    assert source.next_fetch == clock.now + 590  # not again within 30 s
    clock.now += 25
    source.unknown_kid("new")
    assert source.next_fetch == clock.now


def test_discovery_finds_the_jwks_uri() -> None:
    idp, clock = FakeIdP(), Clock()
    refresher = make(idp, clock)
    source = refresher.source_for(issuer(jwks_uri=None, discovery=True))
    assert asyncio.run(refresher.refresh(source)) is True
    assert idp.calls == [f"{ISSUER}/.well-known/openid-configuration", JWKS_URI]


def test_discovery_for_another_issuer_is_refused() -> None:
    idp, clock = FakeIdP(), Clock()
    refresher = make(idp, clock)
    source = refresher.source_for(issuer(jwks_uri=None, discovery=True, issuer="https://other.test"))
    assert asyncio.run(refresher.refresh(source)) is False
    assert source.keys is None


def test_unchanged_issuer_keeps_its_source_across_policies() -> None:
    idp, clock = FakeIdP(), Clock()
    refresher = make(idp, clock)
    first = refresher.source_for(issuer())
    refresher.sync([first])
    assert refresher.source_for(issuer()) is first
    assert refresher.source_for(issuer(jwks_uri="http://keys.test/other.json")) is not first


def test_run_fetches_in_the_background() -> None:
    idp, clock = FakeIdP(), Clock()

    async def scenario() -> RemoteKeys:
        refresher = make(idp, clock)
        source = refresher.source_for(issuer())
        refresher.sync([source])
        task = asyncio.create_task(refresher.run())
        loaded = await refresher.wait_loaded(5.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loaded
        return source

    source = asyncio.run(scenario())
    assert source.keys is not None and len(source.keys) == 3

"""Remote JWK sets (jwks_uri or OIDC discovery), fetched off the request path by one asyncio task.

Each source is refetched when its TTL runs out: Cache-Control max-age clamped to the issuer's
jwks_cache [min_ttl, max_ttl] (min_ttl when absent). A token with an unknown kid asks for an early
refetch, at most once per unknown_kid_refetch. A failed fetch keeps the last good keys and retries
with backoff (1 s, 2 s, 4 s ... up to min(min_ttl, 60 s)).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from ..policy.model import Issuer
from .keys import KeySet, KeySource

__all__ = ["JwksRefresher", "RemoteKeys"]

log = logging.getLogger("meshgate.extauthz.jwks")

MAX_DOCUMENT_BYTES = 1 << 20
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class RemoteKeys(KeySource):
    """The live keys of one remote issuer; `keys` is swapped by the refresher."""

    def __init__(self, issuer: Issuer) -> None:
        super().__init__(issuer.name)
        self.issuer = issuer
        self.jwks_uri: str | None = issuer.jwks_uri
        self.next_fetch = 0.0
        self.last_kid_refetch = float("-inf")
        self.failures = 0
        self.fingerprint = ""

    @property
    def identity(self) -> tuple[object, ...]:
        """Same identity across policies: the source (and its keys) is kept."""
        i = self.issuer
        return (i.name, i.issuer, i.jwks_uri, i.discovery, i.jwks_cache)


def cache_ttl(cache_control: str | None, issuer: Issuer) -> float:
    bounds = issuer.jwks_cache
    if not cache_control or re.search(r"no-store|no-cache", cache_control, re.IGNORECASE):
        return bounds.min_ttl
    match = _MAX_AGE.search(cache_control)
    age = float(match.group(1)) if match else bounds.min_ttl
    return min(max(age, bounds.min_ttl), bounds.max_ttl)


class JwksRefresher:
    """Keeps every active RemoteKeys filled. `run()` is the background task; `sync()` is called on commit."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources: dict[tuple[object, ...], RemoteKeys] = {}
        self._client_factory = client_factory or (lambda: httpx.AsyncClient(timeout=5.0, trust_env=False))
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self.attempts = 0  # fetch attempts so far, ok or not
        self._clock = clock
        self.on_change = on_change
        self._fetches = Counter(
            "meshgate_extauthz_jwks_fetches",
            "JWKS fetches by issuer and result (ok, error).",
            ["issuer", "result"],
            registry=registry,
        )

    def source_for(self, issuer: Issuer) -> RemoteKeys:
        """The live source for this issuer: the existing one if unchanged (keys kept), else a new one."""
        fresh = RemoteKeys(issuer)
        existing = self._sources.get(fresh.identity)
        return existing if existing is not None else fresh

    def sync(self, sources: Iterable[RemoteKeys]) -> None:
        """Make exactly these sources active (on policy commit) and fetch new ones at once."""
        self._sources = {s.identity: s for s in sources}
        for source in self._sources.values():
            source.on_unknown_kid = lambda kid, s=source: self._unknown_kid(s, kid)
        self._wake.set()

    @property
    def sources(self) -> list[RemoteKeys]:
        return list(self._sources.values())

    def _unknown_kid(self, source: RemoteKeys, kid: str) -> None:
        now = self._clock()
        if now - source.last_kid_refetch < source.issuer.jwks_cache.unknown_kid_refetch:
            return
        source.last_kid_refetch = now
        source.next_fetch = now
        log.info("issuer %s: unknown kid %.64r, refetching keys", source.name, kid)
        self._wake.set()

    async def run(self) -> None:
        """Fetch whatever is due, sleep until the next due time or a wake-up; forever (cancel to stop)."""
        self._client = self._client_factory()
        try:
            while True:
                self._wake.clear()
                now = self._clock()
                due = [s for s in self._sources.values() if s.next_fetch <= now]
                if due:
                    await asyncio.gather(*(self.refresh(s) for s in due))
                    continue
                wait = min((s.next_fetch for s in self._sources.values()), default=now + 3600) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.0))
        finally:
            await self._client.aclose()
            self._client = None

    async def wait_loaded(self, timeout: float) -> bool:
        """Wait (bounded) until every active source has keys or has failed at least once."""

        async def loaded() -> None:
            while any(s.keys is None and s.failures == 0 for s in self._sources.values()):
                self._progress.clear()
                await self._progress.wait()

        try:
            await asyncio.wait_for(loaded(), timeout)
        except TimeoutError:
            return False
        return all(s.keys is not None for s in self._sources.values())

    async def wait_attempts(self, count: int, timeout: float) -> None:
        """Wait until `count` fetch attempts have finished (tests and start-up use this)."""

        async def reached() -> None:
            while self.attempts < count:
                self._progress.clear()
                await self._progress.wait()

        await asyncio.wait_for(reached(), timeout)

    async def refresh(self, source: RemoteKeys) -> bool:
        """One fetch of `source`. On failure the last good keys stay."""
        try:
            return await self._refresh(source)
        finally:
            self.attempts += 1
            self._progress.set()

    async def _refresh(self, source: RemoteKeys) -> bool:
        try:
            if self._client is not None:
                document, ttl = await self._fetch_jwks(self._client, source)
            else:  # a one-off refresh outside run()
                async with self._client_factory() as client:
                    document, ttl = await self._fetch_jwks(client, source)
            keys = KeySet.parse(document, source=f"issuer {source.name}")
        except Exception as exc:  # the refresher must outlive any failure; last good keys stay
            if not isinstance(exc, httpx.HTTPError | ValueError):
                log.exception("issuer %s: unexpected JWKS fetch failure", source.name)
            source.failures += 1
            source.jwks_uri = source.issuer.jwks_uri  # rediscover next time
            backoff = min(2.0 ** (source.failures - 1), source.issuer.jwks_cache.min_ttl, 60.0)
            source.next_fetch = self._clock() + backoff
            self._fetches.labels(source.name, "error").inc()
            log.warning(
                "issuer %s: JWKS fetch failed (%s), keeping %s, retry in %.0fs",
                source.name,
                exc,
                "the last good keys" if source.keys else "no keys",
                backoff,
            )
            return False
        fingerprint = json.dumps(document, sort_keys=True)
        changed = source.keys is not None and fingerprint != source.fingerprint
        source.keys, source.fingerprint, source.failures = keys, fingerprint, 0
        source.next_fetch = self._clock() + ttl
        self._fetches.labels(source.name, "ok").inc()
        log.info("issuer %s: %d key(s) loaded, next fetch in %.0fs", source.name, len(keys), ttl)
        if changed and self.on_change is not None:
            self.on_change()
        return True

    async def _fetch_jwks(
        self, client: httpx.AsyncClient, source: RemoteKeys
    ) -> tuple[dict[str, Any], float]:
        if source.jwks_uri is None:
            source.jwks_uri = await self._discover(client, source.issuer)
        response = await client.get(source.jwks_uri, follow_redirects=False)
        document = _json_object(response, what="JWKS")
        return document, cache_ttl(response.headers.get("cache-control"), source.issuer)

    async def _discover(self, client: httpx.AsyncClient, issuer: Issuer) -> str:
        url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = _json_object(await client.get(url, follow_redirects=False), what="OIDC discovery document")
        if document.get("issuer") != issuer.issuer:
            raise ValueError(
                f"discovery document names issuer {document.get('issuer')!r}, not {issuer.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not re.match(r"^https?://", jwks_uri):
            raise ValueError("discovery document has no http(s) jwks_uri")
        return jwks_uri


def _json_object(response: httpx.Response, *, what: str) -> dict[str, Any]:
    response.raise_for_status()
    if len(response.content) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{what} larger than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(response.content)
    if not isinstance(document, dict):
        raise ValueError(f"{what} is not a JSON object")
    return document

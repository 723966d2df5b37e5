"""Remote JWK sets (jwks_uri or OIDC discovery), fetched off the request path by one asyncio task.

Each source is refetched when its TTL runs out: Cache-Control max-age clamped to the issuer's
jwks_cache [min_ttl, max_ttl] (min_ttl when absent). A token with an unknown kid asks for an early
refetch, at most once per unknown_kid_refetch. A token for an issuer with no keys at all asks for an
early fetch too, at most once per `missing_keys_refetch` (1 s) after the last attempt. A failed fetch
keeps the last good keys and retries with backoff (1 s, 2 s, 4 s ... up to min(min_ttl, 10 s)).
At most one fetch per source is in flight (single-flight); sources are fetched independently, so a slow
IdP delays no other issuer. A failure is logged with its reason and the URL without credentials.
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
from .bounds import clip
from .keys import KeySet, KeySource

__all__ = ["JwksRefresher", "RemoteKeys"]

log = logging.getLogger("meshgate.extauthz.jwks")

MAX_DOCUMENT_BYTES = 1 << 20
RETRY_FIRST_S = 1.0
RETRY_CAP_S = 10.0
MISSING_KEYS_REFETCH_S = 1.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class RemoteKeys(KeySource):
    """The live keys of one remote issuer; `keys` is swapped by the refresher."""

    def __init__(self, issuer: Issuer) -> None:
        super().__init__(issuer.name)
        self.issuer = issuer
        self.jwks_uri: str | None = issuer.jwks_uri
        self.next_fetch = 0.0
        self.last_kid_refetch = float("-inf")
        self.last_attempt = float("-inf")
        self.in_flight = False
        self.failures = 0
        self.fingerprint = ""
        self.url = ""  # the URL being fetched (discovery or JWKS), for the log

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
        retry_first: float = RETRY_FIRST_S,
        retry_cap: float = RETRY_CAP_S,
        missing_keys_refetch: float = MISSING_KEYS_REFETCH_S,
    ) -> None:
        self._sources: dict[tuple[object, ...], RemoteKeys] = {}
        self._client_factory = client_factory or (lambda: httpx.AsyncClient(timeout=5.0, trust_env=False))
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: set[asyncio.Task[bool]] = set()
        self.attempts = 0  # fetch attempts so far, ok or not
        self._clock = clock
        self.retry_first, self.retry_cap = retry_first, retry_cap
        self.missing_keys_refetch = missing_keys_refetch
        self.on_change = on_change
        self.on_progress: Callable[[], None] | None = None  # after every attempt
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
            source.on_keys_missing = lambda s=source: self._keys_missing(s)
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

    def _keys_missing(self, source: RemoteKeys) -> None:
        """A token for an issuer with no keys: fetch now, unless a fetch is in flight or began less than
        `missing_keys_refetch` ago (every such token calls this: it must stay cheap)."""
        now = self._clock()
        if (
            source.in_flight
            or source.next_fetch <= now
            or now - source.last_attempt < self.missing_keys_refetch
        ):
            return
        source.next_fetch = now
        self._wake.set()

    async def run(self) -> None:
        """Start a fetch of each source that is due and not in flight; sleep until the next due time or a
        wake-up (a fetch ended, a sync, an early refetch asked for); forever (cancel to stop)."""
        self._client = self._client_factory()
        try:
            while True:
                self._wake.clear()
                now = self._clock()
                for source in self._sources.values():
                    if source.next_fetch <= now and not source.in_flight:
                        task = asyncio.create_task(self.refresh(source), name=f"jwks-{source.name}")
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                idle = [s.next_fetch for s in self._sources.values() if not s.in_flight]
                wait = min(idle, default=now + 3600) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.0))
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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
        source.in_flight, source.last_attempt = True, self._clock()
        try:
            return await self._refresh(source)
        finally:
            source.in_flight = False
            self.attempts += 1
            self._progress.set()
            self._wake.set()
            if self.on_progress is not None:
                self.on_progress()

    async def _refresh(self, source: RemoteKeys) -> bool:
        try:
            if self._client is not None:
                document, ttl = await self._fetch_jwks(self._client, source)
            else:  # a one-off refresh outside run()
                async with self._client_factory() as client:
                    document, ttl = await self._fetch_jwks(client, source)
            keys = KeySet.parse(document, source=f"issuer {source.name}")
        except Exception as exc:  # the refresher must outlive any failure; last good keys stay
            self._failed(source, exc)
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

    def _failed(self, source: RemoteKeys, exc: Exception) -> None:
        if not isinstance(exc, httpx.HTTPError | ValueError):
            log.exception("issuer %s: unexpected JWKS fetch failure", source.name)
        source.failures += 1
        source.jwks_uri = source.issuer.jwks_uri  # rediscover next time
        backoff = min(
            self.retry_first * 2.0 ** (source.failures - 1), source.issuer.jwks_cache.min_ttl, self.retry_cap
        )
        source.next_fetch = self._clock() + backoff
        self._fetches.labels(source.name, "error").inc()
        log.warning(
            "issuer %s: JWKS fetch from %s failed (%s), keeping %s, retry in %.1fs",
            source.name,
            redact_url(source.url),
            failure_reason(exc, source.url),
            "the last good keys" if source.keys else "no keys",
            backoff,
        )

    async def _fetch_jwks(
        self, client: httpx.AsyncClient, source: RemoteKeys
    ) -> tuple[dict[str, Any], float]:
        if source.jwks_uri is None:
            source.url = source.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
            source.jwks_uri = await self._discover(client, source.issuer, source.url)
        source.url = source.jwks_uri
        response = await client.get(source.jwks_uri, follow_redirects=False)
        document = _json_object(response, what="JWKS")
        return document, cache_ttl(response.headers.get("cache-control"), source.issuer)

    async def _discover(self, client: httpx.AsyncClient, issuer: Issuer, url: str) -> str:
        document = _json_object(await client.get(url, follow_redirects=False), what="OIDC discovery document")
        if document.get("issuer") != issuer.issuer:
            raise ValueError(
                f"discovery document names issuer {document.get('issuer')!r}, not {issuer.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not re.match(r"^https?://", jwks_uri):
            raise ValueError("discovery document has no http(s) jwks_uri")
        return jwks_uri


def redact_url(url: str) -> str:
    """`url` without what may carry a secret: user info, query and fragment."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return clip(f"{parsed.scheme}://{parsed.host}{port}{parsed.path}")


def failure_reason(exc: Exception, url: str) -> str:
    """The exception's type and message, never empty (httpx's timeouts have no message), without the URL's
    secrets (an HTTP status error names the full URL) and clipped."""
    if isinstance(exc, httpx.HTTPStatusError):
        text = f"HTTP {exc.response.status_code}"
    else:
        text = str(exc)
        if url:
            text = text.replace(url, redact_url(url))
    return clip(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _json_object(response: httpx.Response, *, what: str) -> dict[str, Any]:
    response.raise_for_status()
    if len(response.content) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{what} larger than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(response.content)
    if not isinstance(document, dict):
        raise ValueError(f"{what} is not a JSON object")
    return document

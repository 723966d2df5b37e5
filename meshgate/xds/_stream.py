"""Protocol-neutral state of one ADS stream and its make-before-break walk to the served snapshot.

Per type: subscription (wildcard or names), what Envoy holds after our last response (name -> version),
the outstanding nonce, what it last ACKed, and the versions it NACKed (never sent again). The walk to a
new snapshot has three stages, each waiting for the ACKs of the previous one:

  0. secrets, clusters, endpoints: additions and changes only (old ones stay: routes still use them)
  1. listeners, routes: exactly the target
  2. secrets, clusters, endpoints: exactly the target (removals last)

A NACK halts the walk; the cache then stops serving that snapshot and the stream walks back.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..clip import clip
from ._types import CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, ROUTING, WARMING, short
from ._wire import Malformed
from .cache import SnapshotCache
from .snapshot import Resource, Snapshot, type_version
from .status import NodeStatus

__all__ = ["MAX_NAMES", "MAX_NAME_BYTES", "Step", "Stream", "TooManyNames", "TypeState"]

log = logging.getLogger("meshgate.xds")

_WILDCARD_TYPES = (LISTENER, CLUSTER)
MAX_NAMES = 65_536
"""Names a stream may subscribe to, per type (a gateway of 1,000 models asks for a few thousand)."""
MAX_NAME_BYTES = 4 << 20
"""Bytes of those names, per type. A delta stream adds names request after request: past either bound
the stream ends (INVALID_ARGUMENT), as it would on a malformed request."""


_STAGES = (WARMING, ROUTING, WARMING)
_nonces = itertools.count(1)


class TooManyNames(Malformed):
    """A subscription past MAX_NAMES or MAX_NAME_BYTES."""

    def __init__(self, type_url: str) -> None:
        limits = f"{MAX_NAMES} {short(type_url)} names or {MAX_NAME_BYTES} bytes of them"
        Exception.__init__(self, f"subscribes to more than {limits}")


@dataclass
class TypeState:
    type_url: str
    requested: bool = False
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    sent: dict[str, str] = field(default_factory=dict)
    held: dict[str, Resource] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)
    acked_held: dict[str, Resource] = field(default_factory=dict)
    nonce: str | None = None
    inflight: Snapshot | None = None
    version: str = ""
    acked_version: str = ""
    nacked: set[str] = field(default_factory=set)
    refresh: set[str] = field(default_factory=set)
    error: str = ""

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def subscribe(self, names: set[str], *, first: bool) -> None:
        """Set the subscription (SotW: the full list each time)."""
        if (first and self.type_url in _WILDCARD_TYPES and not names) or "*" in names:
            self.wildcard = True
        elif names:
            self.wildcard = False
        self.names = names - {"*"}
        self._forget_unwanted()
        self._bounded()

    def change(self, subscribe: set[str], unsubscribe: set[str], *, first: bool) -> None:
        """Delta: add and remove names."""
        if first and self.type_url in _WILDCARD_TYPES and not subscribe:
            self.wildcard = True
        if "*" in subscribe:
            self.wildcard = True
        if "*" in unsubscribe:
            self.wildcard = False
        self.names |= subscribe - {"*"}
        self.names -= unsubscribe
        self._forget_unwanted()
        if subscribe:
            self._bounded()

    def _bounded(self) -> None:
        if len(self.names) > MAX_NAMES or sum(map(len, self.names)) > MAX_NAME_BYTES:
            raise TooManyNames(self.type_url)

    def _forget_unwanted(self) -> None:
        if not self.wildcard:
            self.sent = {n: v for n, v in self.sent.items() if n in self.names}


@dataclass(frozen=True)
class Step:
    """One response to send: the full view of the type after it, and which names it removes."""

    type_url: str
    view: dict[str, Resource]
    changed: list[Resource]
    removed: list[str]
    version: str
    nonce: str
    snapshot: Snapshot


class Stream:
    """One connected proxy. The protocol modules feed requests in and send the steps `plan()` returns."""

    def __init__(
        self,
        node: str,
        cache: SnapshotCache,
        status: NodeStatus,
        *,
        on_nack: Callable[[str], None],
        on_converged: Callable[[float], None],
    ) -> None:
        self.node = node
        self.cache = cache
        self.status = status
        self.types: dict[str, TypeState] = {}
        self.target: Snapshot | None = None
        self.stage = 0
        self.halted = False
        self.reported = False  # the target's convergence reported
        self._on_nack = on_nack
        self._on_converged = on_converged

    def state(self, type_url: str) -> TypeState:
        if type_url not in self.types:
            self.types[type_url] = TypeState(type_url)
        return self.types[type_url]

    # --- requests -----------------------------------------------------------------------------
    def answer(self, type_url: str, nonce: str, error: str | None) -> None:
        """An ACK or NACK for `nonce`; a stale or empty nonce is no answer (subscriptions still count)."""
        st = self.state(type_url)
        if not nonce or nonce != st.nonce:
            return
        st.nonce = None
        if error is None:
            self._ack(st)
        else:
            self._nack(st, error)

    def _ack(self, st: TypeState) -> None:
        st.error = ""
        if st.type_url == CLUSTER:  # changed clusters drop their endpoints: send those again
            changed = {n for n, v in st.sent.items() if st.acked.get(n) != v}
            self.state(ENDPOINT).refresh |= changed
        st.acked, st.acked_held, st.acked_version = dict(st.sent), dict(st.held), st.version
        self.status.acked(st.type_url, st.version)

    def _nack(self, st: TypeState, error: str) -> None:
        error, node = clip(error), clip(self.node)  # (the proxy's words: bounded wherever they go)
        st.nacked.add(st.version)
        st.error = error
        log.warning("%s NACKed %s version %s: %s", node, short(st.type_url), st.version, error)
        self.status.nacked(st.type_url, st.version, error)
        self._on_nack(st.type_url)
        st.sent, st.held, st.version = dict(st.acked), dict(st.acked_held), st.acked_version
        if st.inflight is not None:  # the snapshot that response belonged to (maybe no longer the target)
            self.halted = st.inflight is self.target
            self.cache.reject(st.inflight, f"{node} NACKed {short(st.type_url)}: {error}")

    # --- responses ----------------------------------------------------------------------------
    def plan(self) -> list[Step]:
        """The responses due now (empty while waiting for ACKs or when converged)."""
        target = self.cache.serving()
        if target is None:
            return []
        if target is not self.target:
            self.target, self.stage, self.halted, self.reported = target, 0, False, False
        if self.halted:
            return []
        while self.stage < len(_STAGES):
            types = _STAGES[self.stage]
            steps = [s for t in types if (s := self._step(t, target, removing=self.stage > 0)) is not None]
            if steps:
                return steps
            if not self._settled(types, target):
                return []
            self.stage += 1
        # staged: answer new subscriptions (e.g. routes asked for after the listener arrived); converged
        # once the proxy holds all it will ask for (not on a plan before its first request, nor between
        # its ACK of the clusters and its request for their endpoints)
        steps = [s for t in ORDER if (s := self._step(t, target, removing=True)) is not None]
        if not steps and not self.reported and self._settled(ORDER, target, whole=True):
            self.reported = True
            self._on_converged(self.cache.converged(target))
        return steps

    def _step(self, type_url: str, target: Snapshot, *, removing: bool) -> Step | None:
        st = self.types.get(type_url)
        if st is None or not st.requested or st.nonce is not None:
            return None
        view = {n: r for n, r in target[type_url].items() if st.wants(n)}
        if not removing:
            view.update((n, r) for n, r in st.held.items() if n not in view and st.wants(n))
        changed = [r for n, r in view.items() if st.sent.get(n) != r.version or n in st.refresh]
        removed = [n for n in st.sent if n not in view] if removing else []
        version = type_version(view)
        if not changed and not removed:
            return None
        if version in st.nacked and not (st.refresh & view.keys()):
            return None
        return Step(type_url, view, changed, removed, version, str(next(_nonces)), target)

    def sent(self, step: Step) -> None:
        """Record that `step` went out."""
        st = self.state(step.type_url)
        st.nonce = step.nonce
        st.inflight = step.snapshot
        st.version = step.version
        st.refresh -= step.view.keys()
        for name in step.removed:
            st.sent.pop(name, None)
        st.sent.update((r.name, r.version) for r in step.changed)
        st.held = {n: r for n, r in {**st.held, **step.view}.items() if n in st.sent}
        self.status.sent(step.type_url, step.version)

    def _will_ask(self, type_url: str, target: Snapshot) -> bool:
        """Whether the proxy will ask for `type_url` of `target`: clusters and listeners (wildcards, asked
        for at start), or a type that a resource it holds names (so that a plan made before its first
        request, or between its ACK of the clusters and its request for their endpoints, is not taken
        for convergence)."""
        if type_url in (CLUSTER, LISTENER):
            return bool(target[type_url])
        named = target.named_types
        return any(
            type_url in named.get((held, name), ())
            for held in (CLUSTER, LISTENER, ROUTE)
            if held in self.types
            for name in self.types[held].acked
        )

    def _settled(self, types: tuple[str, ...], target: Snapshot, *, whole: bool = False) -> bool:
        """Whether the proxy holds `types` of `target` as far as it asked for them; `whole`: and it
        asked for every one it will (the staging waits only on what was asked for: a client that never
        asks for clusters still gets its routes)."""
        for type_url in types:
            st = self.types.get(type_url)
            if st is None or not st.requested:  # not asked for (yet): for `whole`, only if it will not be
                if whole and self._will_ask(type_url, target):
                    return False
                continue
            if st.nonce is not None:
                return False
            if type_url == ENDPOINT and st.refresh & target[ENDPOINT].keys():
                return False  # changed clusters whose endpoints Envoy has not asked for again yet
            if type_url == ROUTE and not st.wildcard and not target[ROUTE].keys() <= st.names:
                return False  # the listener's route configuration is not subscribed yet
        return True

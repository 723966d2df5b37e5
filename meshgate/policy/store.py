"""The live policy: loaded from a file, watched, swapped atomically, never replaced by a bad one.

Consumers (extauthz, ratelimit, xds) subscribe with a *prepare* function: given a new Policy it
compiles its artifact (may raise) and returns a *commit* callable that swaps it in. A reload runs
every prepare first and commits only if all succeeded, so the services never disagree about which
policy is live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles
from prometheus_client import CollectorRegistry, Counter, Gauge

from .errors import PolicyError
from .load import load_policy
from .model import Policy

__all__ = ["Commit", "PolicyStore", "Prepare"]

log = logging.getLogger("meshgate.policy")

Commit = Callable[[], None]
Prepare = Callable[[Policy], Commit]


class PolicyStore:
    """Holds the last good policy from `path` and hands it to subscribers."""

    def __init__(self, path: str | Path, *, registry: CollectorRegistry | None = None) -> None:
        self.path = Path(path)
        self._policy: Policy | None = None
        self._subscribers: list[tuple[str, Prepare]] = []
        self.generation = 0
        self._reloads = Counter(
            "meshgate_policy_reloads",
            "Policy loads by result (ok, invalid, unchanged, compile_error).",
            ["result"],
            registry=registry,
        )
        self._generation = Gauge(
            "meshgate_policy_generation",
            "How many policies have been applied since start.",
            registry=registry,
        )
        self._last_ok = Gauge(
            "meshgate_policy_last_reload_ok",
            "1 if the last load attempt was applied or unchanged.",
            registry=registry,
        )

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            raise RuntimeError("no policy loaded yet")
        return self._policy

    @property
    def loaded(self) -> bool:
        return self._policy is not None

    def subscribe(self, name: str, prepare: Prepare) -> None:
        """Register a consumer. If a policy is already live it is prepared and committed at once."""
        self._subscribers.append((name, prepare))
        if self._policy is not None:
            prepare(self._policy)()

    def reload(self) -> bool:
        """Load the file again. True if a new policy is live; False if unchanged or rejected."""
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            for issue in exc.issues:
                log.error("policy rejected, keeping generation %d: %s", self.generation, issue)
            return self._result("invalid", ok=False)
        return self.apply(policy)

    def apply(self, policy: Policy) -> bool:
        """Make `policy` live if every subscriber can compile it."""
        if policy == self._policy:
            return self._result("unchanged", ok=True)
        commits = []
        for name, prepare in self._subscribers:
            try:
                commits.append(prepare(policy))
            except Exception:
                log.exception(
                    "policy rejected: %s could not compile it; keeping generation %d", name, self.generation
                )
                return self._result("compile_error", ok=False)
        for commit in commits:
            commit()
        self._policy = policy
        self.generation += 1
        self._generation.set(self.generation)
        log.info("policy generation %d live from %s", self.generation, self.path)
        self._result("ok", ok=True)
        return True

    def _result(self, result: str, *, ok: bool) -> bool:
        self._reloads.labels(result).inc()
        self._last_ok.set(1 if ok else 0)
        return False

    async def watch(self, stop: asyncio.Event, *, debounce_ms: int = 200) -> None:
        """Reload whenever the file changes (including Kubernetes ConfigMap symlink swaps)."""
        directory = self.path.absolute().parent
        async for _changes in watchfiles.awatch(
            directory,
            stop_event=stop,
            debounce=debounce_ms,
            step=50,
            recursive=False,
            watch_filter=self._is_policy_change,
        ):
            self.reload()

    def _is_policy_change(self, _change: watchfiles.Change, path: str) -> bool:
        """Only the policy file, or a ConfigMap's `..data` symlink swap, can change the policy."""
        name = Path(path).name
        return name == self.path.name or name.startswith("..data")

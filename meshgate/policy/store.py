"""The live policy: the last good one, swapped atomically, never replaced by a bad one.

Consumers (extauthz, ratelimit, xds, the prober) subscribe with a *prepare* function: given a new
Policy it compiles its artifact (may raise) and returns a *commit* callable that swaps it in. A change
runs every prepare first and commits only if all succeeded, so the services never disagree about which
policy is live. Prepare runs in the reload pipeline's worker thread (meshgate/policy/watch.py); the
commit runs on the event loop: a prepare function must not touch what the loop mutates, a commit must
be quick.

The store is also the policy file's input to that pipeline: `read` takes the file's bytes, `prepare`
parses exactly those bytes and compiles them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from .errors import PolicyError
from .load import parse_policy_bytes
from .model import Policy
from .watch import FileState, Paths

__all__ = ["Commit", "CompileError", "PolicyStore", "Prepare", "Rejection"]

log = logging.getLogger("meshgate.policy")

Commit = Callable[[], None]
Prepare = Callable[[Policy], Commit]


@dataclass(frozen=True)
class Rejection:
    """An input the reload pipeline refused (the live configuration stayed): `meshgate status` shows
    the last one."""

    at: float
    """Epoch seconds."""
    input: str
    """policy, ratelimit-config, certificates."""
    result: str
    """invalid (does not parse or validate) or compile_error (valid, but a service cannot compile it)."""
    errors: tuple[str, ...]
    """`file:line: field.path: message`, or the compile error."""


class CompileError(Exception):
    """A subscriber could not compile a policy that is otherwise valid."""

    def __init__(self, subscriber: str, cause: BaseException) -> None:
        self.subscriber = subscriber
        self.cause = cause
        super().__init__(f"{subscriber} could not compile it: {type(cause).__name__}: {cause}")


class PolicyStore:
    """Holds the last good policy from `path` and hands it to subscribers."""

    name = "policy"

    def __init__(self, path: str | Path, *, registry: CollectorRegistry | None = None) -> None:
        self.path = Path(path)
        self._policy: Policy | None = None
        self._subscribers: list[tuple[str, Prepare]] = []
        self.generation = 0
        self.digest = ""
        """SHA-256 of the bytes of the live policy (logged with each generation)."""
        self.applied_at = 0.0
        """When the live policy was applied (epoch seconds)."""
        self.last_rejected: Rejection | None = None
        """The last policy refused since start (None: none was)."""
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

    # --- the two phases -------------------------------------------------------------------------
    def prepare(self, policy: Policy, *, digest: str = "") -> Commit:
        """Compile `policy` for every subscriber (raises CompileError naming the first that cannot);
        the returned commit makes it live everywhere at once. Thread-safe: no subscriber commits here."""
        commits = []
        for name, prepare in self._subscribers:
            try:
                commits.append(prepare(policy))
            except Exception as exc:
                raise CompileError(name, exc) from exc

        def commit() -> None:
            for subscriber_commit in commits:
                subscriber_commit()
            self._policy = policy
            self.digest = digest
            self.applied_at = time.time()
            self.generation += 1
            self._generation.set(self.generation)
            log.info(
                "policy generation %d live from %s (sha256 %s)",
                self.generation, self.path, digest[:16] or "-",
            )
            self._result("ok", ok=True)

        return commit

    def apply(self, policy: Policy, *, digest: str = "") -> bool:
        """Prepare and commit now. True if `policy` is live and new; False if unchanged or refused."""
        if policy == self._policy:
            return self._result("unchanged", ok=True)
        try:
            commit = self.prepare(policy, digest=digest)
        except CompileError as exc:
            return self._compile_error(exc)
        commit()
        return True

    def reload(self) -> bool:
        """Read the file and apply it now, on the caller's thread (tools and tests; `meshgate serve`
        reloads through the pipeline, see meshgate/policy/watch.py)."""
        commit = self.prepare_state(self.read())
        if commit is None:
            return False
        commit()
        return True

    # --- as the policy file's input to the reload pipeline --------------------------------------
    def paths(self) -> Paths:
        return Paths.of(files=[self.path])

    def read(self) -> FileState:
        return FileState.read(self.path)

    def prepare_state(self, state: FileState) -> Commit | None:
        """Parse the bytes read and compile them: the commit, or None (unchanged, or refused: logged
        and counted)."""
        if state.data is None:
            why = f"{self.path}: cannot read: {state.error}"
            log.error("policy rejected, keeping generation %d: %s", self.generation, why)
            self._rejected("invalid", [why])
            return None
        try:
            policy = parse_policy_bytes(state.data, str(self.path))
        except PolicyError as exc:
            for issue in exc.issues:
                log.error("policy rejected, keeping generation %d: %s", self.generation, issue)
            self._rejected("invalid", [str(issue) for issue in exc.issues])
            return None
        if policy == self._policy:
            self._result("unchanged", ok=True)
            return None
        try:
            return self.prepare(policy, digest=hashlib.sha256(state.data).hexdigest())
        except CompileError as exc:
            self._compile_error(exc)
            return None

    # --- results --------------------------------------------------------------------------------
    def _compile_error(self, exc: CompileError) -> bool:
        log.error("policy rejected: %s; keeping generation %d", exc, self.generation)
        log.debug("the compile error in full", exc_info=exc.cause)
        return self._rejected("compile_error", [str(exc)])

    def _rejected(self, result: str, errors: list[str]) -> bool:
        self.last_rejected = Rejection(time.time(), self.name, result, tuple(errors))
        return self._result(result, ok=False)

    def _result(self, result: str, *, ok: bool) -> bool:
        self._reloads.labels(result).inc()
        self._last_ok.set(1 if ok else 0)
        return False

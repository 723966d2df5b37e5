"""The compiled rate limit configuration: domains of descriptor trees whose nodes may carry a rule.

Both sources compile to this model: envoyproxy/ratelimit YAML files (`config.py`) and the meshgate
policy's quotas (`compile.py`). It is immutable; the service swaps a whole `RateLimitConfig` at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "UNIT_SECONDS",
    "Algorithm",
    "Node",
    "RateLimitConfig",
    "Rule",
    "Unit",
]

Unit = Literal["second", "minute", "hour", "day", "week", "month", "year"]
Algorithm = Literal["fixed_window", "sliding_window"]

# Windows are aligned to the Unix epoch; a month is 30 days and a year 365, as in envoyproxy/ratelimit.
UNIT_SECONDS: Mapping[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One limit: `requests_per_unit` hits per `unit` window (or unlimited)."""

    full_key: str  # "domain.key_value.key": the config path, used as the metric label
    requests_per_unit: int
    unit: Unit
    unlimited: bool = False
    shadow_mode: bool = False
    name: str = ""
    replaces: tuple[str, ...] = ()
    detailed_metric: bool = False
    algorithm: Algorithm = "fixed_window"

    @property
    def window(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass(frozen=True, slots=True)
class Node:
    """A level of the descriptor tree.

    `children` maps (key, value) to the next level; value None is "the key alone" (any value, each
    value counted apart). `wildcards` maps a key to (prefix, node) pairs for values like `foo*`,
    tried in file order after the exact value and before the key alone.
    """

    children: Mapping[tuple[str, str | None], Node] = field(default_factory=dict)
    wildcards: Mapping[str, tuple[tuple[str, Node], ...]] = field(default_factory=dict)
    rule: Rule | None = None

    def step(self, key: str, value: str) -> Node | None:
        exact = self.children.get((key, value))
        if exact is not None:
            return exact
        for prefix, node in self.wildcards.get(key, ()):
            if value.startswith(prefix):
                return node
        return self.children.get((key, None))


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Every domain, by name, and the sources it was built from (for logs)."""

    domains: Mapping[str, Node] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def match(self, domain: str, entries: tuple[tuple[str, str], ...]) -> Rule | None:
        """The rule for a descriptor: walk one level per entry; the depth must match exactly."""
        node = self.domains.get(domain)
        if node is None or not entries:
            return None
        for key, value in entries:
            node = node.step(key, value)
            if node is None:
                return None
        return node.rule

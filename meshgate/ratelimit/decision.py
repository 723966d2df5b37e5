"""What goes into `Limiter.decide` and what comes out: plain types, no protobuf (core.py decides,
service.py converts). `Decision.headers` builds the response headers when asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .model import UNIT_SECONDS, Unit

__all__ = [
    "HEADER_NAMES",
    "POLICY_HEADER",
    "Decision",
    "Descriptor",
    "HeaderStyle",
    "InvalidRequest",
    "Request",
    "Settings",
    "Status",
    "limit_header",
]

HeaderStyle = Literal["none", "x-ratelimit", "draft-03"]


class InvalidRequest(ValueError):
    """The request itself is malformed (empty domain, no descriptors)."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    entries: tuple[tuple[str, str], ...]
    limit: tuple[int, Unit] | None = None  # Envoy's override: (requests_per_unit, unit)
    hits_addend: int | None = None  # None: the request's; 0: check only


@dataclass(frozen=True, slots=True)
class Request:
    domain: str
    descriptors: tuple[Descriptor, ...]
    hits_addend: int = 0  # 0 means 1, as in Envoy
    # the caller hands this same object in again (the servicer keeps it by its bytes): worth keeping
    # what is derived from it. False for a request too large to keep (see bounds.py)
    keep: bool = field(default=True, compare=False)


@dataclass(slots=True)  # hot path: one per descriptor; frozen would cost ~1 us each; never mutated
class Status:
    over_limit: bool = False
    limit: int | None = None  # requests_per_unit; None when no limit applies
    unit: Unit | None = None
    remaining: int = 0
    reset: int = 0  # seconds until the window ends
    name: str = ""  # the rule's name (a policy quota's name): the RateLimit-Policy header names it


@dataclass(slots=True)  # hot path: one per call; frozen would cost ~0.3 us; never mutated
class Decision:
    over_limit: bool
    statuses: tuple[Status, ...]
    style: HeaderStyle = "none"  # the response headers asked for (see `headers`)
    # Decisions with equal `shape`s (not None) differ only in over_limit, each status's over_limit,
    # remaining and reset, and the header values: the same statuses carry a limit (the same limit and
    # unit), the same header names. The service keeps a response per shape and updates it in place.
    shape: object = field(default=None, compare=False, repr=False)

    @property
    def worst(self) -> Status | None:
        """The most constraining status carrying a limit: the first over-limit one, else the first of
        the least remaining; None when no limit applies."""
        worst: Status | None = None
        for s in self.statuses:
            if s.limit is None:
                continue
            if worst is None or (
                (s.over_limit and not worst.over_limit)
                or (s.over_limit == worst.over_limit and s.remaining < worst.remaining)
            ):
                worst = s
        return worst

    @property
    def refused(self) -> str:
        """The names of the rules that refused (over their limit, named), comma-separated in descriptor
        order, each once; "" unless the decision refuses (shadow mode refuses nothing)."""
        if not self.over_limit:
            return ""
        names = dict.fromkeys(s.name for s in self.statuses if s.over_limit and s.name)
        return ",".join(names)

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The response headers of `style`, for the worst status. Built when asked for, not per call:
        the service sets the values it keeps only when their numbers change."""
        worst = self.worst if self.style != "none" else None
        if worst is None or worst.limit is None or worst.unit is None:
            return ()
        limit, remaining, reset = HEADER_NAMES[self.style]
        headers = (
            (limit, limit_header(self.style, worst.limit, worst.unit)),
            (remaining, str(worst.remaining)),
            (reset, str(worst.reset)),
        )
        if worst.name:
            return (*headers, (POLICY_HEADER, policy_header(worst.name, worst.limit, worst.unit)))
        return headers


# the names of the limit, remaining and reset headers of each style
HEADER_NAMES: dict[HeaderStyle, tuple[str, str, str]] = {
    "x-ratelimit": ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"),
    "draft-03": ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"),
}


POLICY_HEADER = "RateLimit-Policy"
"""Names the quota the other headers describe, when its rule has a name (every policy quota does), in
the form of draft-ietf-httpapi-ratelimit-headers (-08 and later): `"tenant-rpm";q=5;w=60`, the quota's
name as a structured-field string, its limit and its window in seconds."""


def policy_header(name: str, limit: int, unit: Unit) -> str:
    """The RateLimit-Policy value of a named rule: `"<name>";q=<limit>;w=<seconds>`."""
    quoted = "".join(c for c in name if " " <= c <= "~").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}";q={limit};w={UNIT_SECONDS[unit]}'


def limit_header(style: HeaderStyle, limit: int, unit: Unit) -> str:
    """The value of the limit header: draft-03 adds the quota policy (`10, 10;w=60`)."""
    return f"{limit}, {limit};w={UNIT_SECONDS[unit]}" if style == "draft-03" else str(limit)


@dataclass(frozen=True, slots=True)
class Settings:
    shadow_mode: bool = False  # global: never refuse, statuses still say OVER_LIMIT
    response_headers: HeaderStyle = "none"
    near_limit_ratio: float = 0.8
    local_cache: bool = True

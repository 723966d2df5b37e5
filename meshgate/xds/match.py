"""What Envoy does with the resources meshgate compiled, for one request: the listener's filters, the
route that matches, where it sends the request, and the rate limit descriptors it builds.

A reading of the compiled messages (the ones the gateway receives over ADS), not a second compiler:
`meshgate explain` asks it about the live snapshot or one compiled from a policy file. It follows
Envoy's semantics for the parts of the route API meshgate emits (path prefix, exact path, path-
separated prefix, regex, header matchers; weighted clusters, mirrors, direct responses; request
header, generic key, header value match and destination cluster rate limit actions). Whatever else
it meets is reported as not evaluated (`Unknown`), never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2

from ._route_tree import flat_routes

__all__ = [
    "EXTAUTHZ_FILTER",
    "RATELIMIT_FILTER",
    "Descriptor",
    "Gateway",
    "Routed",
    "Unknown",
    "descriptors",
    "gateway_of",
    "route",
]

EXTAUTHZ_FILTER = "envoy.filters.http.ext_authz"
RATELIMIT_FILTER = "envoy.filters.http.ratelimit"
JWT_FILTER = "envoy.filters.http.jwt_authn"
_FORMAT = re.compile(r"^%DYNAMIC_METADATA\(([^)]*)\)%$")


class Unknown(Exception):
    """A part of the config this reading does not evaluate (named in the message)."""


@dataclass(frozen=True)
class Gateway:
    """The gateway listener as it concerns one request: its HTTP filters, and the client header prefix
    its early header mutation removes before any route or filter sees the request."""

    filters: tuple[str, ...]
    stripped_prefixes: tuple[str, ...]


def gateway_of(listener: listener_pb2.Listener) -> Gateway:
    hcm = hcm_pb2.HttpConnectionManager()
    chain = listener.filter_chains[0]
    chain.filters[0].typed_config.Unpack(hcm)
    prefixes = []
    for extension in hcm.early_header_mutation_extensions:
        mutation = header_mutation_pb2.HeaderMutation()
        extension.typed_config.Unpack(mutation)
        prefixes += [m.remove_on_match.key_matcher.prefix for m in mutation.mutations
                     if m.HasField("remove_on_match")]  # fmt: skip
    return Gateway(tuple(f.name for f in hcm.http_filters), tuple(p for p in prefixes if p))


@dataclass(frozen=True)
class Routed:
    """The route a request matched and what it does."""

    name: str
    clusters: tuple[tuple[str, int], ...] = ()
    """(cluster, weight): one cluster at weight 100, or the weighted clusters."""
    mirrors: tuple[tuple[str, float], ...] = ()
    """(cluster, percent of requests) copied to the shadow."""
    direct: tuple[int, str] | None = None
    """A direct response (status, body) instead of an upstream."""
    extauthz: bool = True
    """Whether ext_authz runs on it (a route may disable it)."""
    message: rc.Route = field(default_factory=rc.Route, repr=False)


def route(config: route_pb2.RouteConfiguration, headers: Mapping[str, str]) -> Routed | None:
    """The first route whose match holds for `headers` (lowercase names, with :method, :path and
    :authority), or None (Envoy's 404). Raises Unknown at a match it cannot evaluate before that."""
    authority = headers.get(":authority", "")
    hosts = [v for v in config.virtual_hosts if any(d in ("*", authority) for d in v.domains)]
    for host in hosts[:1]:
        for candidate in flat_routes(host):
            if _matches(candidate.match, headers):
                return _routed(candidate)
    return None


def _routed(found: rc.Route) -> Routed:
    extauthz = True
    if EXTAUTHZ_FILTER in found.typed_per_filter_config:
        per_route = ext_authz_pb2.ExtAuthzPerRoute()
        if found.typed_per_filter_config[EXTAUTHZ_FILTER].Unpack(per_route):
            extauthz = not per_route.disabled
    if found.HasField("direct_response"):
        body = found.direct_response.body.inline_bytes.decode(errors="replace")
        body = body or found.direct_response.body.inline_string
        direct = (found.direct_response.status, body)
        return Routed(found.name, direct=direct, extauthz=extauthz, message=found)
    action = found.route
    if action.cluster:
        clusters: tuple[tuple[str, int], ...] = ((action.cluster, 100),)
    elif action.HasField("weighted_clusters"):
        clusters = tuple((c.name, c.weight.value) for c in action.weighted_clusters.clusters)
    else:
        raise Unknown(f"route {found.name!r}: its cluster is chosen by a header or a plugin")
    mirrors = tuple(
        (m.cluster, _percent(m.runtime_fraction.default_value) if m.HasField("runtime_fraction") else 100.0)
        for m in action.request_mirror_policies
    )
    return Routed(found.name, clusters, mirrors, extauthz=extauthz, message=found)


def _percent(fraction: Any) -> float:
    denominators = {0: 100, 1: 10_000, 2: 1_000_000}
    return float(100 * fraction.numerator / denominators[fraction.denominator])


def _matches(match: rc.RouteMatch, headers: Mapping[str, str]) -> bool:
    full = headers.get(":path", "/")
    path = full.split("?", 1)[0]
    kind = match.WhichOneof("path_specifier")
    case = match.case_sensitive.value if match.HasField("case_sensitive") else True

    def same(a: str, b: str) -> bool:
        return a == b if case else a.lower() == b.lower()

    if kind == "prefix":
        ok = full.startswith(match.prefix) if case else full.lower().startswith(match.prefix.lower())
    elif kind == "path":
        ok = same(path, match.path)
    elif kind == "path_separated_prefix":
        prefix = match.path_separated_prefix
        ok = same(path, prefix) or same(path[: len(prefix) + 1], prefix + "/")
    elif kind == "safe_regex":
        ok = re.fullmatch(match.safe_regex.regex, path) is not None
    else:
        raise Unknown(f"route match on {kind}")
    if not ok:
        return False
    if match.HasField("grpc") and not headers.get("content-type", "").startswith("application/grpc"):
        return False
    if match.dynamic_metadata and all(m.filter == JWT_FILTER for m in match.dynamic_metadata):
        return False  # a native fast copy (`_fast`): the route after it routes and counts alike
    if match.query_parameters or match.HasField("runtime_fraction") or match.dynamic_metadata:
        raise Unknown("a route match on query parameters, a runtime fraction or dynamic metadata")
    return all(header_matches(h, headers) for h in match.headers)


def header_matches(matcher: rc.HeaderMatcher, headers: Mapping[str, str]) -> bool:
    """Envoy's HeaderMatcher: present_match false matches an absent header; invert_match flips."""
    value = headers.get(matcher.name.lower())
    if value is None and matcher.treat_missing_header_as_empty:
        value = ""
    kind = matcher.WhichOneof("header_match_specifier")
    if kind is None:
        result = value is not None
    elif kind == "present_match":
        result = (value is not None) == matcher.present_match
    elif value is None:
        result = False
    elif kind == "string_match":
        result = string_matches(matcher.string_match, value)
    elif kind == "exact_match":
        result = value == matcher.exact_match
    elif kind == "range_match":
        try:
            number = int(value)
        except ValueError:
            result = False
        else:
            result = matcher.range_match.start <= number < matcher.range_match.end
    else:
        raise Unknown(f"header match {kind} on {matcher.name}")
    return bool(result != matcher.invert_match)


def string_matches(matcher: Any, value: str) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        return re.fullmatch(matcher.safe_regex.regex, value) is not None
    wanted: str = getattr(matcher, kind)
    if matcher.ignore_case:
        value, wanted = value.lower(), wanted.lower()
    if kind == "exact":
        return bool(value == wanted)
    if kind == "prefix":
        return value.startswith(wanted)
    if kind == "suffix":
        return value.endswith(wanted)
    if kind == "contains":
        return wanted in value
    raise Unknown(f"string match {kind}")


# --- rate limits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """One rate limit descriptor the route makes: its entries and hits, when it is sent."""

    entries: tuple[tuple[str, str], ...]
    hits: int | None
    """The hits_addend (None: the request's, 1)."""
    on_stream_done: bool
    """Sent when the response stream ends (a charge of what was used), not when the request arrives."""


def descriptors(
    found: Routed,
    headers: Mapping[str, str],
    metadata: Mapping[str, Any],
    cluster: str,
) -> tuple[list[Descriptor], list[str]]:
    """The descriptors Envoy's rate limit filter builds on `found` (its per-route rate limits, else the
    route action's), and notes on those it would not send. `metadata`: dynamic metadata as plain
    values by namespace (what ext_authz returned); `cluster`: the cluster the request goes to."""
    limits = list(found.message.route.rate_limits)
    per_filter = found.message.typed_per_filter_config
    if RATELIMIT_FILTER in per_filter:
        per_route = rate_limit_pb2.RateLimitPerRoute()
        if per_filter[RATELIMIT_FILTER].Unpack(per_route) and per_route.rate_limits:
            limits = list(per_route.rate_limits)
    out, notes = [], []
    for limit in limits:
        entries: list[tuple[str, str]] = []
        try:
            for action in limit.actions:
                entry = _entry(action, headers, cluster)
                if entry is None:  # a missing header: Envoy sends no descriptor for this limit
                    raise _Skip(f"{action.request_headers.header_name} is not set")
                if entry != ("", ""):
                    entries.append(entry)
            hits = _hits(limit, metadata)
        except _Skip as skip:
            notes.append(f"not sent ({skip}): {_describe(limit)}")
            continue
        out.append(Descriptor(tuple(entries), hits, limit.apply_on_stream_done))
    return out, notes


class _Skip(Exception):
    pass


def _describe(limit: rc.RateLimit) -> str:
    return ", ".join(a.WhichOneof("action_specifier") or "?" for a in limit.actions)


def _entry(action: rc.RateLimit.Action, headers: Mapping[str, str], cluster: str) -> tuple[str, str] | None:
    kind = action.WhichOneof("action_specifier")
    if kind == "generic_key":
        return (action.generic_key.descriptor_key or "generic_key", action.generic_key.descriptor_value)
    if kind == "request_headers":
        value = headers.get(action.request_headers.header_name.lower())
        if value is None:
            return ("", "") if action.request_headers.skip_if_absent else None
        return (action.request_headers.descriptor_key, value)
    if kind == "header_value_match":
        match = action.header_value_match
        holds = all(header_matches(h, headers) for h in match.headers)
        expect = match.expect_match.value if match.HasField("expect_match") else True
        if holds != expect:
            raise _Skip("its header_value_match does not hold")
        return (match.descriptor_key or "header_match", match.descriptor_value)
    if kind == "destination_cluster":
        return ("destination_cluster", cluster)
    raise _Skip(f"action {kind} is not evaluated")


def _hits(limit: rc.RateLimit, metadata: Mapping[str, Any]) -> int | None:
    if not limit.HasField("hits_addend"):
        return None
    addend = limit.hits_addend
    if not addend.format:
        return int(addend.number.value)
    found = _FORMAT.match(addend.format)
    if found is None:
        raise _Skip(f"hits_addend {addend.format!r} is not evaluated")
    namespace, *path = found.group(1).split(":")
    value: Any = metadata.get(namespace)
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if value is None:
        if limit.apply_on_stream_done:
            return None  # known at stream end only (the backend's usage)
        raise _Skip(f"{addend.format} is not set")
    return int(value)

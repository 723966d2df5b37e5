"""Native enforcement's fast path: an allowed JWT request on a KServe v2 REST path, decided in C++.

The Lua decision (`_native`, native.lua) costs every request a LuaJIT call, about half of what a
hand-written jwt_authn + rbac chain costs in all (docs/native.md, "Performance"). A request that the
decision would allow, and that Envoy's own matchers can recognise as such, skips it:

- before each model route matched by path (a pinned version, an A/B header, the canary), a *fast copy*
  that matches only when its path does (tested first: Envoy tests headers and metadata before the
  path) and jwt_authn verified the token (`dynamic_metadata` matchers on its payload, and on its
  header for keys Envoy fetches: the issuer, an algorithm it allows (inline keys are pinned to those:
  `_native.pinned_keys`), a tenant of one tier that may use the model, a role that
  grants the version, a printable ASCII user of at most MAX_USER_CHARS characters, no iat later than
  `now` + leeway, no tier claim) and the request carries nothing the decision would look at further (a
  second credential, an `Authorization` other than `Bearer <token>`, a browser origin for a tenant whose
  origins are restricted);
- the fast copy turns the Lua filter and the guard off, ext_authz off (auto), and gives the identity
  filter (`IDENTITY_FILTER`, a header mutation, before every rate limit) the headers the decision would
  set: tenant and user from the verified payload, the tier, model and version as constants, the
  decision id (Envoy's x-request-id); `Authorization` removed unless auth.forward_authorization;
- everything else (a refusal, a delegation to extauthz, a claim the matchers cannot read) matches the
  route it matched before, whose Lua decision is unchanged: the fast path only ever allows what the
  decision allows (tests/conformance/test_native.py sends every case through both).

Two facts the matchers cannot see are made visible first:
- the token's size: `auth.max_token_bytes` caps it. jwt_authn reads the token from `BEARER_HEADER`, a copy
  of `Authorization` cut at max_token_bytes + len("Bearer ") (the HCM's early header mutation): a longer
  token is cut, fails verification and goes to the Lua decision (token_too_large). A token ending in `=`
  is left to the decision too (cutting its padding would not break its signature);
- the time: `iat` is compared with a constant, the compile time (less CLOCK_MARGIN for the clocks of
  meshgate and the gateway) plus the issuer's leeway, so the routes are compiled again every
  `CompileOptions.fast_refresh` seconds (`XdsService`; MESHGATE_XDS_FAST_REFRESH, default 20): a token
  issued since takes the Lua path meanwhile (with a leeway of at least the period + CLOCK_MARGIN, the
  default 30 s, none does).
  The native quotas' buckets live on the listener, not in the routes: a refresh keeps them.

The user matcher is a counted regex of RE2 program size ~800: the gateway's bootstrap must raise
`re2.max_program_size.error_level` (`bootstrap.RUNTIME`; `meshgate envoy-bootstrap` does).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TypeAlias

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, number_pb2, regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import range_pb2

from meshgate import contract
from meshgate.policy.model import Issuer, Model, Policy

from ._bodies import EXTAUTHZ_FILTER
from ._native import BEARER_HEADER, DECIDE_FILTER, GUARD_FILTER, JWT_FILTER, pinned_keys
from ._pb import pack
from .bootstrap import RE2_PROGRAM_SIZE

__all__ = [
    "BEARER_HEADER",
    "CLOCK_MARGIN",
    "FAST_STATS",
    "IDENTITY_FILTER",
    "bearer_copy",
    "fast_path",
    "grants_of",
    "identity_filter",
    "pinned_of",
    "with_fast_routes",
]

IDENTITY_FILTER = "meshgate.native.identity"
FAST_STATS = "native_fast"
"""Every fast route's stat prefix when `CompileOptions.fast_stats` is on: Envoy counts the requests
decided in C++ as one route (off by default: route stats cost each request ~1 % of Envoy's CPU)."""
CLOCK_MARGIN = 5
"""Seconds the iat bound stays behind meshgate's clock, for a gateway whose clock is behind it."""
_BEARER = "Bearer "
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_VERSIONED = "/versions/"
_Value: TypeAlias = value_pb2.ValueMatcher
OR_MAX = 4
"""Up to this many names a matcher compares one by one (~60 instructions each); more, one RE2
alternation (constant in the count: 1,000 tenants cost a request ~62,000 instructions one by one)."""
REGEX_CHARS = RE2_PROGRAM_SIZE - 248  # (1,800)
"""The most characters of one alternation. The gateway's bootstrap allows RE2 programs of
`RE2_PROGRAM_SIZE` (2,048), and an alternation of names compiles to fewer instructions than it
has characters (Envoy 1.40's count: 1,791 characters of 63-character random names 1,740; of `t0000`,
`t0001`... 69). More names are split over several fast copies, tried one after the other."""
Grants: TypeAlias = Mapping[str, Mapping[str, Collection[str]]]


def fast_path(policy: Policy) -> bool:
    """Whether the gateway has fast routes: native or auto, with an issuer."""
    return policy.gateway.enforcement != "ext_authz" and bool(policy.issuers)


def bearer_copy(policy: Policy) -> mutation_rules_pb2.HeaderMutation:
    """The early header mutation that copies `Authorization`, cut, into BEARER_HEADER (after the client's
    x-meshgate-* headers are removed)."""
    cut = policy.auth.max_token_bytes + len(_BEARER)
    header = base_pb2.HeaderValue(key=BEARER_HEADER, value=f"%REQ(authorization):{cut}%")
    return mutation_rules_pb2.HeaderMutation(
        append=base_pb2.HeaderValueOption(header=header, append_action=_OVERWRITE)
    )


def identity_filter() -> hcm_pb2.HttpFilter:
    """A header mutation that does nothing but on a fast route, whose config sets the identity. (Not
    `disabled` on the listener: Envoy decides that on the route matched before jwt_authn ran.)"""
    return hcm_pb2.HttpFilter(name=IDENTITY_FILTER, typed_config=pack(header_mutation_pb2.HeaderMutation()))


# --- the routes ----------------------------------------------------------------------------------


def with_fast_routes(
    policy: Policy,
    model: Model,
    routes: Sequence[rc.Route],
    *,
    now: float,
    grants: Grants,
    pinned: Collection[str],
    stats: bool = False,
) -> list[rc.Route]:
    """`routes` (one face of `model`, in order) with a fast copy before each route matched by path, and
    before the first unversioned one a slow copy of the canary route for any other versioned path (a
    version no pin names: the decision refuses it; the unversioned fast copies must not catch it).
    `grants`: `role_grants(policy)` (`grants_of`) and `pinned`: the issuers whose keys are pinned
    (`pinned_of`), both computed once for every model; `stats`: give the fast copies the stat prefix
    FAST_STATS."""
    if not fast_path(policy):
        return list(routes)
    base = f"/v2/models/{model.name}"
    out: list[rc.Route] = []
    caught = False
    for route in routes:
        prefix = route.match.path_separated_prefix
        if not prefix:
            out.append(route)
            continue
        pin = prefix[len(base) + len(_VERSIONED) :] if prefix.startswith(base + _VERSIONED) else ""
        if not pin and not caught:
            out.append(_catch(route, routes, base))
            caught = True
        out.extend(_fast_copies(policy, model, route, pin, now, grants, pinned, stats))
        out.append(route)
    return out


def _catch(route: rc.Route, routes: Sequence[rc.Route], base: str) -> rc.Route:
    canary = next((r for r in routes if r.match.path_separated_prefix == base and not r.match.headers), route)
    catch = rc.Route()
    catch.CopyFrom(canary)
    catch.name = f"{canary.name}|versioned"
    catch.match.Clear()
    # (`/versions` itself and `/versions/` too: the decision answers them as the canary's fast copies would)
    catch.match.path_separated_prefix = base + _VERSIONED.rstrip("/")
    return catch


def grants_of(policy: Policy) -> Grants:
    """role -> model -> the versions it grants: extauthz's `role_grants` (empty without a fast path)."""
    if not fast_path(policy):
        return {}
    from meshgate.extauthz.table import role_grants  # (lazily: importing extauthz loads tritonclient)

    return role_grants(policy)


def pinned_of(policy: Policy) -> frozenset[str]:
    """The issuers whose inline keys jwt_authn gets pinned (`_native.pinned_keys`): no alg to check."""
    return frozenset(i.name for i in policy.issuers if fast_path(policy) and pinned_keys(i))


def _fast_copies(
    policy: Policy,
    model: Model,
    route: rc.Route,
    pin: str,
    now: float,
    grants: Grants,
    pinned: Collection[str],
    stats: bool,
) -> Iterator[rc.Route]:
    roles = sorted(
        role
        for role, found in grants.items()
        if model.name in found and (not pin or pin in found[model.name])
    )
    if not roles:
        return
    tenants = [t for t in policy.tenants if model.visibility != "private" or t.name == model.owner]
    groups: dict[tuple[str, bool], list[str]] = {}
    for tenant in tenants:
        groups.setdefault((tenant.tier or "default", bool(tenant.allowed_origins)), []).append(tenant.name)
    for issuer in policy.issuers:
        if not _readable(issuer):
            continue
        for (tier, restricted), all_names in sorted(groups.items()):
            parts = alternations(all_names)
            for part, names in enumerate(parts):
                name = f"{route.name}|fast|{issuer.name}|{tier}{'|no-origin' if restricted else ''}"
                name += f"|{part + 1}" if len(parts) > 1 else ""
                claims = _claims(policy, issuer, names, roles, now, pinned=issuer.name in pinned)
                yield _fast_copy(policy, model, route, name, pin, (issuer, tier, restricted), claims, stats)


def _fast_copy(
    policy: Policy,
    model: Model,
    route: rc.Route,
    name: str,
    pin: str,
    group: tuple[Issuer, str, bool],
    claims: Iterator[metadata_pb2.MetadataMatcher],
    stats: bool,
) -> rc.Route:
    """One fast copy of `route`: for the tokens of `group` (issuer, tier, origins restricted) whose
    payload `claims` match."""
    issuer, tier, restricted = group
    fast = rc.Route()
    fast.CopyFrom(route)
    fast.name = name
    if stats:
        fast.stat_prefix = FAST_STATS  # vhost.models.route.native_fast.upstream_rq_*: one count
    fast.match.dynamic_metadata.extend(claims)
    # Envoy matches a route's headers and metadata before its path: a request for another path
    # fails first on this cheap copy of the path's test (each fast copy of each model before
    # the request's route is tried twice per request, before and after jwt_authn)
    guards = [_path_prefix(route.match.path_separated_prefix), *fast.match.headers]
    del fast.match.headers[:]
    fast.match.headers.extend([*guards, *_headers(policy, restricted)])
    _decided_here(policy, fast, model, pin, issuer, tier)
    return fast


def _readable(issuer: Issuer) -> bool:
    """Claims the matchers and the formatter can name: a key without '.' (the decision also reads a
    dotted path) or ':' (the formatter's separator)."""
    names = issuer.claims
    claims = [names.tenant, names.user, names.roles, *([names.tier] if names.tier else [])]
    return not any("." in c or ":" in c for c in claims)


def _claims(
    policy: Policy, issuer: Issuer, tenants: list[str], roles: list[str], now: float, *, pinned: bool
) -> Iterator[metadata_pb2.MetadataMatcher]:
    from meshgate.extauthz.core import MAX_USER_CHARS

    names = issuer.claims
    yield _payload("iss", _exact(issuer.issuer))
    if not pinned:  # (pinned: jwt_authn verifies no other algorithm, `_native.pinned_keys`)
        yield _md("header", "alg", _any_of(issuer.algorithms))
    yield _payload(names.tenant, _any_of(tenants))
    granting = value_pb2.ListMatcher(one_of=_any_of(roles))
    yield _payload(names.roles, value_pb2.ValueMatcher(list_match=granting))
    printable = f"[\\x20-\\x7e]{{1,{MAX_USER_CHARS}}}"  # (ASCII: other users take the Lua path)
    user = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=printable))
    yield _payload(names.user, value_pb2.ValueMatcher(string_match=user))
    bound = math.floor(now) - CLOCK_MARGIN + math.floor(issuer.leeway)
    future = number_pb2.DoubleMatcher(range=range_pb2.DoubleRange(start=bound, end=1e300))
    yield _payload("iat", value_pb2.ValueMatcher(double_match=future), invert=True)  # absent, or before
    if names.tier:
        yield _payload(names.tier, value_pb2.ValueMatcher(present_match=True), invert=True)


def _path_prefix(prefix: str) -> rc.HeaderMatcher:
    """`:path` starts with `prefix`: true of every path `path_separated_prefix: prefix` matches."""
    return rc.HeaderMatcher(name=":path", string_match=string_pb2.StringMatcher(prefix=prefix))


def _headers(policy: Policy, restricted: bool) -> Iterator[rc.HeaderMatcher]:
    yield rc.HeaderMatcher(name="authorization", string_match=string_pb2.StringMatcher(prefix=_BEARER))
    # (jwt_authn skips what precedes the token; the decision, in auto, leaves that to extauthz)
    yield rc.HeaderMatcher(
        name="authorization", string_match=string_pb2.StringMatcher(prefix=_BEARER + " "), invert_match=True
    )
    yield rc.HeaderMatcher(
        name="authorization", string_match=string_pb2.StringMatcher(suffix="="), invert_match=True
    )
    absent = [policy.auth.api_key_header, *(("origin", "sec-fetch-site") if restricted else ())]
    for name in absent:
        yield rc.HeaderMatcher(name=name, present_match=True, invert_match=True)


def _decided_here(policy: Policy, route: rc.Route, model: Model, pin: str, issuer: Issuer, tier: str) -> None:
    per = route.typed_per_filter_config
    per[DECIDE_FILTER].CopyFrom(pack(lua_pb2.LuaPerRoute(disabled=True)))
    if policy.gateway.enforcement == "native":
        per[GUARD_FILTER].CopyFrom(pack(rbac_pb2.RBACPerRoute()))
    else:
        per[EXTAUTHZ_FILTER].CopyFrom(pack(ext_authz_pb2.ExtAuthzPerRoute(disabled=True)))
    names = issuer.claims
    identity = [
        (contract.TENANT_HEADER, f"%DYNAMIC_METADATA({JWT_FILTER}:payload:{names.tenant})%"),
        (contract.USER_HEADER, f"%DYNAMIC_METADATA({JWT_FILTER}:payload:{names.user})%"),
        (contract.TIER_HEADER, _literal(tier)),
        (contract.MODEL_HEADER, _literal(model.name)),
        *([(contract.VERSION_HEADER, _literal(pin))] if pin else []),
        (contract.DECISION_ID_HEADER, "%REQ(x-request-id)%"),
    ]
    mutations = [
        mutation_rules_pb2.HeaderMutation(
            append=base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
            )
        )
        for key, value in identity
    ]
    mutations.append(mutation_rules_pb2.HeaderMutation(remove=BEARER_HEADER))
    if not policy.auth.forward_authorization:
        mutations.append(mutation_rules_pb2.HeaderMutation(remove="authorization"))
    config = header_mutation_pb2.HeaderMutationPerRoute(
        mutations=header_mutation_pb2.Mutations(request_mutations=mutations)
    )
    per[IDENTITY_FILTER].CopyFrom(pack(config))


def _literal(text: str) -> str:
    """`text` as a formatter string ('%' doubled)."""
    return text.replace("%", "%%")


def _payload(claim: str, value: _Value, *, invert: bool = False) -> metadata_pb2.MetadataMatcher:
    return _md("payload", claim, value, invert=invert)


def _md(where: str, key: str, value: _Value, *, invert: bool = False) -> metadata_pb2.MetadataMatcher:
    segments = [metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in (where, key)]
    return metadata_pb2.MetadataMatcher(filter=JWT_FILTER, path=segments, value=value, invert=invert)


def _exact(text: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=text))


def alternations(names: Sequence[str]) -> list[list[str]]:
    """`names` sorted, in parts of at most REGEX_CHARS characters as one alternation (`_any_of`)."""
    parts: list[list[str]] = [[]]
    size = 0
    for name in sorted(names):
        width = len(_escaped(name)) + 1
        if parts[-1] and size + width > REGEX_CHARS:
            parts.append([])
            size = 0
        parts[-1].append(name)
        size += width
    return parts


def _any_of(texts: Sequence[str]) -> value_pb2.ValueMatcher:
    """Matches a string equal to one of `texts`: one by one up to OR_MAX, else one RE2 alternation (a
    full match) when it fits REGEX_CHARS, else one by one again."""
    if len(texts) == 1:  # (an OrMatcher needs two)
        return _exact(texts[0])
    alternation = "|".join(_escaped(t) for t in sorted(texts))
    if len(texts) <= OR_MAX or len(alternation) > REGEX_CHARS:
        return _Value(or_match=value_pb2.OrMatcher(value_matchers=[_exact(t) for t in sorted(texts)]))
    regex = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=alternation))
    return _Value(string_match=regex)


def _escaped(text: str) -> str:
    """`text` as an RE2 literal: every character but a letter, digit or `_` escaped."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else f"\\{c}" for c in text)

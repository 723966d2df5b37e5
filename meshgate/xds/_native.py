"""gateway.enforcement native | auto: the policy's authorization compiled into Envoy's own filters.

Three filters, before ext_authz (docs/native.md):
- `envoy.filters.http.jwt_authn` verifies a bearer JWT against each issuer's keys (inline JWKS, or its
  `jwks_uri` fetched and cached by Envoy), never refusing by itself (`allow_missing_or_failed`): it leaves
  the verified payload and header, or each issuer's failure status, in the dynamic metadata;
- `meshgate.native.decide`, a Lua filter: meshgate/xds/native.lua, the decision of
  meshgate/extauthz/core.py (same order, codes, statuses and bodies) over tables compiled here from the
  policy (`decision_table`): it refuses, or sets the identity headers, marks the request decided and
  clears the route cache (the model's route is then chosen on x-meshgate-model, as after ext_authz);
- native only: `meshgate.native.guard`, an RBAC filter that refuses (403) every request the Lua filter
  did not mark decided: if the script ever fails, nothing passes unchecked.
In auto the ext_authz filter stays and runs for every request not marked decided (`undecided`): API
keys (stored hashed: Envoy's api_key_auth would need them in plain text), models named in an OpenAI or
gRPC body, OpenAI's model list. What a native policy cannot hold is `meshgate.policy.native.native_gaps`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import sys
from collections.abc import Mapping
from typing import Any, cast

from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, value_pb2

from meshgate import contract
from meshgate.clip import LOGGED_STRING_BYTES
from meshgate.policy.model import Issuer, Policy

from . import _names
from ._pb import duration, pack

__all__ = [
    "DECIDE_FILTER",
    "GUARD_FILTER",
    "JWT_FILTER",
    "NAMESPACE",
    "decision_table",
    "disable_on",
    "jwks_remote",
    "lua_source",
    "native_filters",
    "pinned_keys",
    "undecided",
]

JWT_FILTER = "envoy.filters.http.jwt_authn"
DECIDE_FILTER = "meshgate.native.decide"
GUARD_FILTER = "meshgate.native.guard"
NAMESPACE = "meshgate.native"
"""Dynamic metadata the Lua filter writes: `decided` (true) on a request it decided."""
_PAYLOAD, _HEADER = "payload", "header"
BEARER_HEADER = contract.HEADER_PREFIX + "bearer"
"""Where jwt_authn reads the token: Authorization, cut at auth.max_token_bytes + len("Bearer ") (`_fast`)."""
_JWT_REQUIREMENT = "meshgate"
# the Authorization spellings jwt_authn reads (a bearer in another spelling: ext_authz in auto)
_BEARER_PREFIXES = ("Bearer ", "bearer ", "BEARER ")


def native_filters(policy: Policy) -> list[hcm_pb2.HttpFilter]:
    """The filters that decide natively, in chain order (before ext_authz, before any rate limit)."""
    filters = []
    if policy.issuers:
        filters.append(hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=pack(_jwt_authn(policy))))
    lua = lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string=lua_source(policy)), stat_prefix="native"
    )
    filters.append(hcm_pb2.HttpFilter(name=DECIDE_FILTER, typed_config=pack(lua)))
    if policy.gateway.enforcement == "native":
        filters.append(hcm_pb2.HttpFilter(name=GUARD_FILTER, typed_config=pack(_guard())))
    return filters


def undecided() -> metadata_pb2.MetadataMatcher:
    """Matches a request the Lua filter did not mark decided (ext_authz's `filter_enabled_metadata`)."""
    return metadata_pb2.MetadataMatcher(
        filter=NAMESPACE,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key="decided")],
        value=value_pb2.ValueMatcher(bool_match=True),
        invert=True,
    )


def disable_on(route: rc.Route) -> None:
    """A route that needs no credential (gateway.public_server_api): no native decision, no guard."""
    route.typed_per_filter_config[DECIDE_FILTER].CopyFrom(pack(lua_pb2.LuaPerRoute(disabled=True)))
    route.typed_per_filter_config[GUARD_FILTER].CopyFrom(pack(rbac_pb2.RBACPerRoute()))


def jwks_remote(policy: Policy) -> list[Issuer]:
    """Issuers whose keys Envoy fetches itself (their `jwks_uri`): each needs a cluster (`_clusters`)."""
    return [i for i in policy.issuers if i.jwks is None and i.jwks_uri is not None]


# --- jwt_authn -----------------------------------------------------------------------------------


def _jwt_authn(policy: Policy) -> jwt_pb2.JwtAuthentication:
    providers = {issuer.name: _provider(issuer, policy) for issuer in policy.issuers}
    anyone = [jwt_pb2.JwtRequirement(provider_name=name) for name in providers]
    anyone.append(jwt_pb2.JwtRequirement(allow_missing_or_failed={}))
    requirement = jwt_pb2.JwtRequirement(requires_any=jwt_pb2.JwtRequirementOrList(requirements=anyone))
    return jwt_pb2.JwtAuthentication(
        providers=providers,
        requirement_map={_JWT_REQUIREMENT: requirement},
        rules=[jwt_pb2.RequirementRule(match=rc.RouteMatch(prefix="/"), requirement_name=_JWT_REQUIREMENT)],
    )


def _provider(issuer: Issuer, policy: Policy) -> jwt_pb2.JwtProvider:
    provider = jwt_pb2.JwtProvider(
        issuer=issuer.issuer,
        audiences=list(issuer.audiences),
        require_expiration=True,  # exp is required (meshgate.extauthz.tokens: exp, iss, aud)
        # Authorization, cut at max_token_bytes (the early header mutation's copy: `_fast.bearer_copy`)
        from_headers=[jwt_pb2.JwtHeader(name=BEARER_HEADER, value_prefix=p) for p in _BEARER_PREFIXES],
        forward=False,  # (the copy; Authorization is removed by the decision unless forward_authorization)
        clear_route_cache=True,  # the fast routes (`_fast`) match on the verified payload
        payload_in_metadata=_PAYLOAD,
        failed_status_in_metadata=_failed_key(issuer),
        clock_skew_seconds=round(issuer.leeway),
        jwt_cache_config=jwt_pb2.JwtCacheConfig(
            jwt_cache_size=1000, jwt_max_token_size=policy.auth.max_token_bytes
        ),
    )
    keys = pinned_keys(issuer)
    if not keys:  # jwt_authn may verify an algorithm the issuer does not allow: the decision checks it
        provider.header_in_metadata = _HEADER
    if issuer.jwks is not None:
        from meshgate.extauthz.table import plain  # (lazily: see decision_table)

        jwks = {"keys": keys} if keys else plain(issuer.jwks)
        provider.local_jwks.inline_string = json.dumps(jwks, sort_keys=True)
    elif issuer.jwks_uri is not None:
        provider.remote_jwks.CopyFrom(
            jwt_pb2.RemoteJwks(
                http_uri=http_uri_pb2.HttpUri(
                    uri=issuer.jwks_uri, cluster=_names.jwks_cluster(issuer.name), timeout=duration(5.0)
                ),
                cache_duration=duration(issuer.jwks_cache.min_ttl),
                async_fetch=jwt_pb2.JwksAsyncFetch(),  # fetched when the listener starts, then refreshed
            )
        )
    return provider


def pinned_keys(issuer: Issuer) -> list[dict[str, Any]]:
    """An inline JWKS as jwt_authn must get it to verify only what extauthz verifies (`pinned_jwks`:
    each key's alg set), or [] (keys Envoy fetches itself; or no key fits an allowed
    algorithm): then jwt_authn writes the token's header in the metadata and the decision checks its
    alg, the fast routes too."""
    if issuer.jwks is None:
        return []
    from meshgate.extauthz.keys import pinned_jwks  # (lazily: see decision_table)
    from meshgate.extauthz.table import plain

    return pinned_jwks(cast(Mapping[str, Any], plain(issuer.jwks)), issuer.algorithms)


def _failed_key(issuer: Issuer) -> str:
    return f"failed:{issuer.name}"


def _guard() -> rbac_pb2.RBAC:
    decided = rbac_config_pb2.Principal(
        metadata=metadata_pb2.MetadataMatcher(
            filter=NAMESPACE,
            path=[metadata_pb2.MetadataMatcher.PathSegment(key="decided")],
            value=value_pb2.ValueMatcher(bool_match=True),
        )
    )
    policy = rbac_config_pb2.Policy(permissions=[rbac_config_pb2.Permission(any=True)], principals=[decided])
    return rbac_pb2.RBAC(
        rules=rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.ALLOW, policies={"decided": policy})
    )


# --- the decision table --------------------------------------------------------------------------


def decision_table(policy: Policy) -> dict[str, Any]:
    """Everything native.lua reads, from the same sources as extauthz's table (`P` in the script)."""
    # (imported here: importing meshgate.extauthz loads tritonclient, which `meshgate models` avoids)
    from meshgate.extauthz.core import MAX_USER_CHARS
    from meshgate.extauthz.request import CODES
    from meshgate.extauthz.responses import OPENAI_ERROR_TYPES
    from meshgate.extauthz.table import role_grants
    from meshgate.extauthz.target import GRPC_PREFIX, MODEL_LISTS, SERVER_PATHS
    from meshgate.extauthz.tokens import KNOWN_ALGS, NOT_COMPACT, NOT_JSON_OBJECTS

    auto = policy.gateway.enforcement == "auto"
    grants = role_grants(policy)
    models = {}
    for model in policy.models:
        per_role = {role: _set(found[model.name]) for role, found in grants.items() if model.name in found}
        models[model.name] = {
            "owner": model.owner if model.visibility == "private" and model.owner else False,
            "versions": _set(pin for v in model.versions for pin in v.pins),
            "grants": per_role,
        }
    return {
        "namespace": NAMESPACE,
        "auto": auto,
        "clip": LOGGED_STRING_BYTES,
        "max_user_chars": MAX_USER_CHARS,
        "unprintable": _unprintable(),
        "max_token_bytes": policy.auth.max_token_bytes,
        "api_key_header": policy.auth.api_key_header,
        "forward_authorization": policy.auth.forward_authorization,
        "decision_id_header": contract.DECISION_ID_HEADER,
        "bearer_header": BEARER_HEADER,
        "headers": {
            "tenant": contract.TENANT_HEADER,
            "user": contract.USER_HEADER,
            "tier": contract.TIER_HEADER,
            "model": contract.MODEL_HEADER,
            "version": contract.VERSION_HEADER,
        },
        "codes": dict(CODES),
        "openai_types": dict(OPENAI_ERROR_TYPES),
        "openai_prefixes": list(contract.OPENAI_PREFIXES),
        "model_lists": list(MODEL_LISTS),
        "server_paths": _set(SERVER_PATHS),
        "delegate_prefixes": [*contract.OPENAI_PREFIXES, GRPC_PREFIX] if auto else [],
        "algorithms": _set(KNOWN_ALGS),
        "not_compact": NOT_COMPACT,
        "not_json_objects": NOT_JSON_OBJECTS,
        "issuers": {i.issuer: _issuer(i) for i in policy.issuers},
        "tenants": {
            t.name: {
                "tier": t.tier or "default",
                "origins": _set(t.allowed_origins) if t.allowed_origins else False,
            }
            for t in policy.tenants
        },
        "tiers": _set(t.name for t in policy.tiers),
        "models": models,
    }


def _issuer(issuer: Issuer) -> dict[str, Any]:
    from meshgate.extauthz.keys import KeySet
    from meshgate.extauthz.table import plain

    names = issuer.claims
    claims = {"tenant": names.tenant, "user": names.user, "roles": names.roles}
    if names.tier is not None:
        claims["tier"] = names.tier
    keys = issuer.jwks.get("keys", ()) if issuer.jwks is not None else ()
    fits: dict[str, Any] = {}
    if issuer.jwks is not None:  # which (alg, kid) some key can verify: KeySet.candidates, as extauthz
        jwks = cast(Mapping[str, Any], plain(issuer.jwks))
        keyset = KeySet.parse(jwks, source=f"issuer {issuer.name} jwks")
        kids = {k["kid"] for k in keys if isinstance(k, Mapping) and isinstance(k.get("kid"), str)}
        for alg in issuer.algorithms:
            fitting = keyset.candidates(None, alg)
            fits[alg] = {
                "any": bool(fitting),
                "kidless": any(key.kid is None for key in fitting),  # (tried for a token of any kid)
                "kids": _set(kid for kid in kids if keyset.candidates(kid, alg)),
            }
    return {
        "fits": fits,
        "pinned": bool(pinned_keys(issuer)),  # (jwt_authn verified only allowed algorithms: no header)
        "name": issuer.name,
        "algs": _set(issuer.algorithms),
        "claims": claims,
        "leeway": issuer.leeway,
        "failed": _failed_key(issuer),
        "kids": _set(k["kid"] for k in keys if isinstance(k, Mapping) and isinstance(k.get("kid"), str)),
    }


@functools.cache
def _unprintable() -> list[int]:
    """Every non-ASCII code point this Python's str.isprintable() refuses (what extauthz checks a user
    claim with), as sorted [first, last] pairs, flat: about 700 ranges."""
    pairs: list[int] = []
    start = None
    for cp in range(0x80, sys.maxunicode + 2):
        refused = cp <= sys.maxunicode and not chr(cp).isprintable()
        if refused and start is None:
            start = cp
        elif not refused and start is not None:
            pairs += [start, cp - 1]
            start = None
    return pairs


def _set(items: Any) -> dict[str, bool]:
    return {str(item): True for item in sorted(items)}


def lua_source(policy: Policy) -> str:
    """native.lua with the policy's decision table in front of it as `local P`."""
    script = importlib.resources.files("meshgate.xds").joinpath("native.lua").read_text(encoding="utf-8")
    return f"local P = {_lua(decision_table(policy))}\n{script}"


def _lua(value: Any) -> str:
    """A Lua literal of JSON-like data (deterministic: keys sorted; strings escaped byte by byte)."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return (
            '"'
            + "".join(
                c if (c.isalnum() and c.isascii()) or c in " _.,:/@+-*<>'" else _escape(c) for c in value
            )
            + '"'
        )
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def _escape(char: str) -> str:
    return "".join(f"\\{byte:03d}" for byte in char.encode("utf-8"))

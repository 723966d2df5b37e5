"""Checks across the whole document: names unique, references resolve, weights add up.

Each check yields (field path, message); `load.py` turns paths into file:line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from fnmatch import fnmatchcase
from typing import Any, cast

from .. import contract
from ._fields import UINT32_MAX
from .errors import Path, format_path
from .model import Model, Policy
from .native import _USE_AUTO, native_gaps

__all__ = ["cross_check", "warnings_of"]

Found = Iterator[tuple[Path, str]]


def cross_check(policy: Policy) -> list[tuple[Path, str]]:
    checks: tuple[Callable[[Policy], Found], ...] = (
        _unique_names,
        _api_keys,
        _tenants,
        _roles,
        _models,
        _quotas,
        _inline_keys,
        _llm_fields,
        _token_quotas,
        _enforcement,
    )
    return [found for check in checks for found in check(policy)]


def warnings_of(policy: Policy) -> list[tuple[Path, str]]:
    """What is valid but probably not meant: (field path, message), for `meshgate validate`."""
    plan = contract.quota_plan(policy)
    found: list[tuple[Path, str]] = []
    for i, quota in enumerate(policy.quotas):
        if quota.unit == "tokens":
            counted = [m for m in policy.models if m.name in plan.models[quota.name]]
            found += _below_one_request(policy, i, counted)
    found += _timeouts(policy)
    return found


def _timeouts(p: Policy) -> Found:
    """A duration longer than the one that bounds it: valid, but it never takes effect."""
    for i, model in enumerate(p.models):
        per_try = model.retries.per_try_timeout
        if per_try is not None and per_try > model.timeout:
            yield ("models", i, "retries", "per_try_timeout"), (
                f"a try's timeout ({per_try:g}s) is longer than the route's ({model.timeout:g}s), which ends "
                "the request first"
            )
        probe = model.health_check
        if probe.enabled and probe.timeout > probe.interval:
            yield ("models", i, "health_check", "timeout"), (
                f"a probe's timeout ({probe.timeout:g}s) is longer than the time between probes "
                f"({probe.interval:g}s)"
            )


def _enforcement(p: Policy) -> Found:
    """gateway.enforcement native: every feature Envoy cannot enforce alone is an error (docs/native.md)."""
    if p.gateway.enforcement != "native":
        return
    yield from native_gaps(p)
    from ..xds._native_quotas import native_quota_gaps  # (the compiler knows what its filters hold)

    for path, why in native_quota_gaps(p):
        yield path, f"native: {why}; {_USE_AUTO}"


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _duplicates(section: str, items: Iterable[Any], attr: str, what: str) -> Found:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, attr)
        if value in seen:
            yield (section, i, attr), f"duplicate {what} {value!r} (first at {section}[{seen[value]}])"
        else:
            seen[value] = i


def _unique_names(p: Policy) -> Found:
    for section in ("issuers", "tiers", "tenants", "roles", "models", "quotas"):
        yield from _duplicates(section, getattr(p, section), "name", section.rstrip("s") + " name")
    yield from _duplicates("issuers", p.issuers, "issuer", "issuer URL")
    yield from _duplicates("api_keys", p.api_keys, "id", "api key id")
    yield from _duplicates("api_keys", p.api_keys, "sha256", "api key hash")
    for m, model in enumerate(p.models):
        for path, msg in _duplicates("versions", model.versions, "name", "version name"):
            yield ("models", m, *path), msg
        for v, version in enumerate(model.versions):
            for field in ("endpoints", "grpc_endpoints"):
                yield from _repeated(("models", m, "versions", v, field), getattr(version, field))
    for t, tenant in enumerate(p.tenants):
        yield from _repeated(("tenants", t, "quotas"), tenant.quotas)
        yield from _repeated(("tenants", t, "allowed_origins"), tenant.allowed_origins)
    for k, key in enumerate(p.api_keys):
        yield from _repeated(("api_keys", k, "roles"), key.roles)


def _repeated(at: Path, items: Iterable[str]) -> Found:
    """A list that names one thing twice (a quota counted twice, an endpoint weighted twice)."""
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item in seen:
            yield (*at, i), f"{item!r} is listed twice (first at {format_path((*at, seen[item]))})"
        seen.setdefault(item, i)


def _api_keys(p: Policy) -> Found:
    tenants = {t.name for t in p.tenants}
    roles = {r.name for r in p.roles}
    for i, key in enumerate(p.api_keys):
        if key.tenant not in tenants:
            yield ("api_keys", i, "tenant"), f"unknown tenant {key.tenant!r}"
        for j, role in enumerate(key.roles):
            if role not in roles:
                yield ("api_keys", i, "roles", j), f"unknown role {role!r}"


def _tenants(p: Policy) -> Found:
    tiers = {t.name for t in p.tiers}
    quotas = {q.name for q in p.quotas}
    for i, tenant in enumerate(p.tenants):
        if tenant.tier is not None and tenant.tier not in tiers:
            yield ("tenants", i, "tier"), f"unknown tier {tenant.tier!r}"
        for j, quota in enumerate(tenant.quotas):
            if quota not in quotas:
                yield ("tenants", i, "quotas", j), f"unknown quota {quota!r}"


def _match_models(p: Policy, pattern: str) -> list[Model]:
    return [m for m in p.models if fnmatchcase(m.name, pattern)]


def _roles(p: Policy) -> Found:
    for i, role in enumerate(p.roles):
        matched: list[Model] = []
        for j, pattern in enumerate(role.models):
            hits = _match_models(p, pattern)
            if not hits:
                what = "matches no model" if _is_glob(pattern) else "is not a model"
                yield ("roles", i, "models", j), f"{pattern!r} {what}"
            matched += hits
        versions = {v.name for m in matched for v in m.versions}
        for j, pattern in enumerate(role.versions):
            if matched and not any(fnmatchcase(v, pattern) for v in versions):
                yield ("roles", i, "versions", j), f"{pattern!r} matches no version of the role's models"


def _models(p: Policy) -> Found:
    tenants = {t.name for t in p.tenants}
    for i, model in enumerate(p.models):
        at: Path = ("models", i)
        if model.owner is not None and model.owner not in tenants:
            yield (*at, "owner"), f"unknown tenant {model.owner!r}"
        yield from _weights(model, at)
        if model.shadow is not None:
            shadow = model.version(model.shadow.version)
            if shadow is None:
                yield (*at, "shadow", "version"), f"unknown version {model.shadow.version!r}"
            elif shadow.weight:
                yield (
                    (*at, "shadow", "version"),
                    (f"shadow version {shadow.name!r} also has weight {shadow.weight}: give it weight 0"),
                )
        yield from _pins(model, at)
        seen: set[tuple[str, str]] = set()
        for j, ab in enumerate(model.ab):
            if model.version(ab.version) is None:
                yield (*at, "ab", j, "version"), f"unknown version {ab.version!r}"
            if (ab.header, ab.value) in seen:
                yield (*at, "ab", j), f"duplicate match {ab.header}: {ab.value!r}"
            seen.add((ab.header, ab.value))


def _pins(model: Model, at: Path) -> Found:
    """A pinned request (`/versions/{pin}`) must name one version: a backend_version may not be another
    version's name or another version's backend_version."""
    owner: dict[str, str] = {}
    for j, version in enumerate(model.versions):
        for pin in version.pins:
            other = owner.setdefault(pin, version.name)
            if other != version.name:
                yield (
                    (*at, "versions", j, "backend_version" if pin != version.name else "name"),
                    f"{pin!r} would pin both versions {other!r} and {version.name!r}",
                )


def _weights(model: Model, at: Path) -> Found:
    unset = [j for j, v in enumerate(model.versions) if v.weight is None]
    for j in unset:
        yield (*at, "versions", j, "weight"), "weight is required when a model has several versions"
    if not unset:
        total = sum(v.weight or 0 for v in model.versions)
        if total != 100:
            parts = " + ".join(f"{v.name}={v.weight}" for v in model.versions)
            yield (*at, "versions"), f"version weights must add up to 100, got {total} ({parts})"


def _inline_keys(p: Policy) -> Found:
    """An inline `jwks` must hold a key extauthz can use (the same parse, KeySet.parse)."""
    inline = [(i, issuer) for i, issuer in enumerate(p.issuers) if issuer.jwks is not None]
    if not inline:
        return
    from ..extauthz.keys import KeySet  # (imported only here: meshgate.extauthz is slow to import)
    from ..extauthz.table import plain

    for i, issuer in inline:
        try:
            KeySet.parse(cast(Mapping[str, Any], plain(issuer.jwks)), source=f"issuer {issuer.name} jwks")
        except ValueError as exc:
            yield ("issuers", i, "jwks"), str(exc)


def _quotas(p: Policy) -> Found:
    for i, quota in enumerate(p.quotas):
        for j, pattern in enumerate(quota.models):
            if pattern != "*" and not _match_models(p, pattern):
                yield ("quotas", i, "models", j), f"{pattern!r} matches no model"
        counted = [t for t in p.tenants if quota.name in t.quotas] if "tenant" in quota.per else []
        for tenant in counted:  # (a quota not counted per tenant takes no multiplier)
            limit = contract.quota_limit(p, quota, tenant.name)
            if limit > UINT32_MAX:
                yield ("quotas", i, "limit"), (
                    f"{quota.limit} times the multiplier of tier {tenant.tier!r} (tenant {tenant.name!r}) is "
                    f"{limit}, more than {UINT32_MAX} (what a rate limit holds)"
                )
                break


def _llm_fields(p: Policy) -> Found:
    """Fields only an LLM (protocol openai) has a use for."""
    for i, model in enumerate(p.models):
        if model.protocol == "openai":
            continue
        why = f"is for LLMs (protocol openai); model {model.name!r} is protocol {model.protocol}"
        if model.context_limit_tokens is not None:
            yield ("models", i, "context_limit_tokens"), f"context_limit_tokens {why}"
        if model.tokenizer is not None:
            yield ("models", i, "tokenizer"), f"tokenizer {why}"
        if model.max_json_answer_bytes is not None:
            yield ("models", i, "max_json_answer_bytes"), f"max_json_answer_bytes {why}"
        for j, version in enumerate(model.versions):
            if version.served_name is not None:
                yield ("models", i, "versions", j, "served_name"), f"served_name {why}"


def _token_quotas(p: Policy) -> Found:
    """A tokens quota counts what LLMs report: only protocol openai models report it."""
    for i, quota in enumerate(p.quotas):
        if quota.unit != "tokens":
            continue
        for j, pattern in enumerate(quota.models):
            if pattern == "*":
                continue
            for model in _match_models(p, pattern):
                if model.protocol != "openai":
                    message = (
                        f"a tokens quota counts LLM tokens; model {model.name!r} is protocol "
                        f"{model.protocol}, which reports none (only protocol openai models do)"
                    )
                    yield ("quotas", i, "models", j), message


def _below_one_request(p: Policy, i: int, counted: list[Model]) -> Found:
    """A tokens quota smaller than one request of a model it counts may ask for (its context limit):
    valid when every client sends a small enough max_tokens, and a trap otherwise (a warning)."""
    quota = p.quotas[i]
    tenants = [t.name for t in p.tenants if quota.name in t.quotas] if "tenant" in quota.per else [None]
    for model in counted:
        context = model.context_limit_tokens
        if model.protocol != "openai" or context is None:
            continue
        for tenant in tenants:
            limit = contract.quota_limit(p, quota, tenant)
            if limit < context:
                whose = f" for tenant {tenant}" if tenant is not None and limit != quota.limit else ""
                message = (
                    f"limit {limit}{whose} is below the context limit {context} of model {model.name!r}: "
                    f"a request without max_tokens asks for up to {context} tokens and would always be "
                    "refused; raise the limit or lower context_limit_tokens"
                )
                yield ("quotas", i, "limit"), message
                break

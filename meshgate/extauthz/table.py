"""Policy -> AuthzTable: everything a decision needs, looked up by key, compiled once per policy.

Pure apart from reading shared secrets (env/file) named by the policy; remote JWK sets are not
fetched here: `remote_keys` hands back the live KeySource a refresher keeps filled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, cast

from ..policy.model import ApiKey, AuthSettings, ClaimMap, Issuer, Model, Policy, Tenant
from .keys import KeySource, SecretKey, StaticKeys, load_secret
from .prompt import TokenCounter

__all__ = ["AuthzTable", "IssuerEntry", "ModelEntry", "compile_table", "plain", "role_grants"]

RemoteKeys = Callable[[Issuer], KeySource]


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerEntry:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    claims: ClaimMap
    leeway: float
    keys: KeySource | None = None
    secret: SecretKey | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelEntry:
    name: str
    owner: str | None  # set only for private models
    versions: frozenset[str]  # every pin of every version: its name, and its backend_version
    context_limit: int | None
    openai: bool = False  # protocol openai: listed by GET /v1/models
    tokenizer: TokenCounter | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthzTable:
    auth: AuthSettings
    issuers: Mapping[str, IssuerEntry]  # by `iss` value
    api_keys: Mapping[str, ApiKey]  # by sha256 hex
    tenants: Mapping[str, Tenant]
    tiers: frozenset[str]
    models: Mapping[str, ModelEntry]
    # role -> model -> versions the role may pin
    grants: Mapping[str, Mapping[str, frozenset[str]]]
    tokenized: frozenset[str] = frozenset()  # models whose prompts their own tokenizer counts
    policy: Policy | None = None

    @property
    def issuer_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.issuers.values())

    def tier_of(self, tenant: str) -> str:
        t = self.tenants.get(tenant)
        return t.tier if t is not None and t.tier else "default"

    def allowed_versions(self, roles: tuple[str, ...], model: str) -> frozenset[str] | None:
        """Versions the roles together may pin on `model`; None when no role grants the model."""
        found: frozenset[str] | None = None
        for role in roles:
            versions = self.grants.get(role, {}).get(model)
            if versions is not None:
                found = versions if found is None else found | versions
        return found

    def listing(self, tenant: str, roles: tuple[str, ...]) -> tuple[str, ...]:
        """The OpenAI models a caller may use (GET /v1/models): granted by a role, visible to the tenant."""
        return tuple(
            name
            for name, model in self.models.items()
            if model.openai
            and (model.owner is None or model.owner == tenant)
            and self.allowed_versions(roles, name) is not None
        )


def compile_table(policy: Policy, *, remote_keys: RemoteKeys) -> AuthzTable:
    """Compile a policy. Raises ValueError (bad inline JWKS, missing secret): the policy is then refused."""
    issuers = {i.issuer: _issuer(i, remote_keys) for i in policy.issuers}
    models = {m.name: _model(m) for m in policy.models}
    return AuthzTable(
        auth=policy.auth,
        issuers=issuers,
        api_keys={k.sha256: k for k in policy.api_keys},
        tenants={t.name: t for t in policy.tenants},
        tiers=frozenset(t.name for t in policy.tiers),
        models=models,
        grants=role_grants(policy),
        tokenized=frozenset(name for name, entry in models.items() if entry.tokenizer is not None),
        policy=policy,
    )


def role_grants(policy: Policy) -> dict[str, dict[str, frozenset[str]]]:
    """role -> model -> the versions (pins) the role may invoke; a model no pattern of the role matches
    is absent. The one reading of roles' model and version globs (extauthz and the native gateway)."""
    grants: dict[str, dict[str, frozenset[str]]] = {}
    for role in policy.roles:
        per_model: dict[str, frozenset[str]] = {}
        for model in policy.models:
            if any(fnmatchcase(model.name, pattern) for pattern in role.models):
                # a granted version may be pinned by any of its pins (name, Triton's backend_version)
                per_model[model.name] = frozenset(
                    pin
                    for v in model.versions
                    if any(fnmatchcase(v.name, p) for p in role.versions)
                    for pin in v.pins
                )
        grants[role.name] = per_model
    return grants


def _model(model: Model) -> ModelEntry:
    tokenizer = None
    if model.tokenizer is not None:
        try:
            tokenizer = TokenCounter(model.tokenizer)
        except ValueError as exc:
            raise ValueError(f"model {model.name} tokenizer: {exc}") from None
    return ModelEntry(
        name=model.name,
        owner=model.owner if model.visibility == "private" else None,
        versions=frozenset(pin for v in model.versions for pin in v.pins),
        context_limit=model.context_limit_tokens,
        openai=model.protocol == "openai",
        tokenizer=tokenizer,
    )


def _issuer(issuer: Issuer, remote_keys: RemoteKeys) -> IssuerEntry:
    keys: KeySource | None = None
    secret: SecretKey | None = None
    if issuer.shared_secret is not None:
        secret = load_secret(issuer.shared_secret, what=f"issuer {issuer.name} shared_secret")
    elif issuer.jwks is not None:
        keys = StaticKeys(issuer.name, cast(Mapping[str, Any], plain(issuer.jwks)))
    else:
        keys = remote_keys(issuer)
    return IssuerEntry(
        name=issuer.name,
        issuer=issuer.issuer,
        audiences=issuer.audiences,
        algorithms=frozenset(issuer.algorithms),
        claims=issuer.claims,
        leeway=issuer.leeway,
        keys=keys,
        secret=secret,
    )


def plain(value: object) -> object:
    """Frozen policy data (tuples) back to JSON-like data (lists): for PyJWK, and the JWKS Envoy gets."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value

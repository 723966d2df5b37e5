"""The policy model: frozen, strict, typed. Field-by-field reference: README.md "Policy reference".

Shape checks (types, ranges, unknown keys, one-of choices) live on each model; checks that look
across the document (references, duplicates, weights) live in `_checks.py`. Here: credentials,
tenancy, quotas and the document itself; the models and their routing in `serving.py`, the gateway
and mesh settings in `gateway.py`, the field types in `_fields.py`. Import every class from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ._fields import (
    Count,
    Duration,
    Glob,
    HeaderName,
    JwtAlgorithm,
    K8sName,
    Name,
    Origin,
    QuotaKey,
    Strict,
    Timeout,
    Url,
    Window,
    as_tuple,
    parse_duration,
)
from .gateway import (
    EnvoyGatewaySettings,
    ExtAuthzSettings,
    GatewaySettings,
    GatewayTLS,
    IstioSettings,
    MeshSettings,
    RateLimitSettings,
)
from .serving import (
    ABRoute,
    CircuitBreaker,
    HealthCheck,
    KServeRef,
    Model,
    ModelVersion,
    OutlierDetection,
    Retries,
    Shadow,
    UpstreamTLS,
)

__all__ = [
    "ABRoute",
    "ApiKey",
    "AuthSettings",
    "CircuitBreaker",
    "ClaimMap",
    "EnvoyGatewaySettings",
    "ExtAuthzSettings",
    "GatewaySettings",
    "GatewayTLS",
    "HealthCheck",
    "Issuer",
    "IstioSettings",
    "JwksCache",
    "KServeRef",
    "MeshSettings",
    "Model",
    "ModelVersion",
    "OutlierDetection",
    "Policy",
    "Quota",
    "RateLimitSettings",
    "Retries",
    "Role",
    "SecretRef",
    "Shadow",
    "Tenant",
    "Tier",
    "UpstreamTLS",
    "parse_duration",
]

# --- credentials ------------------------------------------------------------------------------


class SecretRef(Strict):
    """Where a secret lives: an environment variable or a file. Never inline in the policy."""

    env: str | None = None
    """Name of an environment variable holding the secret."""
    file: str | None = None
    """Path of a file holding the secret (e.g. a mounted Kubernetes Secret)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env, file")
        return self


class ClaimMap(Strict):
    """Which JWT claims carry the identity. `tier` is optional: the tenant's tier applies otherwise."""

    tenant: str = "tenant"
    """Claim holding the tenant name."""
    user: str = "sub"
    """Claim holding the user id."""
    roles: str = "roles"
    """Claim holding the roles (a list, or a space-separated string)."""
    tier: str | None = None
    """Claim holding the tier; unset: the tenant's tier applies."""


class JwksCache(Strict):
    """How long fetched keys are trusted. Cache-Control max-age is honoured within [min_ttl, max_ttl]."""

    min_ttl: Timeout = 300.0
    """Fetched keys are kept at least this long, whatever Cache-Control says."""
    max_ttl: Timeout = 86400.0
    """Fetched keys are refetched after at most this long."""
    unknown_kid_refetch: Timeout = 30.0
    """A token with an unknown `kid` triggers a refetch at most this often."""

    @model_validator(mode="after")
    def _ordered(self) -> JwksCache:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl:g}s) is longer than max_ttl ({self.max_ttl:g}s)")
        return self


class Issuer(Strict):
    """A JWT issuer. Keys come from exactly one of jwks_uri, jwks (inline), discovery, shared_secret."""

    name: Name
    """Unique name of the issuer in this policy."""
    issuer: str = Field(min_length=1)
    """The exact `iss` claim value; tokens are routed to this issuer by it."""
    audiences: tuple[str, ...] = Field(min_length=1)
    """Accepted `aud` values; a token must carry at least one."""
    jwks_uri: Url | None = None
    """URL of the issuer's JWK set (http or https)."""
    jwks: Mapping[str, Any] | None = None
    """Inline JWK set (`{keys: [...]}`), for issuers whose keys are static."""
    discovery: bool = False
    """Find `jwks_uri` through OIDC discovery at `{issuer}/.well-known/openid-configuration`."""
    shared_secret: SecretRef | None = None
    """HMAC secret reference (`env` or `file`); only with HS256/384/512."""
    algorithms: tuple[JwtAlgorithm, ...] = Field(default=("RS256",), min_length=1)
    """Allow-list of signature algorithms; `none` is never accepted."""
    claims: ClaimMap = ClaimMap()
    """Which claims carry tenant, user, roles and tier."""
    leeway: Duration = 30.0
    """Clock skew tolerated on exp, nbf and iat."""
    jwks_cache: JwksCache = JwksCache()
    """Bounds on how long fetched keys are cached."""

    @model_validator(mode="after")
    def _key_source(self) -> Issuer:
        sources = [
            self.jwks_uri is not None,
            self.jwks is not None,
            self.discovery,
            self.shared_secret is not None,
        ]
        if sum(sources) != 1:
            raise ValueError("set exactly one key source: jwks_uri, jwks, discovery: true or shared_secret")
        hmac = {a for a in self.algorithms if a.startswith("HS")}
        if hmac and self.shared_secret is None:
            raise ValueError(
                f"algorithms {sorted(hmac)} need shared_secret (HMAC is refused for public keys)"
            )
        if self.shared_secret is not None and hmac != set(self.algorithms):
            raise ValueError("an issuer with shared_secret may only allow HS256, HS384, HS512")
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), tuple | list):
            raise ValueError("jwks must be a JWK set: a mapping with a 'keys' list")
        return self


class ApiKey(Strict):
    """An API key, stored as the SHA-256 of the key (lowercase hex), never the key itself."""

    id: Name
    """Unique id of the key (shown in logs instead of the key)."""
    tenant: str
    """Tenant the key belongs to."""
    user: str | None = None
    """User the key acts as; unset: the key id."""
    roles: tuple[str, ...] = ()
    """Roles granted to the key."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 of the key, lowercase hex (`printf %s KEY | sha256sum`). Never the key itself."""
    description: str = ""
    """Free text for people."""


class AuthSettings(Strict):
    """Request-level authentication settings shared by every issuer and key."""

    api_key_header: HeaderName = "x-api-key"
    """Request header that carries an API key."""
    forward_authorization: bool = False
    """Pass the client's Authorization header on to the model (default: stripped)."""
    max_token_bytes: int = Field(default=8192, ge=256, le=65536)
    """Longer bearer tokens are refused before parsing."""
    decision_cache_entries: int = Field(default=10000, ge=0, le=1_000_000)
    """Size of the extauthz decision cache (LRU); 0 disables it. Cleared on every policy change."""
    decision_cache_ttl: Duration = 60.0
    """Longest life of a cached extauthz decision; never past the token's exp."""

    @field_validator("api_key_header")
    @classmethod
    def _usable_key_header(cls, name: str) -> str:
        from ..contract import HEADER_PREFIX  # (contract imports this module)

        if name in ("authorization", "host") or name.startswith(HEADER_PREFIX):
            raise ValueError(
                f"api_key_header {name!r} cannot carry an API key: `authorization` holds bearer tokens, "
                f"`host` the authority, and every `{HEADER_PREFIX}*` header a client sends is removed"
            )
        return name


# --- tenancy -----------------------------------------------------------------------------------


class Tier(Strict):
    name: Name
    """Unique tier name (e.g. free, gold)."""
    multiplier: float = Field(default=1.0, gt=0)
    """Quota limits of the tenant's quotas are multiplied by this."""


class Tenant(Strict):
    name: Name
    """Unique tenant name."""
    tier: str | None = None
    """Tier of the tenant; unset: multiplier 1."""
    quotas: tuple[str, ...] = ()
    """Names of the quotas that apply to this tenant."""
    allowed_origins: tuple[Origin, ...] = ()
    """Browser origins (scheme://host[:port]) allowed to call; empty: no browser check."""
    namespace: K8sName | None = None
    """Kubernetes namespace of the tenant's workloads (meshgate render); unset: none rendered or isolated."""


class Role(Strict):
    """Which models (glob patterns) and versions a role may invoke."""

    name: Name
    """Unique role name, referenced by API keys and JWT role claims."""
    models: tuple[Glob, ...] = Field(min_length=1)
    """Glob patterns of model names the role may invoke."""
    versions: tuple[Glob, ...] = ("*",)
    """Glob patterns of versions the role may pin (`/versions/{v}`)."""


class Quota(Strict):
    """A limit counted per tenant, user and/or model, in requests or LLM tokens, per window."""

    name: Name
    """Unique quota name, referenced by tenants."""
    per: Annotated[tuple[QuotaKey, ...], BeforeValidator(as_tuple)] = Field(min_length=1)
    """What one counter covers: any of tenant, user, model (a string or a list)."""
    unit: Literal["requests", "tokens"] = "requests"
    """Count requests, or LLM tokens (requested tokens at admission, actual at completion)."""
    limit: Count
    """Allowed amount per window, before the tier multiplier."""
    window: Window
    """second, minute, hour or day."""
    models: tuple[Glob, ...] = Field(default=("*",), min_length=1)
    """Glob patterns of models this quota counts; default all."""
    algorithm: Literal["fixed_window", "sliding_window"] = "fixed_window"
    """fixed_window (aligned to the epoch, like envoyproxy/ratelimit) or sliding_window."""
    shadow_mode: bool = False
    """Count and report, but never refuse."""

    @model_validator(mode="after")
    def _distinct_keys(self) -> Quota:
        if len(set(self.per)) != len(self.per):
            raise ValueError(f"per lists a key twice: {list(self.per)}")
        return self


# --- the document ------------------------------------------------------------------------------


class Policy(Strict):
    """The whole policy document. Build it with `meshgate.policy.parse_policy` / `load_policy`."""

    version: Literal[1] = 1
    """Schema version of the document: 1."""
    gateway: GatewaySettings = GatewaySettings()
    """Gateway listener and how it calls meshgate."""
    auth: AuthSettings = AuthSettings()
    """Settings shared by every credential."""
    issuers: tuple[Issuer, ...] = ()
    """JWT issuers."""
    api_keys: tuple[ApiKey, ...] = ()
    """API keys (hashed)."""
    tiers: tuple[Tier, ...] = ()
    """Tiers and their quota multipliers."""
    tenants: tuple[Tenant, ...] = ()
    """Tenants."""
    roles: tuple[Role, ...] = ()
    """Roles: which models and versions they may invoke."""
    models: tuple[Model, ...] = ()
    """Models, versions and routing."""
    quotas: tuple[Quota, ...] = ()
    """Rate limits in requests or tokens."""
    mesh: MeshSettings = MeshSettings()
    """Where meshgate and the gateways run in Kubernetes (meshgate render)."""

    def model(self, name: str) -> Model | None:
        return next((m for m in self.models if m.name == name), None)

    def tenant(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

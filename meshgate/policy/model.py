"""The policy model: frozen, strict, typed. Field-by-field reference: README.md "Policy reference".

Shape checks (types, ranges, unknown keys, one-of choices) live here, on each model; checks that
look across the document (references, duplicates, weights) live in `_checks.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = [
    "ABRoute",
    "ApiKey",
    "AuthSettings",
    "CircuitBreaker",
    "ClaimMap",
    "ExtAuthzSettings",
    "GatewaySettings",
    "Issuer",
    "JwksCache",
    "KServeRef",
    "Model",
    "ModelVersion",
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
]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """'250ms', '30s', '5m', '1h', '1d' -> seconds (float). Bare numbers are refused: units are explicit."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(
        f"invalid duration {value!r}: use a number and a unit (ms, s, m, h, d), e.g. 250ms or 30s"
    )


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid endpoint {value!r}: expected host:port with a port from 1 to 65535")
    return value


def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _check_origin(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+$", value):
        raise ValueError(f"invalid origin {value!r}: expected scheme://host[:port] with no path")
    return value


NAME_PATTERN = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?$"
GLOB_PATTERN = r"^[A-Za-z0-9_.*?\[\]-]+$"
HEADER_PATTERN = r"^[a-z0-9][a-z0-9-]*$"

Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
Glob = Annotated[str, Field(pattern=GLOB_PATTERN)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
Origin = Annotated[str, AfterValidator(_check_origin)]
HeaderName = Annotated[str, Field(pattern=HEADER_PATTERN)]
Percent = Annotated[float, Field(gt=0, le=100)]
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"
]
Window = Literal["second", "minute", "hour", "day"]
QuotaKey = Literal["tenant", "user", "model"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- credentials ------------------------------------------------------------------------------


class SecretRef(_Strict):
    """Where a secret lives: an environment variable or a file. Never inline in the policy."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env, file")
        return self


class ClaimMap(_Strict):
    """Which JWT claims carry the identity. `tier` is optional: the tenant's tier applies otherwise."""

    tenant: str = "tenant"
    user: str = "sub"
    roles: str = "roles"
    tier: str | None = None


class JwksCache(_Strict):
    """How long fetched keys are trusted. Cache-Control max-age is honoured within [min_ttl, max_ttl]."""

    min_ttl: Duration = 300.0
    max_ttl: Duration = 86400.0
    unknown_kid_refetch: Duration = 30.0


class Issuer(_Strict):
    """A JWT issuer. Keys come from exactly one of jwks_uri, jwks (inline), discovery, shared_secret."""

    name: Name
    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = Field(min_length=1)
    jwks_uri: str | None = Field(default=None, pattern=r"^https?://")
    jwks: Mapping[str, Any] | None = None
    discovery: bool = False
    shared_secret: SecretRef | None = None
    algorithms: tuple[JwtAlgorithm, ...] = Field(default=("RS256",), min_length=1)
    claims: ClaimMap = ClaimMap()
    leeway: Duration = 30.0
    jwks_cache: JwksCache = JwksCache()

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


class ApiKey(_Strict):
    """An API key, stored as the SHA-256 of the key (lowercase hex), never the key itself."""

    id: Name
    tenant: str
    user: str | None = None
    roles: tuple[str, ...] = ()
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    description: str = ""


class AuthSettings(_Strict):
    """Request-level authentication settings shared by every issuer and key."""

    api_key_header: HeaderName = "x-api-key"
    forward_authorization: bool = False
    max_token_bytes: int = Field(default=8192, ge=256, le=65536)
    # extauthz decision cache: at most this many entries (0 disables it); an entry lives at most
    # decision_cache_ttl and never past the token's exp. Cleared on every policy change.
    decision_cache_entries: int = Field(default=10000, ge=0, le=1_000_000)
    decision_cache_ttl: Duration = 60.0


# --- tenancy -----------------------------------------------------------------------------------


class Tier(_Strict):
    name: Name
    multiplier: float = Field(default=1.0, gt=0)


class Tenant(_Strict):
    name: Name
    tier: str | None = None
    quotas: tuple[str, ...] = ()
    allowed_origins: tuple[Origin, ...] = ()


class Role(_Strict):
    """Which models (glob patterns) and versions a role may invoke."""

    name: Name
    models: tuple[Glob, ...] = Field(min_length=1)
    versions: tuple[Glob, ...] = ("*",)


class Quota(_Strict):
    """A limit counted per tenant, user and/or model, in requests or LLM tokens, per window."""

    name: Name
    per: Annotated[tuple[QuotaKey, ...], BeforeValidator(_as_tuple)] = Field(min_length=1)
    unit: Literal["requests", "tokens"] = "requests"
    limit: int = Field(gt=0)
    window: Window
    models: tuple[Glob, ...] = ("*",)
    algorithm: Literal["fixed_window", "sliding_window"] = "fixed_window"
    shadow_mode: bool = False

    @model_validator(mode="after")
    def _distinct_keys(self) -> Quota:
        if len(set(self.per)) != len(self.per):
            raise ValueError(f"per lists a key twice: {list(self.per)}")
        return self


# --- models ------------------------------------------------------------------------------------


class KServeRef(_Strict):
    """A KServe InferenceService that serves this version (resolved to endpoints by the platform)."""

    service: Name
    namespace: Name = "default"
    port: int = Field(default=80, gt=0, lt=65536)


class ModelVersion(_Strict):
    name: Name
    weight: int | None = Field(default=None, ge=0, le=100)
    endpoints: tuple[HostPort, ...] = ()
    kserve: KServeRef | None = None

    @model_validator(mode="after")
    def _backend(self) -> ModelVersion:
        if bool(self.endpoints) == (self.kserve is not None):
            raise ValueError("set exactly one backend: endpoints (host:port list) or kserve")
        return self


class Shadow(_Strict):
    """Mirror `percent` of the traffic to `version`; its answers are discarded."""

    version: str
    percent: Percent


class ABRoute(_Strict):
    """Requests whose `header` equals `value` go to `version` (A/B testing)."""

    header: HeaderName
    value: str = Field(min_length=1)
    version: str


class UpstreamTLS(_Strict):
    """TLS from the gateway to the model: none, mtls (certificate files, via SDS) or istio (mesh mTLS)."""

    mode: Literal["none", "mtls", "istio"] = "none"
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    sni: str | None = None
    subject_alt_names: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _files(self) -> UpstreamTLS:
        files = {"cert_file": self.cert_file, "key_file": self.key_file, "ca_file": self.ca_file}
        if self.mode == "mtls":
            missing = [k for k, v in files.items() if not v]
            if missing:
                raise ValueError(f"mode mtls needs {', '.join(missing)}")
        elif any(files.values()) or self.sni or self.subject_alt_names:
            raise ValueError(f"mode {self.mode} takes no certificate files, sni or subject_alt_names")
        return self


class Retries(_Strict):
    attempts: int = Field(default=1, ge=0, le=10)
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream", "unavailable")
    per_try_timeout: Duration | None = None


class CircuitBreaker(_Strict):
    max_connections: int = Field(default=1024, gt=0)
    max_pending_requests: int = Field(default=1024, gt=0)
    max_requests: int = Field(default=1024, gt=0)
    max_retries: int = Field(default=3, ge=0)


class Model(_Strict):
    name: ModelName
    visibility: Literal["public", "private"] = "public"
    owner: str | None = None
    protocol: Literal["v2-rest", "v2-grpc", "openai"] = "v2-rest"
    context_limit_tokens: int | None = Field(default=None, gt=0)
    versions: tuple[ModelVersion, ...] = Field(min_length=1)
    shadow: Shadow | None = None
    ab: tuple[ABRoute, ...] = ()
    upstream_tls: UpstreamTLS = UpstreamTLS()
    timeout: Duration = 60.0
    retries: Retries = Retries()
    circuit_breaker: CircuitBreaker = CircuitBreaker()

    @model_validator(mode="before")
    @classmethod
    def _single_version_takes_all(cls, data: Any) -> Any:
        """One version with no weight gets 100: the common case needs no arithmetic."""
        if isinstance(data, Mapping):
            versions = data.get("versions")
            if isinstance(versions, tuple) and len(versions) == 1:
                only = versions[0]
                if isinstance(only, Mapping) and "weight" not in only:
                    data = {**data, "versions": ({**only, "weight": 100},)}
        return data

    @model_validator(mode="after")
    def _owner(self) -> Model:
        if self.visibility == "private" and not self.owner:
            raise ValueError("a private model needs an owner tenant")
        if self.visibility == "public" and self.owner:
            raise ValueError("owner is only for private models (set visibility: private)")
        return self

    def version(self, name: str) -> ModelVersion | None:
        return next((v for v in self.versions if v.name == name), None)


# --- gateway -----------------------------------------------------------------------------------


class ExtAuthzSettings(_Strict):
    """How the gateway calls meshgate extauthz."""

    timeout: Duration = 0.25
    failure_mode_allow: bool = False
    max_request_bytes: int = Field(default=1 << 20, gt=0)


class RateLimitSettings(_Strict):
    """How the gateway calls meshgate ratelimit."""

    domain: Name = "meshgate"
    timeout: Duration = 0.1
    failure_mode_deny: bool = True
    response_headers: Literal["none", "x-ratelimit", "draft-03"] = "x-ratelimit"


class GatewaySettings(_Strict):
    port: int = Field(default=8080, gt=0, lt=65536)
    ext_authz: ExtAuthzSettings = ExtAuthzSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()


# --- the document ------------------------------------------------------------------------------


class Policy(_Strict):
    """The whole policy document. Build it with `meshgate.policy.parse_policy` / `load_policy`."""

    version: Literal[1] = 1
    gateway: GatewaySettings = GatewaySettings()
    auth: AuthSettings = AuthSettings()
    issuers: tuple[Issuer, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    tiers: tuple[Tier, ...] = ()
    tenants: tuple[Tenant, ...] = ()
    roles: tuple[Role, ...] = ()
    models: tuple[Model, ...] = ()
    quotas: tuple[Quota, ...] = ()

    def model(self, name: str) -> Model | None:
        return next((m for m in self.models if m.name == name), None)

    def tenant(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

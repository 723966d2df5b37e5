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


def _check_pipeline_window(value: float) -> float:
    milliseconds = round(value * 1000, 6)
    if value and not (milliseconds.is_integer() and 1 <= milliseconds <= 10):
        raise ValueError(
            f"invalid pipeline window {value * 1000:g}ms: 0, or whole milliseconds from 1ms to 10ms "
            "(the event loop's timers count milliseconds)"
        )
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
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"

Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
Glob = Annotated[str, Field(pattern=GLOB_PATTERN)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
Origin = Annotated[str, AfterValidator(_check_origin)]
HeaderName = Annotated[str, Field(pattern=HEADER_PATTERN)]
K8sName = Annotated[str, Field(pattern=K8S_NAME_PATTERN)]
Percent = Annotated[float, Field(gt=0, le=100)]
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"
]
Window = Literal["second", "minute", "hour", "day"]
QuotaKey = Literal["tenant", "user", "model"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


# --- credentials ------------------------------------------------------------------------------


class SecretRef(_Strict):
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


class ClaimMap(_Strict):
    """Which JWT claims carry the identity. `tier` is optional: the tenant's tier applies otherwise."""

    tenant: str = "tenant"
    """Claim holding the tenant name."""
    user: str = "sub"
    """Claim holding the user id."""
    roles: str = "roles"
    """Claim holding the roles (a list, or a space-separated string)."""
    tier: str | None = None
    """Claim holding the tier; unset: the tenant's tier applies."""


class JwksCache(_Strict):
    """How long fetched keys are trusted. Cache-Control max-age is honoured within [min_ttl, max_ttl]."""

    min_ttl: Duration = 300.0
    """Fetched keys are kept at least this long, whatever Cache-Control says."""
    max_ttl: Duration = 86400.0
    """Fetched keys are refetched after at most this long."""
    unknown_kid_refetch: Duration = 30.0
    """A token with an unknown `kid` triggers a refetch at most this often."""


class Issuer(_Strict):
    """A JWT issuer. Keys come from exactly one of jwks_uri, jwks (inline), discovery, shared_secret."""

    name: Name
    """Unique name of the issuer in this policy."""
    issuer: str = Field(min_length=1)
    """The exact `iss` claim value; tokens are routed to this issuer by it."""
    audiences: tuple[str, ...] = Field(min_length=1)
    """Accepted `aud` values; a token must carry at least one."""
    jwks_uri: str | None = Field(default=None, pattern=r"^https?://")
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


class ApiKey(_Strict):
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


class AuthSettings(_Strict):
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


# --- tenancy -----------------------------------------------------------------------------------


class Tier(_Strict):
    name: Name
    """Unique tier name (e.g. free, gold)."""
    multiplier: float = Field(default=1.0, gt=0)
    """Quota limits of the tenant's quotas are multiplied by this."""


class Tenant(_Strict):
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


class Role(_Strict):
    """Which models (glob patterns) and versions a role may invoke."""

    name: Name
    """Unique role name, referenced by API keys and JWT role claims."""
    models: tuple[Glob, ...] = Field(min_length=1)
    """Glob patterns of model names the role may invoke."""
    versions: tuple[Glob, ...] = ("*",)
    """Glob patterns of versions the role may pin (`/versions/{v}`)."""


class Quota(_Strict):
    """A limit counted per tenant, user and/or model, in requests or LLM tokens, per window."""

    name: Name
    """Unique quota name, referenced by tenants."""
    per: Annotated[tuple[QuotaKey, ...], BeforeValidator(_as_tuple)] = Field(min_length=1)
    """What one counter covers: any of tenant, user, model (a string or a list)."""
    unit: Literal["requests", "tokens"] = "requests"
    """Count requests, or LLM tokens (requested tokens at admission, actual at completion)."""
    limit: int = Field(gt=0)
    """Allowed amount per window, before the tier multiplier."""
    window: Window
    """second, minute, hour or day."""
    models: tuple[Glob, ...] = ("*",)
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


# --- models ------------------------------------------------------------------------------------


class KServeRef(_Strict):
    """A KServe InferenceService that serves this version, reached the way KServe publishes it for the
    version's `deployment_mode` (docs/models.md): Standard, its predictor Service
    `<service>-predictor`; Knative, its predictor's Knative route (the activator wakes a version
    scaled to zero)."""

    service: Name
    """Name of the KServe InferenceService."""
    namespace: Name = "default"
    """Its namespace."""
    port: int = Field(default=80, gt=0, lt=65536)
    """Port of its predictor Service (Standard: KServe publishes the first container port on 80).
    Knative: 80, its gateway's."""
    grpc_port: int = Field(default=9000, gt=0, lt=65536)
    """A model with `protocols`: the gRPC port of its predictor Service (KServe publishes a predictor's
    second container port under its own number; Triton's runtime serves gRPC on 9000)."""


class ModelVersion(_Strict):
    name: Name
    """Version name, unique in the model (e.g. v1)."""
    weight: int | None = Field(default=None, ge=0, le=100)
    """Percent of the model's traffic (canary); weights add up to 100. One version: 100."""
    endpoints: tuple[HostPort, ...] = ()
    """Backends as host:port (of a model with `protocols`: their REST addresses)."""
    grpc_endpoints: tuple[HostPort, ...] = ()
    """A model with `protocols: [v2-rest, v2-grpc]`: the same backends' gRPC addresses (host:port)."""
    kserve: KServeRef | None = None
    """Or a KServe InferenceService reference instead of endpoints."""
    backend_version: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Backend's own version (Triton: a number) for readiness probes; unset: unversioned (KServe)."""
    storage_uri: str | None = Field(default=None, min_length=1)
    """Model repository (s3://, gs://, pvc://, ...) of its KServe InferenceService; none: not rendered."""
    runtime: K8sName | None = None
    """KServe ServingRuntime name; default: KServe picks the runtime for the model format."""
    gpus: int = Field(default=0, ge=0, le=64)
    """nvidia.com/gpu limit of each replica; 0: none."""
    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas; 0 (scale to zero) needs deployment_mode Knative."""
    max_replicas: int | None = Field(default=None, ge=1)
    """Most replicas; default: KServe's default."""
    deployment_mode: Literal["Standard", "Knative"] = "Standard"
    """KServe deployment mode: Standard (formerly RawDeployment) or Knative (formerly Serverless)."""
    served_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_./:-]{0,255}$")
    """protocol openai: the model name this version's backend serves (its `--served-model-name`, e.g.
    `meta-llama/Llama-3.1-8B-Instruct`); the gateway rewrites the request body's `model` to it.
    Unset: the name clients call."""

    @model_validator(mode="after")
    def _replicas(self) -> ModelVersion:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        if self.min_replicas == 0 and self.deployment_mode != "Knative":
            raise ValueError("min_replicas 0 (scale to zero) needs deployment_mode: Knative")
        return self

    @model_validator(mode="after")
    def _backend(self) -> ModelVersion:
        if bool(self.endpoints) == (self.kserve is not None):
            raise ValueError("set exactly one backend: endpoints (host:port list) or kserve")
        return self

    @model_validator(mode="after")
    def _knative_port(self) -> ModelVersion:
        if self.kserve is not None and self.deployment_mode == "Knative" and self.kserve.port != 80:
            raise ValueError("a Knative version is reached through Knative's gateway: kserve.port is 80")
        return self

    @property
    def pins(self) -> tuple[str, ...]:
        """The names a request may pin this version by (`/versions/{pin}`, ModelInferRequest
        `model_version`): its routing name, and its backend_version when that differs (Triton's
        clients ask for the number)."""
        if self.backend_version is None or self.backend_version == self.name:
            return (self.name,)
        return (self.name, self.backend_version)


class Shadow(_Strict):
    """Mirror `percent` of the traffic to `version`; its answers are discarded."""

    version: str
    """Version that receives mirrored traffic (weight 0); its answers are discarded."""
    percent: Percent
    """Share of requests mirrored, above 0 and up to 100."""


class ABRoute(_Strict):
    """Requests whose `header` equals `value` go to `version` (A/B testing)."""

    header: HeaderName
    """Request header to match (lowercase)."""
    value: str = Field(min_length=1)
    """Exact value that selects the version."""
    version: str
    """Version the matching requests go to."""


class UpstreamTLS(_Strict):
    """TLS from the gateway to the model: none, mtls (certificate files, via SDS) or istio (mesh mTLS)."""

    mode: Literal["none", "mtls", "istio"] = "none"
    """none (plaintext), mtls (gateway presents cert_file, checks ca_file) or istio (mesh mTLS)."""
    cert_file: str | None = None
    """Client certificate (PEM), served over SDS and re-read when it changes."""
    key_file: str | None = None
    """Its private key (PEM)."""
    ca_file: str | None = None
    """CA bundle that signs the model's server certificate."""
    sni: str | None = None
    """SNI to send; unset: none."""
    subject_alt_names: tuple[str, ...] = ()
    """Accepted SANs of the model's certificate; empty: any signed by ca_file."""

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
    """Retries after the first try (0 disables)."""
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream", "unavailable")
    """Envoy retry_on conditions."""
    per_try_timeout: Duration | None = None
    """Timeout of each try; unset: the route timeout."""


class CircuitBreaker(_Strict):
    max_connections: int = Field(default=1024, gt=0)
    """Upper bound on connections to the version's backends."""
    max_pending_requests: int = Field(default=1024, gt=0)
    """Upper bound on queued requests."""
    max_requests: int = Field(default=1024, gt=0)
    """Upper bound on concurrent requests."""
    max_retries: int = Field(default=3, ge=0)
    """Upper bound on concurrent retries."""


class OutlierDetection(_Strict):
    """Eject a model endpoint after consecutive 5xx answers (Istio DestinationRule outlierDetection)."""

    consecutive_5xx_errors: int = Field(default=5, ge=1)
    """5xx answers in a row that eject an endpoint."""
    interval: Duration = 10.0
    """How often endpoints are scanned."""
    base_ejection_time: Duration = 30.0
    """How long an ejected endpoint stays out (times the number of ejections)."""
    max_ejection_percent: int = Field(default=50, ge=0, le=100)
    """At most this percent of the endpoints are ejected at once."""


class HealthCheck(_Strict):
    """Readiness probes of each endpoint of the model (v2 health APIs, or HTTP GET for openai)."""

    enabled: bool = True
    """Probe the endpoints; off: never probed, their health stays unknown (Envoy routes to them)."""
    interval: Duration = Field(default=5.0, gt=0)
    """Time between two probes of one endpoint."""
    timeout: Duration = Field(default=1.0, gt=0)
    """A probe that takes longer fails."""
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    """Consecutive successful probes that turn an unhealthy endpoint healthy."""
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    """Consecutive failed probes that turn a healthy endpoint unhealthy."""
    path: str = Field(default="/v1/models", pattern=r"^/[^\s]*$")
    """HTTP path probed for protocol openai (any 2xx is ready); v2-rest and v2-grpc use the v2 health APIs."""


class Model(_Strict):
    name: ModelName
    """Model name as clients call it (`/v2/models/{name}`, OpenAI `model`, ModelInfer `model_name`)."""
    visibility: Literal["public", "private"] = "public"
    """public, or private: only the owner tenant may call it."""
    owner: str | None = None
    """Owner tenant of a private model."""
    protocol: Literal["v2-rest", "v2-grpc", "openai"] = "v2-rest"
    """v2-rest (KServe/Triton REST), v2-grpc (Triton gRPC) or openai (JSON chat/completions)."""
    protocols: tuple[Literal["v2-rest", "v2-grpc"], ...] = ()
    """A model served over both v2-rest and v2-grpc under one name (Triton serves both): `[v2-rest,
    v2-grpc]`; `protocol` is then v2-rest, and each version lists its gRPC addresses in
    `grpc_endpoints` (a KServe reference: `kserve.grpc_port`). Empty: the one `protocol`."""
    namespace: K8sName | None = None
    """Kubernetes namespace of its pods (meshgate render); default: first kserve.namespace, else default."""
    context_limit_tokens: int | None = Field(default=None, gt=0)
    """Requests asking for more tokens (`max_tokens`) are refused."""
    tokenizer: str | None = Field(default=None, min_length=1)
    """protocol openai: path of the model's Hugging Face `tokenizer.json`; prompts are then counted
    with it (read when the policy is loaded). Unset: estimated from the text (docs/llm.md)."""
    max_json_answer_bytes: int | None = Field(default=None, gt=0, le=1 << 30)
    """protocol openai: the largest JSON (non-streaming) answer whose usage the gateway reads to charge
    it: Envoy holds such an answer whole, up to this many bytes per answer. One of this many bytes or
    more (its content-length) passes through unread and is not charged; one without content-length
    and larger is Envoy's 500. Streams are read event by event, whatever their length. Unset: 8 MiB
    (docs/llm.md)."""
    versions: tuple[ModelVersion, ...] = Field(min_length=1)
    """The versions and their backends."""
    shadow: Shadow | None = None
    """Mirror a share of traffic to a version."""
    ab: tuple[ABRoute, ...] = ()
    """Header matches that pin a version (A/B tests); evaluated before weights."""
    upstream_tls: UpstreamTLS = UpstreamTLS()
    """TLS from the gateway to the backends."""
    timeout: Duration = 60.0
    """Route timeout of a request: until its response has ended (a stream's last byte included)."""
    idle_timeout: Duration | None = None
    """Longest silence of a request's stream (between two chunks of a response); Envoy then ends it.
    Unset: only `timeout` applies. For LLM streams set `timeout` to the longest generation and this to
    the longest pause between tokens (docs/llm.md)."""
    stream_infer: bool = False
    """v2-grpc: let clients open Triton's `ModelStreamInfer` stream. It is authorized, rate limited and
    routed on the head of its first message: its later messages reach the same backend unchecked (they
    could name another model that backend serves), so enable it for a backend that serves only models
    every caller of this one may use. Off: the stream is refused (PERMISSION_DENIED `stream_forbidden`)."""
    max_request_bytes: int = Field(default=1 << 26, gt=0)
    """v2-rest: the largest request body (its declared Content-Length) the gateway passes to the model,
    streamed, never buffered; larger: 413 `body_too_large`; a POST without Content-Length: 411.
    Default 64 MiB, Triton's own `--http-max-input-size` default."""
    retries: Retries = Retries()
    """Retry policy."""
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    """Circuit-breaker limits per version cluster."""
    health_check: HealthCheck = HealthCheck()
    """Readiness probes of the endpoints; results mark them healthy or unhealthy in EDS."""
    outlier_detection: OutlierDetection | None = OutlierDetection()
    """Outlier ejection of failing endpoints (Envoy clusters and the Istio DestinationRule); null: none."""

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

    @model_validator(mode="before")
    @classmethod
    def _protocols_name_rest_first(cls, data: Any) -> Any:
        """`protocols: [v2-grpc, v2-rest]` reads as [v2-rest, v2-grpc]; `protocol` defaults to v2-rest."""
        if isinstance(data, Mapping) and isinstance(data.get("protocols"), tuple | list):
            listed = tuple(data["protocols"])
            if set(listed) == {"v2-rest", "v2-grpc"} and len(listed) == 2:
                data = {**data, "protocols": ("v2-rest", "v2-grpc")}
        return data

    @model_validator(mode="after")
    def _grpc_endpoints(self) -> Model:
        if self.protocols:
            if self.protocols != ("v2-rest", "v2-grpc"):
                raise ValueError("protocols lists v2-rest and v2-grpc, once each")
            if self.protocol != "v2-rest":
                raise ValueError("with protocols, protocol is v2-rest (leave it out)")
            missing = [v.name for v in self.versions if v.endpoints and not v.grpc_endpoints]
            if missing:
                raise ValueError(f"versions {missing} need grpc_endpoints (the model lists v2-grpc)")
            knative = [v.name for v in self.versions if v.deployment_mode == "Knative"]
            if knative:
                raise ValueError(f"versions {knative}: Knative routes one container port, one protocol")
            one_port = [
                v.name for v in self.versions if v.kserve is not None and v.kserve.port == v.kserve.grpc_port
            ]
            if one_port:
                raise ValueError(f"versions {one_port}: kserve port and grpc_port must differ")
        elif any(v.grpc_endpoints for v in self.versions):
            raise ValueError("grpc_endpoints are for a model with protocols: [v2-rest, v2-grpc]")
        return self

    @property
    def served_protocols(self) -> tuple[str, ...]:
        """Every protocol the model is served over: `protocols`, else the one `protocol`."""
        return self.protocols or (self.protocol,)

    def serves(self, protocol: str) -> bool:
        return protocol in self.served_protocols

    @model_validator(mode="after")
    def _owner(self) -> Model:
        if self.visibility == "private" and not self.owner:
            raise ValueError("a private model needs an owner tenant")
        if self.visibility == "public" and self.owner:
            raise ValueError("owner is only for private models (set visibility: private)")
        return self

    def version(self, name: str) -> ModelVersion | None:
        return next((v for v in self.versions if v.name == name), None)

    def pinned(self, pin: str) -> ModelVersion | None:
        """The version a request pinning `pin` (a version name or a backend_version) asks for."""
        return next((v for v in self.versions if pin in v.pins), None)


# --- gateway -----------------------------------------------------------------------------------


class ExtAuthzSettings(_Strict):
    """How the gateway calls meshgate extauthz."""

    timeout: Duration = 0.25
    """How long Envoy waits for a Check answer."""
    failure_mode_allow: bool = False
    """Let requests through when extauthz cannot answer (default: refuse)."""
    max_request_bytes: int = Field(default=1 << 20, gt=0)
    """Request body bytes sent to Check (to read the model from JSON/gRPC bodies)."""
    transport: Literal["grpc", "http"] = "grpc"
    """How the gateway's Envoy calls meshgate extauthz: `grpc` (envoy.service.auth.v3, `--extauthz`'s
    port) or `http` (the same Check as HTTP/1.1, `--extauthz-http`'s port: ~1 ms less per check after
    idleness, docs/extauthz.md "Transports"). The decisions are the same."""


class RateLimitSettings(_Strict):
    """How the gateway calls meshgate ratelimit."""

    domain: Name = "meshgate"
    """Rate limit domain of the policy's quotas."""
    timeout: Duration = 0.1
    """How long Envoy waits for ShouldRateLimit."""
    failure_mode_deny: bool = True
    """Refuse requests when ratelimit cannot answer (default: refuse)."""
    response_headers: Literal["none", "x-ratelimit", "draft-03"] = "x-ratelimit"
    """none, x-ratelimit (X-RateLimit-Limit/-Remaining/-Reset) or draft-03 (RateLimit-*)."""
    shadow_mode: bool = False
    """Global shadow mode: count and report OVER_LIMIT per descriptor, but never refuse a request."""
    admission: Literal["ratelimit", "extauthz"] = "ratelimit"
    """Who decides the quotas at admission, before a request goes on: `ratelimit` (the rate limit
    filter's request-time call) or `extauthz` (the Check decides them with the same limiter and store,
    in the same process: one call to meshgate instead of two before the model; the token checks and the
    `requests` quotas of OpenAI models; docs/llm.md "Admission in the Check").
    Charges at stream end stay the rate limit filter's."""
    store_timeout: Duration = 0.05
    """Bound on each Redis call; past it ShouldRateLimit answers UNAVAILABLE (read at start)."""
    store_pipeline_window: Annotated[Duration, AfterValidator(_check_pipeline_window)] = 0.0
    """How long a command waits on an idle Redis connection for others to share its write: 0 (it is
    written at the end of the event loop turn), or whole milliseconds from 1ms to 10ms (the event
    loop's timers count milliseconds), shorter than store_timeout. Fewer writes and wake-ups under
    sustained load, at the price of up to that much latency for a call that finds the connection
    idle. Like envoyproxy/ratelimit's REDIS_PIPELINE_WINDOW; a single server over TCP or a unix
    socket only (read at start)."""
    store_pipeline_limit: int = Field(default=0, ge=0)
    """With a window: a held batch is written as soon as it holds this many commands (0: no limit).
    Like envoyproxy/ratelimit's REDIS_PIPELINE_LIMIT (read at start)."""
    near_limit_ratio: float = Field(default=0.8, gt=0, le=1)
    """Share of a limit above which a hit counts in the near_limit metric."""
    local_cache: bool = True
    """Remember exhausted counters until their window ends and refuse without a store call."""

    @model_validator(mode="after")
    def _window_within_timeout(self) -> RateLimitSettings:
        if self.store_pipeline_window and self.store_pipeline_window >= self.store_timeout:
            raise ValueError(
                f"store_pipeline_window ({self.store_pipeline_window * 1000:g}ms) must be shorter than "
                f"store_timeout ({self.store_timeout * 1000:g}ms): a held call would time out"
            )
        return self


class GatewayTLS(_Strict):
    """TLS on the gateway listener (clients to Envoy); certificates over SDS, re-read when they change."""

    cert_file: str = Field(min_length=1)
    """Server certificate chain (PEM) the gateway presents."""
    key_file: str = Field(min_length=1)
    """Its private key (PEM)."""
    client_ca_file: str | None = None
    """If set, clients must present a certificate signed by this CA (PEM): mutual TLS."""


def _ip_address(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (e.g. 0.0.0.0, 127.0.0.1 or ::)") from None


class GatewaySettings(_Strict):
    address: Annotated[str, AfterValidator(_ip_address)] = "0.0.0.0"
    """IP address the gateway listener binds: 0.0.0.0 (every IPv4 interface, what a gateway pod needs),
    :: (IPv6), or 127.0.0.1 for a gateway reachable from this machine only (the quickstart)."""
    port: int = Field(default=8080, gt=0, lt=65536)
    """Port of the gateway listener meshgate's xDS gives Envoy."""
    ext_authz: ExtAuthzSettings = ExtAuthzSettings()
    """How the gateway calls extauthz."""
    ratelimit: RateLimitSettings = RateLimitSettings()
    """How the gateway calls ratelimit."""
    tls: GatewayTLS | None = None
    """TLS for clients of the gateway listener (HTTP/1.1 and h2 by ALPN); none: plaintext (h2c)."""
    enforcement: Literal["ext_authz", "native", "auto"] = "ext_authz"
    """Where meshgate's own gateway (xds) enforces the policy (docs/native.md). ext_authz: every request
    is decided by meshgate extauthz and counted by meshgate ratelimit (two gRPC calls). native: Envoy's own
    filters decide (jwt_authn, a compiled decision table, local rate limits meshgate sizes per gateway),
    no call to meshgate per request; a policy feature that cannot be native is an error naming its field.
    auto: native for every request that can be, extauthz and ratelimit only for those that need them
    (API keys, token quotas, prompts to count)."""
    public_server_api: tuple[Literal["live", "ready", "metadata"], ...] = ()
    """Server-level inference calls the gateway answers without credentials: any of live
    (`/v2/health/live`, gRPC ServerLive), ready (`/v2/health/ready`, ServerReady), metadata (`/v2`,
    ServerMetadata). Default: none (every call needs a credential, like a model call)."""


# --- manifests (meshgate render) --------------------------------------------------------------


class IstioSettings(_Strict):
    """Where the Istio ingress gateway runs and what `meshgate render --target istio` emits for it."""

    gateway_namespace: K8sName = "istio-system"
    """Namespace of the ingress gateway pods (Gateway, EnvoyFilters and gateway policies go there)."""
    gateway_selector: Mapping[str, str] = Field(default_factory=lambda: {"istio": "ingressgateway"})
    """Labels of the ingress gateway pods."""
    hosts: tuple[str, ...] = Field(default=("*",), min_length=1)
    """Hosts the Gateway and the VirtualServices answer for."""
    port: int = Field(default=80, gt=0, lt=65536)
    """HTTP port of the Gateway server."""
    provider: K8sName = "meshgate"
    """Name of the meshConfig extensionProvider that AuthorizationPolicy CUSTOM names."""
    request_authentication: bool = False
    """Also render a RequestAuthentication from the issuers (Istio checks JWTs too)."""


class EnvoyGatewaySettings(_Strict):
    """The Gateway that `meshgate render --target envoy-gateway` emits for Envoy Gateway / AI Gateway."""

    namespace: K8sName = "meshgate-gateway"
    """Namespace of the Gateway and its SecurityPolicy / BackendTrafficPolicy."""
    gateway_class: K8sName = "eg"
    """gatewayClassName of the Gateway."""
    hostnames: tuple[str, ...] = ()
    """Hostnames of the listeners and routes; empty: any."""
    port: int = Field(default=80, gt=0, lt=65536)
    """HTTP listener port."""


class MeshSettings(_Strict):
    """Where meshgate itself runs in the cluster (its Service), read by every render target."""

    namespace: K8sName = "meshgate"
    """Namespace of the meshgate Service."""
    service: K8sName = "meshgate"
    """Name of the meshgate Service."""
    extauthz_port: int = Field(default=9001, gt=0, lt=65536)
    """Its ext_authz gRPC port."""
    ratelimit_port: int = Field(default=9002, gt=0, lt=65536)
    """Its rate limit gRPC port."""
    istio: IstioSettings = IstioSettings()
    """Istio target settings."""
    envoy_gateway: EnvoyGatewaySettings = EnvoyGatewaySettings()
    """Envoy Gateway / Envoy AI Gateway target settings."""


# --- the document ------------------------------------------------------------------------------


class Policy(_Strict):
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

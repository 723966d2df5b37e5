"""The policy's models: versions, routing (canary, shadow, A/B), upstream TLS, retries and health; part
of the policy model (meshgate/policy/model.py). Reference: README.md "Policy reference".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from ._fields import (
    INT32_MAX,
    UINT32_MAX,
    Count,
    HeaderName,
    HostPort,
    IsvcName,
    K8sName,
    ModelName,
    Name,
    Percent,
    Strict,
    Timeout,
)

__all__ = [
    "ABRoute",
    "CircuitBreaker",
    "HealthCheck",
    "KServeRef",
    "Model",
    "ModelVersion",
    "OutlierDetection",
    "Retries",
    "Shadow",
    "UpstreamTLS",
]

# --- models ------------------------------------------------------------------------------------


class KServeRef(Strict):
    """A KServe InferenceService that serves this version, reached the way KServe publishes it for the
    version's `deployment_mode` (docs/models.md): Standard, its predictor Service
    `<service>-predictor`; Knative, its predictor's Knative route (the activator wakes a version
    scaled to zero)."""

    service: IsvcName
    """Name of the KServe InferenceService."""
    namespace: K8sName = "default"
    """Its namespace."""
    port: int = Field(default=80, gt=0, lt=65536)
    """Port of its predictor Service (Standard: KServe publishes the first container port on 80).
    Knative: 80, its gateway's."""
    grpc_port: int = Field(default=9000, gt=0, lt=65536)
    """A model with `protocols`: the gRPC port of its predictor Service (KServe publishes a predictor's
    second container port under its own number; Triton's runtime serves gRPC on 9000)."""


class ModelVersion(Strict):
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
    min_replicas: int = Field(default=1, ge=0, le=INT32_MAX)
    """Fewest replicas; 0 (scale to zero) needs deployment_mode Knative."""
    max_replicas: int | None = Field(default=None, ge=1, le=INT32_MAX)
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


class Shadow(Strict):
    """Mirror `percent` of the traffic to `version`; its answers are discarded."""

    version: str
    """Version that receives mirrored traffic (weight 0); its answers are discarded."""
    percent: Percent
    """Share of requests mirrored, above 0 and up to 100."""


class ABRoute(Strict):
    """Requests whose `header` equals `value` go to `version` (A/B testing)."""

    header: HeaderName
    """Request header to match (lowercase)."""
    value: str = Field(min_length=1)
    """Exact value that selects the version."""
    version: str
    """Version the matching requests go to."""


class UpstreamTLS(Strict):
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


class Retries(Strict):
    attempts: int = Field(default=1, ge=0, le=10)
    """Retries after the first try (0 disables)."""
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream", "unavailable")
    """Envoy retry_on conditions."""
    per_try_timeout: Timeout | None = None
    """Timeout of each try; unset: the route timeout."""


class CircuitBreaker(Strict):
    max_connections: Count = 1024
    """Upper bound on connections to the version's backends."""
    max_pending_requests: Count = 1024
    """Upper bound on queued requests."""
    max_requests: Count = 1024
    """Upper bound on concurrent requests."""
    max_retries: int = Field(default=3, ge=0, le=UINT32_MAX)
    """Upper bound on concurrent retries."""


class OutlierDetection(Strict):
    """Eject a model endpoint after consecutive 5xx answers (Istio DestinationRule outlierDetection)."""

    consecutive_5xx_errors: int = Field(default=5, ge=1, le=UINT32_MAX)
    """5xx answers in a row that eject an endpoint."""
    interval: Timeout = 10.0
    """How often endpoints are scanned."""
    base_ejection_time: Timeout = 30.0
    """How long an ejected endpoint stays out (times the number of ejections)."""
    max_ejection_percent: int = Field(default=50, ge=0, le=100)
    """At most this percent of the endpoints are ejected at once."""


class HealthCheck(Strict):
    """Readiness probes of each endpoint of the model (v2 health APIs, or HTTP GET for openai)."""

    enabled: bool = True
    """Probe the endpoints; off: never probed, their health stays unknown (Envoy routes to them)."""
    interval: Timeout = 5.0
    """Time between two probes of one endpoint."""
    timeout: Timeout = 1.0
    """A probe that takes longer fails."""
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    """Consecutive successful probes that turn an unhealthy endpoint healthy."""
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    """Consecutive failed probes that turn a healthy endpoint unhealthy."""
    path: str = Field(default="/v1/models", pattern=r"^/[^\s]*$")
    """HTTP path probed for protocol openai (any 2xx is ready); v2-rest and v2-grpc use the v2 health APIs."""


class Model(Strict):
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
    context_limit_tokens: Count | None = None
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
    timeout: Timeout = 60.0
    """Route timeout of a request: until its response has ended (a stream's last byte included)."""
    idle_timeout: Timeout | None = None
    """Longest silence of a request's stream (between two chunks of a response); Envoy then ends it.
    Unset: only `timeout` applies. For LLM streams set `timeout` to the longest generation and this to
    the longest pause between tokens (docs/llm.md)."""
    stream_infer: bool = False
    """v2-grpc: let clients open Triton's `ModelStreamInfer` stream. It is authorized, rate limited and
    routed on the head of its first message: its later messages reach the same backend unchecked (they
    could name another model that backend serves), so enable it for a backend that serves only models
    every caller of this one may use. Off: the stream is refused (PERMISSION_DENIED `stream_forbidden`)."""
    max_request_bytes: Count = 1 << 26
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

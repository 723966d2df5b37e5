"""Policy -> what to probe: one `ProbeTarget` per (model, version, endpoint). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from meshgate.policy.model import HealthCheck, Model, ModelVersion, Policy, UpstreamTLS

from ._types import EndpointKey, Thresholds
from .kserve import knative_host, kserve_address

__all__ = ["ProbeTarget", "probe_targets", "version_endpoints"]


@dataclass(frozen=True, kw_only=True)
class ProbeTarget:
    key: EndpointKey
    protocol: str
    """v2-rest, v2-grpc or openai."""
    host: str
    port: int
    model_name: str
    """Model name the backend knows (the policy's model name)."""
    backend_version: str
    """Version asked for in the model readiness call; "" for the unversioned URL."""
    check: HealthCheck
    tls: UpstreamTLS

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(healthy=self.check.healthy_threshold, unhealthy=self.check.unhealthy_threshold)


def version_endpoints(version: ModelVersion, *, grpc: bool = False) -> tuple[str, ...]:
    """The endpoint strings of a version: its host:port list, or where KServe publishes its reference
    (`meshgate.models.kserve`: `<service>-predictor.<namespace>.svc.cluster.local:<port>`).
    `grpc`: of a model with `protocols` (REST and gRPC), the gRPC ones (`grpc_endpoints`, the
    reference's `grpc_port`).

    The same addresses xds puts in the version's cluster, so `EndpointKey`s match EDS endpoints.
    """
    if version.kserve is not None:
        return (kserve_address(version.kserve, version.deployment_mode, grpc=grpc).endpoint,)
    return version.grpc_endpoints if grpc else version.endpoints


def probe_targets(policy: Policy) -> dict[EndpointKey, ProbeTarget]:
    """Every endpoint of every model version whose model has probes enabled."""
    out: dict[EndpointKey, ProbeTarget] = {}
    for model in policy.models:
        if not model.health_check.enabled:
            continue
        for version in model.versions:
            if knative_host(version) is not None:
                continue  # a probe is a request: it would keep a version from scaling to zero
            for protocol in model.served_protocols:
                grpc = protocol == "v2-grpc" and bool(model.protocols)  # the second address of a version
                for endpoint in version_endpoints(version, grpc=grpc):
                    target = _target(model, version, endpoint, protocol)
                    out[target.key] = target
    return out


def _target(model: Model, version: ModelVersion, endpoint: str, protocol: str) -> ProbeTarget:
    host, _, port = endpoint.rpartition(":")
    return ProbeTarget(
        key=EndpointKey(model.name, version.name, endpoint),
        protocol=protocol,
        host=host.strip("[]"),
        port=int(port),
        model_name=model.name,
        backend_version=version.backend_version or "",
        check=model.health_check,
        tls=model.upstream_tls,
    )

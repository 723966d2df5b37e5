"""How KServe names what it creates for an InferenceService, and so where a `kserve:` reference points.

One module for every room that needs it (xds endpoints, probes, rendered manifests, their tests). From
KServe's controller (kserve/kserve, pkg/):

- The predictor component is named `PredictorServiceName(isvc)` = `<isvc>-predictor`
  (constants/constants.go).
- Standard (formerly RawDeployment): a Service `<isvc>-predictor` (reconcilers/service/
  service_reconciler.go, `createDefaultSvc`): the predictor container's first port is published on
  port 80 (`CommonDefaultHttpPort`), targetPort that container port; each further port under its own
  number; a container with no port: 80 -> 8080 (`InferenceServiceDefaultHttpPort`).
- Knative (formerly Serverless): a Knative Service `<isvc>-predictor` (reconcilers/knative/
  ksvc_reconciler.go), whose route Knative publishes as `<isvc>-predictor.<ns>.svc.cluster.local`
  port 80 through its local gateway, the activator included: a request there wakes a revision scaled
  to zero. The gateway routes by Host, so the request must carry that host. KServe also creates an
  ExternalName Service named `<isvc>` (reconcilers/ingress/ingress_reconciler.go,
  `reconcileExternalService`). Knative routes one container port: one protocol per version.

A reference is reached at `<service>-predictor.<namespace>.svc.cluster.local`: port `port` (80), or for
the gRPC face of a two-protocol Standard model `grpc_port` (the second container port, published as
is; Triton's runtime serves gRPC on 9000).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshgate.policy.model import KServeRef, ModelVersion

__all__ = ["KServeAddress", "knative_host", "kserve_address", "kserve_names", "predictor_service"]

PREDICTOR_SUFFIX = "-predictor"
KNATIVE_PORT = 80  # Knative's local gateway, for HTTP/1.1 and h2c alike


def predictor_service(isvc: str) -> str:
    """`<isvc>-predictor`: KServe's predictor Service (Standard) or Knative Service (Knative)."""
    return isvc + PREDICTOR_SUFFIX


@dataclass(frozen=True, slots=True)
class KServeAddress:
    host: str
    """`<isvc>-predictor.<namespace>.svc.cluster.local`."""
    port: int
    knative: bool
    """Reached through Knative's gateway: the request's Host must be `host`."""

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def kserve_address(ref: KServeRef, mode: str, *, grpc: bool = False) -> KServeAddress:
    """Where `ref` (of a version in deployment mode `mode`) is reached; `grpc`: the gRPC face of a model
    served over REST and gRPC."""
    host = f"{predictor_service(ref.service)}.{ref.namespace}.svc.cluster.local"
    if mode == "Knative":
        return KServeAddress(host, KNATIVE_PORT, knative=True)
    return KServeAddress(host, ref.grpc_port if grpc else ref.port, knative=False)


def knative_host(version: ModelVersion) -> str | None:
    """The Host a request to `version` must carry (a Knative reference), else None."""
    if version.kserve is None or version.deployment_mode != "Knative":
        return None
    return kserve_address(version.kserve, "Knative").host


def kserve_names(isvc: str, mode: str) -> tuple[str, ...]:
    """The Service names KServe (and Knative) create in the InferenceService's namespace for `isvc`:
    what a Service meshgate renders there must never be called. Knative's revision Services
    (`<isvc>-predictor-<n>`, `-private`) all start with the predictor's name and a dash."""
    if mode == "Knative":
        return (isvc, predictor_service(isvc))
    return (predictor_service(isvc),)

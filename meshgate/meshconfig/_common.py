"""Names, labels and small value formats shared by every render target. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from ..policy._fields import ISVC_NAME_MAX
from ..policy.model import Model, ModelVersion, Policy, Tenant

__all__ = [
    "LABEL_MANAGED_BY",
    "LABEL_MODEL",
    "LABEL_VERSION",
    "Obj",
    "gateway_api_duration",
    "k8s_name",
    "meshgate_host",
    "metadata",
    "model_host",
    "model_labels",
    "model_name",
    "model_namespace",
    "model_port",
    "model_ports",
    "proto_duration",
    "tenant_namespace",
    "version_name",
    "version_service",
]

Obj = dict[str, Any]

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL = "meshgate.io/model"
LABEL_VERSION = "meshgate.io/version"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def k8s_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1035 label (what a Service's name must be: a letter first) from policy names, joined by
    '-'. Unchanged when already valid; otherwise cleaned (a name that starts with a digit gets `m-`) and
    given a short hash of the original. Joined names can still meet (model `a` version `b`, model
    `a-b`): `render` refuses two objects of one name."""
    raw = "-".join(parts)
    clean = _NOT_DNS.sub("-", raw.lower()).strip("-")
    if clean == raw and len(raw) <= limit and raw[:1].isalpha():
        return raw
    if not clean[:1].isalpha():
        clean = f"m-{clean}"
    digest = hashlib.sha256(raw.encode()).hexdigest()[:6]
    return f"{clean[: limit - 7].rstrip('-')}-{digest}"


def metadata(name: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {LABEL_MANAGED_BY: "meshgate", **(labels or {})}
    return meta


def model_name(model: Model) -> str:
    return k8s_name(model.name)


def version_name(model: Model, version: ModelVersion) -> str:
    """Name of a version's InferenceService (and, in Standard mode, of meshgate's Service of its pods):
    at most ISVC_NAME_MAX characters, as the policy's `kserve.service`."""
    return k8s_name(model.name, version.name, limit=ISVC_NAME_MAX)


def version_service(model: Model, version: ModelVersion) -> str:
    """Name of meshgate's Service selecting a version's pods. In Knative mode KServe itself creates a
    Service named after the InferenceService (meshgate.models.kserve): meshgate's is `<isvc>-pods`."""
    if version.deployment_mode == "Knative":
        return k8s_name(model.name, version.name, "pods")
    return version_name(model, version)


def model_namespace(model: Model) -> str:
    """Where the model's objects go: its `namespace`, else its first KServe reference's, else `default`.
    Only a `namespace` the policy sets is *declared* (see `_namespaces`): namespace-wide objects
    (isolation, mTLS, the Namespace itself) go only into declared namespaces."""
    if model.namespace is not None:
        return model.namespace
    refs = [v.kserve.namespace for v in model.versions if v.kserve is not None]
    return refs[0] if refs else "default"


def tenant_namespace(tenant: Tenant) -> str | None:
    """The tenant's declared namespace, or None: a tenant without one gets no namespace-wide object."""
    return tenant.namespace


def model_labels(model: Model, version: ModelVersion | None = None) -> dict[str, str]:
    labels = {LABEL_MODEL: model_name(model)}
    if version is not None:
        labels[LABEL_VERSION] = version.name
    return labels


def model_port(model: Model) -> tuple[str, int]:
    """(port name, number) of a model's Services: Triton serves HTTP on 8080 and gRPC on 9000. A model
    served over both: its REST port (`model_ports` has both)."""
    return ("grpc", 9000) if model.protocol == "v2-grpc" else ("http", 8080)


def model_ports(model: Model) -> list[tuple[str, int]]:
    """(port name, number) of every protocol the model is served over (KServe's Triton runtime:
    `--http-port=8080`, `--grpc-port=9000`)."""
    return [("grpc", 9000) if p == "v2-grpc" else ("http", 8080) for p in model.served_protocols]


def model_host(model: Model) -> str:
    return f"{model_name(model)}.{model_namespace(model)}.svc.cluster.local"


def meshgate_host(policy: Policy) -> str:
    return f"{policy.mesh.service}.{policy.mesh.namespace}.svc.cluster.local"


def proto_duration(seconds: float) -> str:
    """Protobuf JSON duration, as Istio reads it: 30s, 0.25s."""
    return f"{round(seconds, 3):g}s"


def gateway_api_duration(seconds: float) -> str:
    """Gateway API / Envoy Gateway duration: 30s, 250ms."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"

"""Policy -> KServe: one InferenceService per model version on the Triton runtime, and the Services the
gateway targets select its pods through (one per model for Istio subsets, one per version for
Envoy Gateway backends). Pods carry meshgate.io/model and meshgate.io/version labels.

KServe creates Services of its own for each InferenceService (`meshgate.models.kserve`): meshgate's
never take one of their names (a Knative version's is `<isvc>-pods`, KServe's ExternalName being
`<isvc>`); a policy whose names would still collide is refused (`ServiceNameClash`).
"""

from __future__ import annotations

from ..models.kserve import kserve_names, predictor_service
from ..policy.model import Model, ModelVersion, Policy
from ._common import (
    Obj,
    metadata,
    model_labels,
    model_name,
    model_namespace,
    model_ports,
    version_name,
    version_service,
)
from ._namespaces import declared_model_namespaces, namespace

__all__ = ["ServiceNameClash", "render_kserve"]


class ServiceNameClash(ValueError):
    """A Service meshgate renders would take the name of one KServe creates."""


_PROTOCOL = {"v2-rest": "v2", "v2-grpc": "grpc-v2", "openai": "v2"}
# OpenAI-protocol models run on KServe's Hugging Face runtime (its OpenAI endpoints); others on Triton
_FORMAT = {"v2-rest": "triton", "v2-grpc": "triton", "openai": "huggingface"}


def render_kserve(policy: Policy) -> list[Obj]:
    objs: list[Obj] = [namespace(ns) for ns in declared_model_namespaces(policy)]
    for model in policy.models:
        objs.append(_service(model, None))
        for version in model.versions:
            objs.append(_service(model, version))
            if version.storage_uri is not None:
                objs.append(_inference_service(model, version))
    _refuse_clashes(objs)
    return objs


def _refuse_clashes(objs: list[Obj]) -> None:
    """Raise ServiceNameClash when a rendered Service would be one KServe creates for a rendered
    InferenceService (same namespace): `<isvc>-predictor`, Knative's `<isvc>` and revisions."""
    taken: dict[tuple[str, str], str] = {}
    for obj in objs:
        if obj["kind"] == "InferenceService":
            meta = obj["metadata"]
            mode = meta["annotations"]["serving.kserve.io/deploymentMode"]
            for name in kserve_names(meta["name"], mode):
                taken[(meta["namespace"], name)] = meta["name"]
    for obj in objs:
        if obj["kind"] != "Service":
            continue
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        isvc = taken.get(key) or next(
            (
                i
                for (ns, name), i in taken.items()
                if ns == key[0] and key[1].startswith(predictor_service(i) + "-")
            ),
            None,
        )
        if isvc is not None:
            raise ServiceNameClash(
                f"Service {key[1]} (namespace {key[0]}) would take a name KServe creates for "
                f"InferenceService {isvc}: rename the model or the version"
            )


def _service(model: Model, version: ModelVersion | None) -> Obj:
    name = model_name(model) if version is None else version_service(model, version)
    labels = model_labels(model, version)
    spec: Obj = {
        "selector": labels,
        "ports": [
            {
                "name": port_name,
                "port": port,
                "targetPort": port,
                "protocol": "TCP",
                "appProtocol": "grpc" if port_name == "grpc" else "http",
            }
            for port_name, port in model_ports(model)
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, model_namespace(model), labels),
        "spec": spec,
    }


def _inference_service(model: Model, version: ModelVersion) -> Obj:
    spec_model: Obj = {
        "modelFormat": {"name": _FORMAT[model.protocol]},
        "protocolVersion": _PROTOCOL[model.protocol],
        "storageUri": version.storage_uri,
    }
    if version.runtime is not None:
        spec_model["runtime"] = version.runtime
    # the container ports KServe publishes on its predictor Service (the first on port 80, the others
    # under their own number): none for REST (KServe's default, 80 -> 8080), Triton's gRPC 9000 (h2c:
    # KServe and Knative speak HTTP/2 to it), or both for a model served over REST and gRPC
    if model.protocols:
        spec_model["ports"] = [
            {"name": "http", "protocol": "TCP", "containerPort": 8080},
            {"name": "grpc", "protocol": "TCP", "containerPort": 9000},
        ]
    elif model.protocol == "v2-grpc":
        spec_model["ports"] = [{"name": "h2c", "protocol": "TCP", "containerPort": 9000}]
    if version.gpus:
        gpus = str(version.gpus)
        spec_model["resources"] = {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}}
    predictor: Obj = {"minReplicas": version.min_replicas}
    if version.max_replicas is not None:
        predictor["maxReplicas"] = version.max_replicas
    predictor["labels"] = model_labels(model, version)
    predictor["model"] = spec_model
    meta = metadata(version_name(model, version), model_namespace(model), model_labels(model, version))
    meta["annotations"] = {"serving.kserve.io/deploymentMode": version.deployment_mode}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }

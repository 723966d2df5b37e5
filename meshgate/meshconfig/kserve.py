"""Policy -> KServe: one InferenceService per model version on the Triton runtime, and the Services the
gateway targets select its pods through (one per model for Istio subsets, one per version for
Envoy Gateway backends). Pods carry meshgate.io/model and meshgate.io/version labels.
"""

from __future__ import annotations

from ..policy.model import Model, ModelVersion, Policy
from ._common import Obj, metadata, model_labels, model_name, model_namespace, model_port, version_name
from ._namespaces import declared_model_namespaces, namespace

__all__ = ["render_kserve"]

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
    return objs


def _service(model: Model, version: ModelVersion | None) -> Obj:
    port_name, port = model_port(model)
    name = model_name(model) if version is None else version_name(model, version)
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
    if model.protocol == "v2-grpc":
        spec_model["ports"] = [{"name": "h2c", "protocol": "TCP", "containerPort": model_port(model)[1]}]
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

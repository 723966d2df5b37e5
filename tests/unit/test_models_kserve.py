"""Every `kserve:` reference checked against what KServe itself creates for the InferenceServices meshgate
renders. KServe's objects are derived here from each rendered InferenceService (name, namespace,
deployment mode, declared container ports), by its controller's rules: pkg/constants/constants.go
`PredictorServiceName`; Standard: reconcilers/service/service_reconciler.go `createDefaultSvc`;
Knative: reconcilers/knative/ksvc_reconciler.go (the predictor's Knative Service, whose route Knative
publishes on port 80) and reconcilers/ingress/ingress_reconciler.go `reconcileExternalService`; the
Triton runtime's ports, config/runtimes/kserve-tritonserver.yaml (HTTP 8080, gRPC 9000)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from meshgate.meshconfig import render
from meshgate.meshconfig.kserve import ServiceNameClash
from meshgate.models import probe_targets
from meshgate.policy import Policy, load_policy
from meshgate.xds import compile_snapshot
from meshgate.xds._types import CLUSTER
from tests.unit.test_xds_compile import routes
from tests.unit.test_xds_support import REPO, policy

# the container port each protocol is served on: Triton's runtime (--http-port, --grpc-port), and KServe's
# own ModelServer for the Hugging Face runtime (OpenAI), on its default --http_port
CONTAINER_PORT = {"v2-rest": 8080, "v2-grpc": 9000, "openai": 8080}


@dataclass(frozen=True)
class KServeService:
    """A Service KServe (or Knative, for it) creates: published port -> the container port it reaches
    (None: Knative's gateway, which routes by Host)."""

    ports: dict[int, int | None]
    knative: bool = False


def kserve_creates(isvc: dict[str, Any]) -> dict[tuple[str, str], KServeService]:
    """(namespace, name) -> Service, for one rendered InferenceService, as KServe's controller makes them."""
    meta = isvc["metadata"]
    name, ns = meta["name"], meta["namespace"]
    mode = meta["annotations"]["serving.kserve.io/deploymentMode"]
    predictor = f"{name}-predictor"
    if mode == "Knative":  # the ExternalName `<isvc>`, and the predictor's Knative route
        return {(ns, name): KServeService({}), (ns, predictor): KServeService({80: None}, knative=True)}
    declared = [p["containerPort"] for p in isvc["spec"]["predictor"]["model"].get("ports", [])]
    if not declared:
        return {(ns, predictor): KServeService({80: 8080})}
    return {(ns, predictor): KServeService({80: declared[0], **{p: p for p in declared[1:]}})}


def _version(name: str, mode: str, **extra: Any) -> dict[str, Any]:
    replicas = {"min_replicas": 0} if mode == "Knative" else {}
    return {"name": name, "storage_uri": f"s3://models/{name}", "deployment_mode": mode, **replicas, **extra}


def every_mode() -> Policy:
    """Each protocol in each mode, every version referring to the InferenceService meshgate renders."""

    def model(name: str, mode: str, **extra: Any) -> dict[str, Any]:
        version = _version("v1", mode, kserve={"service": f"{name}-v1", "namespace": "ml"})
        return {"name": name, "namespace": "ml", "versions": [version], **extra}

    return policy(
        model("rest", "Standard"),
        model("grpc", "Standard", protocol="v2-grpc"),
        model("both", "Standard", protocols=["v2-rest", "v2-grpc"]),
        model("lazy", "Knative"),
        model("glazy", "Knative", protocol="v2-grpc"),
        {
            "name": "canary",
            "namespace": "ml",
            "versions": [
                {
                    **_version("a", "Standard", kserve={"service": "canary-a", "namespace": "ml"}),
                    "weight": 50,
                },
                {**_version("b", "Knative", kserve={"service": "canary-b", "namespace": "ml"}), "weight": 50},
            ],
        },
    )


POLICIES = {
    "every_mode": every_mode,
    "large": lambda: load_policy(REPO / "tests/fixtures/policies/large.yaml"),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_reference_reaches_a_service_kserve_creates(name: str) -> None:
    p = POLICIES[name]()
    objs = render(p, "kserve")
    created = {
        k: v for obj in objs if obj["kind"] == "InferenceService" for k, v in kserve_creates(obj).items()
    }
    snapshot = compile_snapshot(p)
    probed = {key.endpoint for key in probe_targets(p)}
    by_route = {r.name: r for r in routes(snapshot)}
    checked = 0
    for model in p.models:
        for version in model.versions:
            if version.kserve is None:
                continue
            for protocol in model.served_protocols:
                suffix = "|grpc" if model.protocols and protocol == "v2-grpc" else ""
                cluster = snapshot[CLUSTER][f"model|{model.name}|{version.name}{suffix}"].message
                lb = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint
                host, port = lb.address.socket_address.address, lb.address.socket_address.port_value
                service, _, rest = host.partition(".")
                namespace = rest.removesuffix(".svc.cluster.local")
                found = created.get((namespace, service))
                assert found is not None, f"{model.name}/{version.name}: {host} is no Service KServe creates"
                assert port in found.ports, f"{model.name}/{version.name}: {service} does not publish {port}"
                if found.knative:  # Knative's gateway routes by Host: the request carries this one
                    assert lb.hostname == host
                    canary = by_route[f"{model.name}{suffix}|canary"]
                    assert canary.route.auto_host_rewrite.value
                    assert f"{host}:{port}" not in probed  # a probe would keep it from scaling to zero
                else:
                    assert found.ports[port] == CONTAINER_PORT[protocol], (
                        f"{model.name}/{version.name} {protocol}"
                    )
                    assert f"{host}:{port}" in probed
                checked += 1
    assert checked >= (7 if name == "every_mode" else 3)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_rendered_services_never_take_a_name_kserve_creates(name: str) -> None:
    objs = render(POLICIES[name](), "kserve")
    created = {k for obj in objs if obj["kind"] == "InferenceService" for k in kserve_creates(obj)}
    predictors = {(ns, n) for ns, n in created if n.endswith("-predictor")}
    for obj in objs:
        if obj["kind"] == "Service":
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            assert key not in created, key
            assert not any(key[0] == ns and key[1].startswith(n + "-") for ns, n in predictors), key


def test_a_policy_whose_names_would_clash_is_refused() -> None:
    """Model `a` version `x` (Knative) is InferenceService `a-x`, for which KServe creates the
    ExternalName `a-x`: the per-model Service of a model named `a-x` would be the same object."""
    clash = policy(
        {"name": "a", "namespace": "ml", "versions": [_version("x", "Knative", endpoints=["10.0.0.1:8080"])]},
        {"name": "a-x", "namespace": "ml", "versions": [{"name": "v1", "endpoints": ["10.0.0.2:8080"]}]},
    )
    with pytest.raises(ServiceNameClash) as caught:
        render(clash, "kserve")
    assert "Service a-x (namespace ml)" in str(caught.value)

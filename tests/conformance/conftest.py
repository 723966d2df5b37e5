"""The conformance stack, started once per module: the model stand-ins, one `meshgate serve` for the
corpus policy, and one real Envoy per target (meshgate's own over xDS; Istio's and Envoy Gateway's
configured from the rendered objects as their control planes would)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate.meshconfig import render
from meshgate.meshconfig._common import model_host, version_name
from meshgate.meshconfig.istio import mesh_config
from meshgate.policy import Policy, parse_policy
from meshgate.xds.bootstrap import bootstrap_dict
from tests.conformance.corpus import policy_doc
from tests.conformance.eg_envoy import eg_bootstrap
from tests.conformance.istio_envoy import istio_bootstrap
from tests.conformance.upstream import EchoGRPC, EchoHTTP
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import free_port
from tests.harness.stack import Stack


@dataclass
class Gateways:
    policy: Policy
    meshgate: Meshgate
    ports: dict[str, int]  # target -> the gateway's port on 127.0.0.1
    envoys: dict[str, Envoy]


def _upstreams(policy: Policy, http: int, grpc: int) -> tuple[dict[str, Any], dict[Any, int]]:
    istio: dict[str, Any] = {}
    eg: dict[Any, int] = {}
    for model in policy.models:
        port = grpc if model.protocol == "v2-grpc" else http
        istio[model_host(model)] = (port, model.protocol == "v2-grpc")
        for version in model.versions:
            eg[("default", version_name(model, version))] = port
    return istio, eg


@contextlib.contextmanager
def _gateways(workdir: Path, *, extauthz_down: bool = False) -> Iterator[Gateways]:
    """The corpus policy behind three gateways. `extauthz_down`: `failure_mode_allow: true`, and every
    gateway's ext_authz cluster points at a port nothing listens on (the gateways fail open)."""
    http, grpc = EchoHTTP(), EchoGRPC()
    stack = Stack(workdir)
    try:
        doc = policy_doc(http_port=http.port, grpc_port=grpc.port, gateway_port=free_port())
        env = None
        ports = {"extauthz": free_port(), "ratelimit": free_port()}
        extauthz_at = ports["extauthz"]
        if extauthz_down:
            doc["gateway"]["ext_authz"] = {"failure_mode_allow": True}
            extauthz_at = free_port()  # bound by nobody
            env = {"MESHGATE_XDS_EXTAUTHZ": f"127.0.0.1:{extauthz_at}"}
        policy = parse_policy(yaml.safe_dump(doc), "conformance.yaml")
        extra = [arg for role, p in ports.items() for arg in (f"--{role}", f"127.0.0.1:{p}")]
        meshgate = stack.add(Meshgate(doc, workdir=stack.workdir, extra_args=extra, env=env)).start()
        local = {policy.mesh.extauthz_port: extauthz_at, policy.mesh.ratelimit_port: ports["ratelimit"]}
        istio_up, eg_up = _upstreams(policy, http.port, grpc.port)
        bootstraps = {
            "meshgate": bootstrap_dict("conformance", xds=meshgate.address("xds")),
            "istio": istio_bootstrap(
                render(policy, "istio"), mesh_config(policy), upstreams=istio_up, meshgate=local
            ),
            "envoy-gateway": eg_bootstrap(render(policy, "envoy-gateway"), upstreams=eg_up, meshgate=local),
        }
        envoys = {
            target: stack.add(Envoy(config, workdir=stack.workdir, name=target)).start(wait_ready=False)
            for target, config in bootstraps.items()
        }
        for envoy in envoys.values():
            envoy.wait_ready()
        gateway_ports = {
            "meshgate": policy.gateway.port,
            "istio": envoys["istio"].listener_port("istio_gateway"),
            "envoy-gateway": envoys["envoy-gateway"].listener_port("eg_gateway"),
        }
        yield Gateways(policy, meshgate, gateway_ports, envoys)
    finally:
        stack.close()
        http.close()
        grpc.close()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with _gateways(tmp_path_factory.mktemp("conformance")) as running:
        yield running


@pytest.fixture(scope="module")
def failing_open(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with _gateways(tmp_path_factory.mktemp("conformance-fail-open"), extauthz_down=True) as running:
        yield running

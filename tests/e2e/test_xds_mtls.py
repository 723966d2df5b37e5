"""Upstream mTLS: the model sits behind a second Envoy (a mesh sidecar) that requires client
certificates. The gateway, configured only over ADS with SDS secrets, gets through; a plaintext or
certificate-less client does not; a rotated client certificate is used without restarting anything."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from meshgate.xds.bootstrap import bootstrap_dict
from tests.harness import bootstraps as b
from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.model_server import ModelServer
from tests.harness.procs import free_port, wait_until
from tests.unit.test_xds_support import CertAuthority, write_atomic, write_certs

MODEL = "demo"
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def sidecar_bootstrap(model: ModelServer, certs: dict[str, Path]) -> dict[str, Any]:
    """TLS listener `sidecar` requiring a client certificate from our CA; it tells the model (which
    echoes x-meshgate-* headers) the serial number of the client certificate it saw."""
    route = b.route("/", "model")
    route["request_headers_to_add"] = [
        {"header": {"key": "x-meshgate-peer-serial", "value": "%DOWNSTREAM_PEER_SERIAL%"}}
    ]
    listener = b.hcm_listener("sidecar", [route])
    # one request per connection: each gateway request opens a new TLS session (so a rotated
    # certificate shows at once; pooled connections keep the certificate they were opened with)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["common_http_protocol_options"] = {"max_requests_per_connection": 1}
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS,
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(certs["server_cert"])},
                        "private_key": {"filename": str(certs["server_key"])},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(certs["ca"])}},
            },
        },
    }
    return b.bootstrap([listener], [b.static_cluster("model", model.host, model.http_port)])


@pytest.fixture
def mesh(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> dict[str, Any]:
    ca = CertAuthority()
    certs = write_certs(tmp_path / "tls", ca=ca)
    model = model_server_factory(MODEL, "v1")
    sidecar = envoy_factory(sidecar_bootstrap(model, certs), name="sidecar")
    sidecar_port = sidecar.listener_port("sidecar")
    port = free_port()
    tls = {
        "mode": "mtls",
        "cert_file": str(certs["client_cert"]),
        "key_file": str(certs["client_key"]),
        "ca_file": str(certs["ca"]),
        "sni": "localhost",
        "subject_alt_names": ["localhost"],
    }
    doc = {
        "version": 1,
        "gateway": {"port": port},
        "models": [
            {
                "name": MODEL,
                "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{sidecar_port}"]}],
                "upstream_tls": tls,
            }
        ],
    }
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    meshgate = meshgate_factory(policy_path, env={"MESHGATE_XDS_FILTERS": "none"})
    gateway = envoy_factory(bootstrap_dict("gateway-mtls", xds=meshgate.address("xds")))
    return {"ca": ca, "certs": certs, "sidecar_port": sidecar_port, "port": port, "gateway": gateway}


def infer(port: int) -> httpx.Response:
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        return client.post(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", json=BODY)


def serial_seen(port: int) -> int:
    response = infer(port)
    assert response.status_code == 200, response.text
    return int(str(response.json()["parameters"]["echo.x-meshgate-peer-serial"]), 16)


def test_gateway_passes_mtls_and_others_are_refused(mesh: dict[str, Any]) -> None:
    assert infer(mesh["port"]).status_code == 200
    with pytest.raises(httpx.HTTPError):  # plaintext to a TLS port
        httpx.post(
            f"http://127.0.0.1:{mesh['sidecar_port']}/v2/models/{MODEL}/infer", json=BODY, trust_env=False
        )
    context = ssl.create_default_context(cafile=str(mesh["certs"]["ca"]))  # TLS, but no client certificate
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        httpx.post(
            f"https://localhost:{mesh['sidecar_port']}/v2/models/{MODEL}/infer",
            json=BODY,
            verify=context,
            trust_env=False,
        )
    secrets = json.dumps(mesh["gateway"].config_dump(resource="dynamic_active_secrets"))
    assert "cert|" in secrets and "ca|" in secrets  # the certificates came over SDS


def test_rotated_client_certificate_is_used_without_restart(mesh: dict[str, Any]) -> None:
    certs, gateway = mesh["certs"], mesh["gateway"]
    first = serial_seen(mesh["port"])
    cert, key, serial = mesh["ca"].issue("client", ["meshgate-gateway"])
    assert serial != first
    write_atomic(certs["client_key"], key)
    write_atomic(certs["client_cert"], cert)

    def loaded() -> bool:
        return format(serial, "x") in gateway.admin_get("/certs").lower()

    wait_until(loaded, 30, what="the rotated client certificate in the gateway (over SDS)", proc=gateway.proc)

    def rotated() -> bool:
        return serial_seen(mesh["port"]) == serial

    wait_until(rotated, 30, what="the rotated client certificate at the sidecar", proc=gateway.proc)


def test_gateway_listener_requires_client_certificates(
    tmp_path: Path,
    model_server_factory: Callable[..., ModelServer],
    meshgate_factory: Callable[..., Meshgate],
    envoy_factory: Callable[..., Envoy],
) -> None:
    certs = write_certs(tmp_path / "tls")
    model = model_server_factory(MODEL, "v1")
    port = free_port()
    doc = {
        "version": 1,
        "gateway": {
            "port": port,
            "tls": {
                "cert_file": str(certs["server_cert"]),
                "key_file": str(certs["server_key"]),
                "client_ca_file": str(certs["ca"]),
            },
        },
        "models": [
            {"name": MODEL, "versions": [{"name": "v1", "endpoints": [f"127.0.0.1:{model.http_port}"]}]}
        ],
    }
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    meshgate = meshgate_factory(policy_path, env={"MESHGATE_XDS_FILTERS": "none"})
    envoy_factory(bootstrap_dict("gateway-tls", xds=meshgate.address("xds")))
    url = f"https://localhost:{port}/v2/models/{MODEL}/infer"

    context = ssl.create_default_context(cafile=str(certs["ca"]))
    context.load_cert_chain(str(certs["client_cert"]), str(certs["client_key"]))
    answer = httpx.post(url, json=BODY, verify=context, trust_env=False)
    assert answer.status_code == 200 and answer.json()["model_version"] == "v1"

    without = ssl.create_default_context(cafile=str(certs["ca"]))
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        httpx.post(url, json=BODY, verify=without, trust_env=False)
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", json=BODY, trust_env=False)

"""`meshgate envoy-bootstrap`: the minimal bootstrap, delta by default."""

from __future__ import annotations

import pytest
import yaml

from meshgate.cli import main
from meshgate.xds.bootstrap import Reconnect, bootstrap_dict


def bootstrap(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["envoy-bootstrap", *args]) == 0
    loaded = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(loaded, dict)
    return loaded


def test_defaults_are_delta_ads_to_local_meshgate(capsys: pytest.CaptureFixture[str]) -> None:
    doc = bootstrap(capsys, "--node-id", "gw-1")
    assert doc["node"] == {"id": "gw-1", "cluster": "meshgate-gateway"}
    ads = doc["dynamic_resources"]["ads_config"]  # type: ignore[index]
    assert ads["api_type"] == "DELTA_GRPC"
    backoff = {"base_interval": "0.25s", "max_interval": "1s"}  # Envoy's default would be 0.5 s .. 30 s
    assert ads["grpc_services"] == [
        {"envoy_grpc": {"cluster_name": "meshgate_xds", "retry_policy": {"retry_back_off": backoff}}}
    ]
    cluster, gateways = doc["static_resources"]["clusters"]  # type: ignore[index]
    assert cluster["type"] == "STATIC"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}
    # the gateways' local cluster (native quotas' share, docs/native.md): its endpoints come over ADS
    assert doc["cluster_manager"] == {"local_cluster_name": gateways["name"]}  # type: ignore[index]
    assert gateways["type"] == "EDS" and gateways["eds_cluster_config"]["eds_config"]["ads"] == {}
    assert doc["admin"]["address"]["socket_address"]["port_value"] == 9901  # type: ignore[index]


def test_flags(capsys: pytest.CaptureFixture[str]) -> None:
    doc = bootstrap(
        capsys, "--node-id", "n", "--xds", "meshgate.mesh.svc:18001", "--admin-port", "19000", "--sotw"
    )
    assert doc["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"  # type: ignore[index]
    cluster, _ = doc["static_resources"]["clusters"]  # type: ignore[index]
    assert cluster["type"] == "STRICT_DNS"
    assert doc["admin"]["address"]["socket_address"]["port_value"] == 19000  # type: ignore[index]


def test_node_id_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["envoy-bootstrap"])
    assert "--node-id" in capsys.readouterr().err


def test_tls_to_meshgate(capsys: pytest.CaptureFixture[str]) -> None:
    doc = bootstrap(
        capsys, "--node-id", "n", "--xds", "meshgate.mesh.svc:18000",
        "--tls-ca", "/ca.pem", "--tls-cert", "/c.pem", "--tls-key", "/k.pem",
    )  # fmt: skip
    cluster, _ = doc["static_resources"]["clusters"]  # type: ignore[index]
    context = cluster["transport_socket"]["typed_config"]
    assert context["sni"] == "meshgate.mesh.svc"
    common = context["common_tls_context"]
    assert common["validation_context"] == {"trusted_ca": {"filename": "/ca.pem"}}
    assert common["tls_certificates"] == [
        {"certificate_chain": {"filename": "/c.pem"}, "private_key": {"filename": "/k.pem"}}
    ]


def test_half_a_client_certificate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envoy-bootstrap", "--node-id", "n", "--tls-ca", "/ca", "--tls-cert", "/c"]) == 2
    assert "--tls-key" in capsys.readouterr().err


def test_reconnect_backoff_is_bounded_and_configurable() -> None:
    doc = bootstrap_dict("n", reconnect=Reconnect(base=0.05, max=2.5))
    [service] = doc["dynamic_resources"]["ads_config"]["grpc_services"]
    assert service["envoy_grpc"]["retry_policy"] == {
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "2.5s"}
    }
    for base, most in ((0.0, 1.0), (2.0, 1.0)):  # Envoy wants base >= 1 ms and max >= base
        with pytest.raises(ValueError, match="base <= max"):
            Reconnect(base=base, max=most)

"""`meshgate serve --tls-*`: the ADS port over mTLS, an Envoy bootstrapped with its client certificate, rotation."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.envoy import Envoy
from tests.harness.meshgate import Meshgate
from tests.harness.procs import wait_until
from tests.unit.test_xds_support import CertAuthority, write_atomic, write_certs

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"
SERVING = health_pb2.HealthCheckResponse.SERVING


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    return int(reply.status)


def _served_serial(address: str, certs: dict[str, Path]) -> int:
    """The serial number of the certificate the xds port presents to a new handshake."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    context.load_cert_chain(str(certs["client_cert"]), str(certs["client_key"]))
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(
        socket.create_connection((host, int(port)), timeout=3), server_hostname="localhost"
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture
def tls_meshgate(
    tmp_path: Path, meshgate_factory: Callable[..., Meshgate]
) -> tuple[Meshgate, dict[str, Path], CertAuthority]:
    ca = CertAuthority()
    certs = write_certs(tmp_path / "certs", ca=ca)
    mg = meshgate_factory(
        EXAMPLE,
        extra_args=[
            "--tls-cert",
            str(certs["server_cert"]),
            "--tls-key",
            str(certs["server_key"]),
            "--tls-client-ca",
            str(certs["ca"]),
        ],
    )
    return mg, certs, ca


def test_ads_port_requires_a_client_certificate(
    tls_meshgate: tuple[Meshgate, dict[str, Path], CertAuthority],
) -> None:
    mg, certs, _ = tls_meshgate
    xds = mg.address("xds")
    options = (("grpc.ssl_target_name_override", "localhost"),)
    with grpc.insecure_channel(xds) as plaintext, pytest.raises(grpc.RpcError):
        _health(plaintext)
    anonymous = grpc.ssl_channel_credentials(root_certificates=certs["ca"].read_bytes())
    with grpc.secure_channel(xds, anonymous, options=options) as channel, pytest.raises(grpc.RpcError):
        _health(channel)
    client = grpc.ssl_channel_credentials(
        root_certificates=certs["ca"].read_bytes(),
        private_key=certs["client_key"].read_bytes(),
        certificate_chain=certs["client_cert"].read_bytes(),
    )
    with grpc.secure_channel(xds, client, options=options) as channel:
        assert _health(channel) == SERVING
    with grpc.insecure_channel(mg.address("extauthz")) as channel:  # the gateway's filters stay plaintext
        assert _health(channel) == SERVING


def test_envoy_bootstrapped_with_mtls_gets_its_config(
    tls_meshgate: tuple[Meshgate, dict[str, Path], CertAuthority], envoy_factory: Callable[..., Envoy]
) -> None:
    mg, certs, _ = tls_meshgate
    bootstrap = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshgate",
            "envoy-bootstrap",
            "--node-id",
            "tls-gateway",
            "--xds",
            mg.address("xds"),
            "--tls-ca",
            str(certs["ca"]),
            "--tls-cert",
            str(certs["client_cert"]),
            "--tls-key",
            str(certs["client_key"]),
            "--tls-sni",
            "localhost",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    envoy = envoy_factory(bootstrap)
    wait_until(envoy.listeners, 30, what="a listener over mTLS ADS", proc=envoy.proc)
    dump = json.dumps(envoy.config_dump())
    assert "resnet" in dump  # the policy's routes arrived over the mTLS ADS stream


def test_rotated_server_certificate_is_served_without_restart(
    tls_meshgate: tuple[Meshgate, dict[str, Path], CertAuthority],
) -> None:
    mg, certs, ca = tls_meshgate
    before = _served_serial(mg.address("xds"), certs)
    cert, key, serial = ca.issue("server", ["localhost"], ip="127.0.0.1")
    write_atomic(certs["server_key"], key)  # a rotation seen half-way must keep the old pair in service
    assert _served_serial(mg.address("xds"), certs) == before
    write_atomic(certs["server_cert"], cert)
    assert serial != before
    wait_until(
        lambda: _served_serial(mg.address("xds"), certs) == serial,
        15,
        what="the rotated certificate on a new handshake",
        proc=mg.proc,
    )
    assert mg.proc.alive()

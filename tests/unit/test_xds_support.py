"""Helpers for the xds tests: small policies, certificates, and a snapshot's routing at a glance."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import yaml

from meshgate.policy import Policy, parse_policy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "policy.yaml"
GOLDEN = REPO / "tests" / "golden" / "xds"


def model(name: str, weights: dict[str, int], *, port: int = 9000, **extra: Any) -> dict[str, Any]:
    """A model whose versions v1, v2... listen on 127.0.0.1:port+i."""
    versions = [
        {"name": v, "weight": w, "endpoints": [f"127.0.0.1:{port + i}"]}
        for i, (v, w) in enumerate(weights.items())
    ]
    return {"name": name, "versions": versions, **extra}


def policy(*models: dict[str, Any], port: int = 8080, **extra: Any) -> Policy:
    doc = {"version": 1, "gateway": {"port": port}, "models": list(models), **extra}
    return parse_policy(yaml.safe_dump(doc, sort_keys=False))


class CertAuthority:
    """A throwaway CA (EC P-256) issuing server/client certificates as PEM, for mTLS tests."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "meshgate-test-ca")])
        self.cert = self._build(self._name, self._key, ca=True, sans=[])

    def _build(self, subject: Any, key: Any, *, ca: bool, sans: list[Any]) -> Any:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    @property
    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, dns: list[str], *, ip: str | None = None) -> tuple[bytes, bytes, int]:
        """(certificate PEM, private key PEM, serial number)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[Any] = [x509.DNSName(d) for d in dns]
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])
        cert = self._build(subject, key, ca=False, sans=sans)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert.serial_number


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_certs(directory: Path, *, san: str = "localhost", ca: CertAuthority | None = None) -> dict[str, Path]:
    """CA, server (for `san` and 127.0.0.1) and client certificates as PEM files in `directory`."""
    ca = ca or CertAuthority()
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.crt"}
    paths["ca"].write_bytes(ca.pem)
    for role, dns in (("server", [san]), ("client", ["meshgate-gateway"])):
        cert, key, _ = ca.issue(role, dns, ip="127.0.0.1" if role == "server" else None)
        paths[f"{role}_cert"] = directory / f"{role}.crt"
        paths[f"{role}_key"] = directory / f"{role}.key"
        paths[f"{role}_cert"].write_bytes(cert)
        paths[f"{role}_key"].write_bytes(key)
    return paths

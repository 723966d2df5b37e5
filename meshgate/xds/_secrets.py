"""SDS secrets: certificates and CA bundles named by the policy (gateway TLS, upstream mTLS).

The compiler is pure: the caller reads the files (`cert_files`) and passes their bytes, inlined here.
A path without bytes is referenced by file name instead (Envoy then reads it itself).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshgate.policy.model import Policy

from . import _names
from ._pb import ADS

__all__ = ["cert_files", "sds", "secrets"]


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    """A reference to the secret `name`, delivered over ADS."""
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ADS)


def _files(policy: Policy) -> tuple[list[tuple[str, str]], list[str]]:
    """(certificate, key) pairs and CA files the policy names, in order."""
    pairs: list[tuple[str, str]] = []
    cas: list[str] = []
    gateway = policy.gateway.tls
    if gateway is not None:
        pairs.append((gateway.cert_file, gateway.key_file))
        if gateway.client_ca_file:
            cas.append(gateway.client_ca_file)
    for model in policy.models:
        tls = model.upstream_tls
        if tls.mode == "mtls" and tls.cert_file and tls.key_file and tls.ca_file:
            pairs.append((tls.cert_file, tls.key_file))
            cas.append(tls.ca_file)
    return pairs, cas


def cert_files(policy: Policy) -> list[str]:
    """Every certificate, key and CA file the policy names (what the caller reads for `files`)."""
    pairs, cas = _files(policy)
    return list(dict.fromkeys([*(p for pair in pairs for p in pair), *cas]))


def secrets(policy: Policy, files: Mapping[str, bytes]) -> Iterator[secret_pb2.Secret]:
    """One secret per distinct certificate/key pair and per distinct CA file."""
    pairs, cas = _files(policy)
    for cert, key in dict.fromkeys(pairs):
        yield secret_pb2.Secret(
            name=_names.cert_secret(cert, key),
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=_data(cert, files), private_key=_data(key, files)
            ),
        )
    for ca in dict.fromkeys(cas):
        yield secret_pb2.Secret(
            name=_names.ca_secret(ca),
            validation_context=common_pb2.CertificateValidationContext(trusted_ca=_data(ca, files)),
        )


def _data(path: str, files: Mapping[str, bytes]) -> base_pb2.DataSource:
    data = files.get(path)
    return base_pb2.DataSource(filename=path) if data is None else base_pb2.DataSource(inline_bytes=data)

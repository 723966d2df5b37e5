"""Names of compiled resources, in one place so compiler, checks and tests agree."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from meshgate import contract
from meshgate.policy.model import Model

LISTENER = "meshgate_gateway"
ROUTE_CONFIG = "meshgate_routes"
VIRTUAL_HOST = "models"
EXTAUTHZ_CLUSTER = "meshgate|extauthz"
RATELIMIT_CLUSTER = "meshgate|ratelimit"
MODEL_HEADER = contract.MODEL_HEADER
VERSION_HEADER = contract.VERSION_HEADER


def jwks_cluster(issuer: str) -> str:
    """`meshgate|jwks|<issuer>`: where Envoy's jwt_authn fetches the issuer's jwks_uri (native, auto)."""
    return f"meshgate|jwks|{issuer}"


def cluster(model: str, version: str, face: str = "") -> str:
    """`model|resnet|v1`: the cluster (and EDS service name) of one model version; `model|resnet|v1|grpc`
    for the gRPC face of a model served over REST and gRPC (`faces`)."""
    return f"model|{model}|{version}|{face}" if face else f"model|{model}|{version}"


@dataclass(frozen=True, slots=True)
class Face:
    """One protocol a model is served over, with its own clusters. A model has one face (its
    `protocol`), or two with `protocols: [v2-rest, v2-grpc]`: REST (clusters `model|m|v`, the
    versions' `endpoints`) and gRPC (clusters `model|m|v|grpc`, their `grpc_endpoints`)."""

    protocol: str
    suffix: str = ""
    """"grpc" for the gRPC face of a two-protocol model: cluster names, route names, its addresses."""
    dual: bool = False
    """The model has two faces: header routes must tell gRPC from REST (by content-type)."""

    @property
    def grpc_addresses(self) -> bool:
        """Whether this face's endpoints are the versions' second (gRPC) addresses."""
        return bool(self.suffix)


def faces(model: Model) -> tuple[Face, ...]:
    """The model's faces, gRPC first (its header routes must precede REST's, which match any request
    naming the model)."""
    if model.protocols:
        return (Face("v2-grpc", "grpc", dual=True), Face("v2-rest", dual=True))
    return (Face(model.protocol),)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def cert_secret(cert_file: str, key_file: str) -> str:
    """SDS name of a client certificate: stable for the same pair of files."""
    return f"cert|{_digest(cert_file, key_file)}"


def ca_secret(ca_file: str) -> str:
    """SDS name of a trusted CA bundle (SAN checks live in the cluster, not the secret)."""
    return f"ca|{_digest(ca_file)}"

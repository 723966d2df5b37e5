"""Names of compiled resources, in one place so compiler, checks and tests agree."""

from __future__ import annotations

import hashlib

from meshgate import contract

LISTENER = "meshgate_gateway"
ROUTE_CONFIG = "meshgate_routes"
VIRTUAL_HOST = "models"
EXTAUTHZ_CLUSTER = "meshgate|extauthz"
RATELIMIT_CLUSTER = "meshgate|ratelimit"
MODEL_HEADER = contract.MODEL_HEADER
VERSION_HEADER = contract.VERSION_HEADER


def cluster(model: str, version: str) -> str:
    """`model|resnet|v1`: the cluster (and EDS service name) of one model version."""
    return f"model|{model}|{version}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def cert_secret(cert_file: str, key_file: str) -> str:
    """SDS name of a client certificate: stable for the same pair of files."""
    return f"cert|{_digest(cert_file, key_file)}"


def ca_secret(ca_file: str) -> str:
    """SDS name of a trusted CA bundle (SAN checks live in the cluster, not the secret)."""
    return f"ca|{_digest(ca_file)}"

"""TLS for meshgate's ADS port: server certificate, optional client CA (mTLS), hot rotation.

The files are re-read on the next handshake after any of them changes (cert-manager, Kubernetes Secret
volumes), so certificates rotate without a restart; connections already open keep their session.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from .files import read_bounded

__all__ = ["ServerTLS", "server_credentials"]

log = logging.getLogger("meshgate.tls")


@dataclass(frozen=True, kw_only=True)
class ServerTLS:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    """When set, clients must present a certificate signed by it (mTLS)."""


class _Files:
    """The certificate files and a fingerprint of their state (mtime and size)."""

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self.paths = [p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p is not None]
        self.seen = self.stamp()

    def stamp(self) -> tuple[tuple[int, int], ...]:
        stats = [p.stat() for p in self.paths]
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        ca = read_bounded(self.tls.client_ca_file, what="client CA file") if self.tls.client_ca_file else None
        pair = (
            read_bounded(self.tls.key_file, what="key file"),
            read_bounded(self.tls.cert_file, what="certificate file"),
        )
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration only when the files changed."""
        try:
            stamp = self.stamp()
            if stamp == self.seen:
                return None
            config = self.configuration()  # (first: regular files of a bounded size, read_bounded)
            # a rotation caught half-way (new key, old certificate) must not reach gRPC: check the pair
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                self.tls.cert_file, self.tls.key_file
            )
        except (OSError, ValueError, ssl.SSLError) as exc:  # try again on the next handshake
            log.warning("TLS files unusable, keeping the current certificate: %s", exc)
            return None
        self.seen = stamp
        log.info("TLS certificate files changed: new handshakes use them")
        return config


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; raises OSError or ValueError when a file cannot be read at start
    (`meshgate.files.read_bounded`)."""
    files = _Files(tls)
    try:  # (gRPC itself only says "Failed to bind" for a certificate it cannot use)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
    except ssl.SSLError as exc:
        raise ValueError(f"TLS files {tls.cert_file}, {tls.key_file} unusable: {exc.reason or exc}") from None
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(),
        files.fetch,  # gRPC documents a None return as "no change"
        require_client_authentication=tls.client_ca_file is not None,
    )

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
        """The files as gRPC takes them: regular files of a bounded size (`read_bounded`) whose
        certificate and key OpenSSL takes as a pair (a rotation caught half-way, new key and old
        certificate, must not reach gRPC, which would only say "Failed to bind"); else ValueError."""
        tls = self.tls
        ca = read_bounded(tls.client_ca_file, what="client CA file") if tls.client_ca_file else None
        pair = (
            read_bounded(tls.key_file, what="key file"),
            read_bounded(tls.cert_file, what="certificate file"),
        )
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.client_ca_file is not None:
                context.load_verify_locations(tls.client_ca_file)
        except ssl.SSLError as exc:
            raise ValueError(
                f"TLS files {tls.cert_file}, {tls.key_file} unusable: {exc.reason or exc}"
            ) from None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration only when the files changed."""
        try:
            stamp = self.stamp()
            if stamp == self.seen:
                return None
            config = self.configuration()
        except (OSError, ValueError) as exc:  # try again on the next handshake
            log.warning("TLS files unusable, keeping the current certificate: %s", exc)
            return None
        self.seen = stamp
        log.info("TLS certificate files changed: new handshakes use them")
        return config


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; raises OSError or ValueError when a file cannot be read at start
    (`meshgate.files.read_bounded`)."""
    files = _Files(tls)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(),
        files.fetch,  # gRPC documents a None return as "no change"
        require_client_authentication=tls.client_ca_file is not None,
    )

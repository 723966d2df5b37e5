"""One probe against small real servers on port 0: v2 REST (aiohttp), v2 gRPC (grpc.aio with Triton's
service), and HTTP GET for openai; plaintext and mTLS (client certificate required by the server)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshgate.models import ProbeTarget, probe_targets
from meshgate.models.probe import ProbeResult, probe
from meshgate.policy.model import Policy


@dataclass
class Backend:
    """What the fake inference server answers."""

    live: bool = True
    ready: bool = True
    models: set[str] = field(default_factory=lambda: {"demo"})


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key_and_cert(
    directory: Path, name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, ca: bool
) -> tuple[x509.Name, ec.EllipticCurvePrivateKey, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return subject, key, cert_path, key_path


def make_pki(directory: Path) -> Pki:
    ca_name, ca_key, ca, _ = _key_and_cert(directory, "ca", None, ca=True)
    _, _, server_cert, server_key = _key_and_cert(directory, "server", (ca_name, ca_key), ca=False)
    _, _, client_cert, client_key = _key_and_cert(directory, "client", (ca_name, ca_key), ca=False)
    _, _, other_ca, _ = _key_and_cert(directory, "other-ca", None, ca=True)
    return Pki(ca, server_cert, server_key, client_cert, client_key, other_ca)


def server_ssl(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@asynccontextmanager
async def http_backend(backend: Backend, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    def status(ok: bool) -> web.Response:
        return web.Response(status=200 if ok else 503, text="{}" if ok else '{"error": "no"}')

    def answer(ok: Callable[[web.Request], bool]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return status(ok(request))

        return handle

    app = web.Application()
    app.router.add_get("/v2/health/live", answer(lambda _: backend.live))
    app.router.add_get("/v2/health/ready", answer(lambda _: backend.ready))
    app.router.add_get("/v2/models/{name}/ready", answer(lambda r: r.match_info["name"] in backend.models))
    app.router.add_get("/v1/models", answer(lambda _: backend.ready))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


class Inference(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=self.backend.live)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.backend.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        if request.name not in self.backend.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name}")
        return service_pb2.ModelReadyResponse(ready=True)


@asynccontextmanager
async def grpc_backend(backend: Backend, pki: Pki | None = None) -> AsyncIterator[int]:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Inference(backend), server)
    if pki is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
            root_certificates=pki.ca.read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


def target(protocol: str, port: int, tls: dict[str, Any] | None = None) -> ProbeTarget:
    policy = Policy.model_validate(
        {
            "models": [
                {
                    "name": "demo",
                    "protocol": protocol,
                    "health_check": {"timeout": "5s"},
                    "upstream_tls": tls or {"mode": "none"},
                    "versions": [{"name": "v1", "weight": 100, "endpoints": [f"127.0.0.1:{port}"]}],
                }
            ]
        },
        strict=False,
    )
    (only,) = probe_targets(policy).values()
    return only


def mtls(pki: Pki, *, ca: Path | None = None, **extra: Any) -> dict[str, Any]:
    files = {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key), "ca_file": str(ca or pki.ca)}
    return {"mode": "mtls", **files, **extra}


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_rest_probe_reports_each_stage() -> None:
    async def scenario() -> None:
        backend = Backend()
        async with http_backend(backend) as port:
            assert await probe(target("v2-rest", port)) == ProbeResult(True)
            backend.models = set()
            assert (await probe(target("v2-rest", port))).reason == "model_not_ready"
            backend.ready = False
            assert (await probe(target("v2-rest", port))).reason == "not_ready"
            backend.live = False
            assert (await probe(target("v2-rest", port))).reason == "not_live"
        assert (await probe(target("v2-rest", port))).reason == "connect"

    run(scenario)


def test_grpc_probe_reports_each_stage() -> None:
    async def scenario() -> None:
        backend = Backend()
        async with grpc_backend(backend) as port:
            assert await probe(target("v2-grpc", port)) == ProbeResult(True)
            backend.models = set()
            result = await probe(target("v2-grpc", port))
            assert (result.reason, result.detail) == ("model_not_ready", "model demo not ready")
            backend.ready = False
            assert (await probe(target("v2-grpc", port))).reason == "not_ready"
        assert (await probe(target("v2-grpc", port))).reason == "connect"

    run(scenario)


def test_mtls_probes_present_the_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    async def scenario() -> None:
        backend = Backend()
        async with http_backend(backend, server_ssl(pki)) as port:
            assert await probe(target("v2-rest", port, mtls(pki))) == ProbeResult(True)
            assert (await probe(target("openai", port, mtls(pki)))).ok
            assert not (await probe(target("v2-rest", port))).ok  # plaintext to a TLS server
            assert not (await probe(target("v2-rest", port, mtls(pki, ca=pki.other_ca)))).ok
        async with grpc_backend(backend, pki) as port:
            assert await probe(target("v2-grpc", port, mtls(pki, sni="localhost"))) == ProbeResult(True)
            assert await probe(target("v2-grpc", port, mtls(pki))) == ProbeResult(True)  # SAN 127.0.0.1
            assert not (await probe(target("v2-grpc", port))).ok
            assert not (await probe(target("v2-grpc", port, mtls(pki, ca=pki.other_ca)))).ok

    run(scenario)


def test_openai_probe_gets_the_configured_path() -> None:
    async def scenario() -> None:
        backend = Backend()
        async with http_backend(backend) as port:
            assert (await probe(target("openai", port))).detail == "ready (HTTP 200)"
            backend.ready = False
            failed = await probe(target("openai", port))
            assert (failed.reason, failed.detail) == ("http_status", "GET /v1/models: HTTP 503")

    run(scenario)

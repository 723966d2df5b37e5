"""One readiness probe of one endpoint: the thin I/O side (tritonclient REST / gRPC, or HTTP GET).

- v2-rest: tritonclient.http.aio `is_server_live`, `is_server_ready`, `is_model_ready(name, version)`.
- v2-grpc: the same three calls with tritonclient.grpc.aio.
- openai: HTTP GET `health_check.path`; any 2xx is ready.

The model readiness call names the version only when the policy sets `backend_version` (Triton's numeric
versions): KServe's ModelServer answers 501 on `/v2/models/{m}/versions/{v}/ready`, so by default the
unversioned call is made. With `upstream_tls.mode: mtls` the probe presents cert_file/key_file and checks
the server's chain against ca_file (SAN matching stays Envoy's job; gRPC verifies the host name against
`sni`, else the first `subject_alt_names` entry, else the endpoint host). Mode istio probes in plaintext:
the sidecar of meshgate's pod adds the mesh mTLS.

A new client (connection) per probe: a gRPC channel that saw its server go away reconnects with backoff,
which would delay noticing that the server is back. tritonclient is imported inside the functions only.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .targets import ProbeTarget

__all__ = ["REASONS", "ProbeResult", "preload", "probe"]

REASONS = ("timeout", "connect", "not_live", "not_ready", "model_not_ready", "http_status", "error")
"""Why a probe failed: the `reason` label of meshgate_model_probe_failures_total."""


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str = "ready"
    reason: str = ""
    """One of REASONS when not ok."""

    @classmethod
    def failed(cls, reason: str, detail: str) -> ProbeResult:
        return cls(False, detail, reason)


def preload(protocols: Iterable[str] = ("v2-rest", "v2-grpc", "openai")) -> None:
    """Import the clients the protocols need, so that no probe spends its time budget importing them."""
    modules = {"v2-grpc": "tritonclient.grpc.aio", "openai": "aiohttp"}
    for protocol in set(protocols):
        importlib.import_module(modules.get(protocol, "tritonclient.http.aio"))


async def probe(target: ProbeTarget) -> ProbeResult:
    """Probe once, bounded by `target.check.timeout`. Never raises (but CancelledError)."""
    timeout = target.check.timeout
    preload((target.protocol,))
    try:
        async with asyncio.timeout(timeout):
            if target.protocol == "v2-grpc":
                return await _probe_grpc(target)
            if target.protocol == "openai":
                return await _probe_http_get(target)
            return await _probe_rest(target)
    except TimeoutError:
        return ProbeResult.failed("timeout", f"no answer in {timeout:g}s")
    except (ConnectionError, OSError) as exc:
        return ProbeResult.failed("connect", _describe(exc))
    except Exception as exc:  # a probe failure is a result: the endpoint is not ready
        return ProbeResult.failed(_classify(exc), _describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:200] if first else type(exc).__name__


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    connect = ("unavailable", "connect", "refused", "unreachable", "name resolution", "dns")
    if "deadline" in text:
        return "timeout"
    return "connect" if any(word in text for word in connect) else "error"


def _checks(live: bool, ready: bool, model_ready: bool, target: ProbeTarget) -> ProbeResult:
    if not live:
        return ProbeResult.failed("not_live", "server not live")
    if not ready:
        return ProbeResult.failed("not_ready", "server not ready")
    if not model_ready:
        version = f" version {target.backend_version}" if target.backend_version else ""
        return ProbeResult.failed("model_not_ready", f"model {target.model_name}{version} not ready")
    return ProbeResult(True)


def _ssl_context(target: ProbeTarget) -> ssl.SSLContext:
    tls = target.tls
    context = ssl.create_default_context(cafile=tls.ca_file)
    context.check_hostname = False  # chain only, like Envoy with no SAN matcher; Envoy checks SANs
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _mtls(target: ProbeTarget) -> bool:
    return target.tls.mode == "mtls"


async def _probe_rest(target: ProbeTarget) -> ProbeResult:
    from tritonclient.http import aio as httpaio

    client = httpaio.InferenceServerClient(
        url=f"{_host(target)}:{target.port}",
        conn_timeout=target.check.timeout,
        ssl=_mtls(target),
        ssl_context=_ssl_context(target) if _mtls(target) else None,
    )
    try:
        live = await client.is_server_live()
        ready = live and await client.is_server_ready()
        model_ready = ready and await client.is_model_ready(target.model_name, target.backend_version)
        return _checks(live, ready, model_ready, target)
    finally:
        await client.close()


async def _probe_grpc(target: ProbeTarget) -> ProbeResult:
    from tritonclient.grpc import aio as grpcaio

    options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    tls = target.tls
    name_override = tls.sni or (tls.subject_alt_names[0] if tls.subject_alt_names else None)
    if _mtls(target) and name_override:
        options.append(("grpc.ssl_target_name_override", name_override))
    client = grpcaio.InferenceServerClient(
        url=f"{_host(target)}:{target.port}",
        ssl=_mtls(target),
        root_certificates=tls.ca_file,
        private_key=tls.key_file,
        certificate_chain=tls.cert_file,
        channel_args=options,
    )
    timeout = target.check.timeout
    try:
        live = bool(await client.is_server_live(client_timeout=timeout))
        ready = live and bool(await client.is_server_ready(client_timeout=timeout))
        model_ready = ready and await _grpc_model_ready(client, target)
        return _checks(live, ready, model_ready, target)
    finally:
        await client.close()


async def _grpc_model_ready(client: Any, target: ProbeTarget) -> bool:
    """ModelReady; NOT_FOUND (no such model or version loaded) is "not ready", not an error."""
    from tritonclient.utils import InferenceServerException

    try:
        return bool(
            await client.is_model_ready(
                target.model_name, target.backend_version, client_timeout=target.check.timeout
            )
        )
    except InferenceServerException as exc:
        if "NOT_FOUND" in str(exc.status()):
            return False
        raise


async def _probe_http_get(target: ProbeTarget) -> ProbeResult:
    import aiohttp

    scheme = "https" if _mtls(target) else "http"
    url = f"{scheme}://{_host(target)}:{target.port}{target.check.path}"
    connector = aiohttp.TCPConnector(ssl=_ssl_context(target) if _mtls(target) else False)
    async with (
        aiohttp.ClientSession(connector=connector, trust_env=False) as session,
        session.get(url, allow_redirects=False) as response,
    ):
        if 200 <= response.status < 300:
            return ProbeResult(True, f"ready (HTTP {response.status})")
        return ProbeResult.failed("http_status", f"GET {target.check.path}: HTTP {response.status}")


def _host(target: ProbeTarget) -> str:
    return f"[{target.host}]" if ":" in target.host else target.host

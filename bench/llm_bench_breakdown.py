"""Where the gateway's first-token time goes, for bench/llm_stream_bench.py `--breakdown` (not a test).

The gateway Envoy's own config (its admin `/config_dump?include_eds`, what `meshgate serve` sent over
ADS) is made static (bench/native_ablation.py's `static_config`) and served by one more Envoy, once per
variant below, each a listener with a subset of the gateway's HTTP filters and an access log of Envoy's
own time points (`%COMMON_DURATION(A:B:us)%`, Envoy 1.31+). The variants talk to the same meshgate and the
same backend as the gateway, so the bench interleaves them with its direct and gateway requests.

A variant without ext_authz gets from the client the two headers ext_authz would set (the model routes
match `x-meshgate-model`; the rate limit descriptors read `x-meshgate-tenant`), and its listener keeps
them (no early header mutation removing `x-meshgate-*`): the same route is taken.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

from native_ablation import static_config

from meshgate.contract import MODEL_HEADER, TENANT_HEADER
from tests.harness.envoy import Envoy

EXTAUTHZ = "envoy.filters.http.ext_authz"
RATELIMIT = "envoy.filters.http.ratelimit"
LLM = "meshgate.llm."
ROUTER = "envoy.filters.http.router"

# Envoy's time points, in the order a request meets them: the access log prints each gap in µs
POINTS = ("DS_RX_BEG", "DS_RX_END", "US_TX_BEG", "US_RX_BEG", "DS_TX_BEG", "DS_TX_END")
GAPS = {
    "rx": ("DS_RX_BEG", "DS_RX_END"),  # the request read (headers and body)
    "filters": ("DS_RX_END", "US_TX_BEG"),  # the decode filters: ext_authz, ratelimit, LLM transforms
    "backend": ("US_TX_BEG", "US_RX_BEG"),  # the backend's answer headers
    "encode": ("US_RX_BEG", "DS_TX_BEG"),  # the answer headers through the encode filters
    "to_first": ("DS_RX_BEG", "DS_TX_BEG"),  # Envoy's whole time to the answer's first byte
}


def variants(filters: list[str], *, each: bool = False) -> dict[str, list[str]]:
    """Row name -> the HTTP filters that listener keeps (with `each`, also each LLM filter left out)."""
    llm = [f for f in filters if f.startswith(LLM)]
    return {
        "static all": list(filters),
        "-ratelimit": [f for f in filters if f != RATELIMIT],
        "-LLM filters": [f for f in filters if f not in llm],
        "-ext_authz": [f for f in filters if f != EXTAUTHZ],
        "router only": [f for f in filters if f == ROUTER],
        **({f"-{f[len(LLM) :]}": [g for g in filters if g != f] for f in llm} if each else {}),
    }


def identity_headers(kept: list[str], tenant: str, model: str) -> dict[str, str]:
    """What the client sends to a variant: the headers ext_authz would have set, when it is left out."""
    return {} if EXTAUTHZ in kept else {TENANT_HEADER: tenant, MODEL_HEADER: model}


def _access_log(path: Path, name: str) -> list[dict[str, Any]]:
    fields: dict[str, Any] = {"row": name}
    fields.update({gap: f"%COMMON_DURATION({a}:{b}:us)%" for gap, (a, b) in GAPS.items()})
    fields["status"] = "%RESPONSE_CODE%"
    return [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path), "log_format": {"json_format": fields},
        },
    }]  # fmt: skip


def start_static(
    gateway: Envoy, workdir: Path, log: Path, *, each: bool = False
) -> tuple[Envoy, dict[str, list[str]]]:
    """One Envoy (not started) serving every variant of the gateway's config (listener name = row name)."""
    boot, filters = static_config(json.loads(gateway.admin_get("/config_dump?include_eds")))
    kept = variants(filters, each=each)
    template = boot["static_resources"].pop("_listener")
    for i, (name, names) in enumerate(kept.items()):
        listener = copy.deepcopy(template)
        listener["name"] = name
        listener["address"]["socket_address"]["port_value"] = 0
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = f"variant{i}"
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] in names]
        hcm["access_log"] = _access_log(log, name)
        if EXTAUTHZ not in names:  # the client's x-meshgate-* headers must reach the route
            hcm.pop("early_header_mutation_extensions", None)
        boot["static_resources"]["listeners"].append(listener)
    envoy = Envoy(boot, workdir=workdir, log_level="warning", name="variants")
    return envoy, kept


def gaps(log: Path) -> dict[str, dict[str, float]]:
    """Row -> gap -> median µs, from the access log (entries of 200 answers only)."""
    rows: dict[str, dict[str, list[float]]] = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if str(entry.get("status")) != "200":
            continue
        row = rows.setdefault(entry["row"], {gap: [] for gap in GAPS})
        for gap in GAPS:
            value = entry.get(gap)
            if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
                row[gap].append(float(value))
    return {
        name: {gap: statistics.median(v) if v else float("nan") for gap, v in row.items()}
        for name, row in rows.items()
    }


def cpu_ns(pid: int) -> int:
    """The CPU time of every thread of `pid` so far, in ns (schedstat: ns, not clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total

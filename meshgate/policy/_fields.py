"""The policy model's building blocks: durations, names, patterns and the strict base every model
shares (meshgate/policy/model.py, serving.py, gateway.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "GLOB_PATTERN",
    "HEADER_PATTERN",
    "INT32_MAX",
    "ISVC_NAME_MAX",
    "ISVC_NAME_PATTERN",
    "K8S_NAME_PATTERN",
    "MAX_DURATION",
    "MODEL_NAME_PATTERN",
    "NAME_PATTERN",
    "UINT32_MAX",
    "Count",
    "Duration",
    "Glob",
    "HeaderName",
    "HostPort",
    "IsvcName",
    "JwtAlgorithm",
    "K8sName",
    "ModelName",
    "Name",
    "Origin",
    "Percent",
    "QuotaKey",
    "Strict",
    "Timeout",
    "Url",
    "Window",
    "as_tuple",
    "check_pipeline_window",
    "parse_duration",
]

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = 365 * 86400.0
"""The longest duration a field takes (365d): Envoy's and Kubernetes' durations hold it, and no
timeout, interval, TTL or leeway means more."""
UINT32_MAX = (1 << 32) - 1
INT32_MAX = (1 << 31) - 1
"""The largest count Envoy's config takes (a uint32: buffer sizes, circuit breakers, rate limits)."""


def parse_duration(value: Any) -> Any:
    """'250ms', '30s', '5m', '1h', '1d' -> seconds (float), at most MAX_DURATION. Bare numbers are
    refused: units are explicit."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            if seconds > MAX_DURATION:
                raise ValueError(f"duration {value!r} is longer than 365d")
            return seconds
    raise ValueError(
        f"invalid duration {value!r}: use a number and a unit (ms, s, m, h, d), e.g. 250ms or 30s"
    )


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)$")
"""A DNS name or IPv4 address (letters, digits, '-', '_', '.'), or an IPv6 address in brackets."""


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not _HOST.match(host)
        or not port.isascii()
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise ValueError(
            f"invalid endpoint {value!r}: expected host:port (a DNS name, an IPv4 address or [an IPv6 "
            "address], no scheme or path) with a port from 1 to 65535"
        )
    return value


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"invalid URL {value!r}: expected http:// or https://, a host, and no white space")
    return value


def check_pipeline_window(value: float) -> float:
    milliseconds = round(value * 1000, 6)
    if value and not (milliseconds.is_integer() and 1 <= milliseconds <= 10):
        raise ValueError(
            f"invalid pipeline window {value * 1000:g}ms: 0, or whole milliseconds from 1ms to 10ms "
            "(the event loop's timers count milliseconds)"
        )
    return value


def as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _check_origin(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+$", value):
        raise ValueError(f"invalid origin {value!r}: expected scheme://host[:port] with no path")
    return value


NAME_PATTERN = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?$"
GLOB_PATTERN = r"^[A-Za-z0-9_.*?\[\]-]+$"
HEADER_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
ISVC_NAME_MAX = 45
"""The longest InferenceService name: the Services KServe and Knative make of it (`<name>-predictor`,
`<name>-predictor-00001`) must fit a 63-character name."""
ISVC_NAME_PATTERN = rf"^[a-z]([-a-z0-9]{{0,{ISVC_NAME_MAX - 2}}}[a-z0-9])?$"
"""An InferenceService name: KServe's own pattern (a letter first), at most ISVC_NAME_MAX characters."""

Duration = Annotated[float, BeforeValidator(parse_duration)]
Timeout = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""A duration that must pass: 0 would mean no timeout to Envoy, or a busy loop to a refresher."""
Url = Annotated[str, AfterValidator(_check_url)]
Count = Annotated[int, Field(gt=0, le=UINT32_MAX)]
"""A positive count Envoy holds in a uint32."""
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
Glob = Annotated[str, Field(pattern=GLOB_PATTERN)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
Origin = Annotated[str, AfterValidator(_check_origin)]
HeaderName = Annotated[str, Field(pattern=HEADER_PATTERN)]
K8sName = Annotated[str, Field(pattern=K8S_NAME_PATTERN)]
IsvcName = Annotated[str, Field(pattern=ISVC_NAME_PATTERN)]
Percent = Annotated[float, Field(gt=0, le=100)]
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"
]
Window = Literal["second", "minute", "hour", "day"]
QuotaKey = Literal["tenant", "user", "model"]


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True, allow_inf_nan=False
    )

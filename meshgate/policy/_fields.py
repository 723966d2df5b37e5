"""The policy model's building blocks: durations, names, patterns and the strict base every model
shares (meshgate/policy/model.py, serving.py, gateway.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "GLOB_PATTERN",
    "HEADER_PATTERN",
    "K8S_NAME_PATTERN",
    "MODEL_NAME_PATTERN",
    "NAME_PATTERN",
    "Duration",
    "Glob",
    "HeaderName",
    "HostPort",
    "JwtAlgorithm",
    "K8sName",
    "ModelName",
    "Name",
    "Origin",
    "Percent",
    "QuotaKey",
    "Strict",
    "Window",
    "as_tuple",
    "check_pipeline_window",
    "parse_duration",
]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """'250ms', '30s', '5m', '1h', '1d' -> seconds (float). Bare numbers are refused: units are explicit."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(
        f"invalid duration {value!r}: use a number and a unit (ms, s, m, h, d), e.g. 250ms or 30s"
    )


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid endpoint {value!r}: expected host:port with a port from 1 to 65535")
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

Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
Glob = Annotated[str, Field(pattern=GLOB_PATTERN)]
HostPort = Annotated[str, AfterValidator(_check_host_port)]
Origin = Annotated[str, AfterValidator(_check_origin)]
HeaderName = Annotated[str, Field(pattern=HEADER_PATTERN)]
K8sName = Annotated[str, Field(pattern=K8S_NAME_PATTERN)]
Percent = Annotated[float, Field(gt=0, le=100)]
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"
]
Window = Literal["second", "minute", "hour", "day"]
QuotaKey = Literal["tenant", "user", "model"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)

"""meshgate.meshconfig: the policy rendered as Istio, Envoy Gateway / Envoy AI Gateway and KServe
manifests, checked in strict mode against the real CRD schemas. See docs/meshconfig.md."""

from .gaps import Gap, gaps
from .render import (
    SINGLE_TARGETS,
    TARGETS,
    Target,
    dump_yaml,
    render,
    render_all,
    render_files,
    validate_objects,
)
from .validate import Problem, SchemaSet

__all__ = [
    "SINGLE_TARGETS",
    "TARGETS",
    "Gap",
    "Problem",
    "SchemaSet",
    "Target",
    "dump_yaml",
    "gaps",
    "render",
    "render_all",
    "render_files",
    "validate_objects",
]

"""meshgate.meshconfig: the policy rendered as Istio, Envoy Gateway / Envoy AI Gateway and KServe
manifests, checked in strict mode against the real CRD schemas. See docs/meshconfig.md."""

from .render import TARGETS, Target, dump_yaml, render, render_files, validate_objects
from .validate import Problem, SchemaSet

__all__ = [
    "TARGETS",
    "Problem",
    "SchemaSet",
    "Target",
    "dump_yaml",
    "render",
    "render_files",
    "validate_objects",
]

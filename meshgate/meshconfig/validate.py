"""Strict offline validation of rendered objects against real CRD schemas and Kubernetes' own types.

The recipe (shared/schemas/README.md): find the CRD version for the object's apiVersion and kind, take its
openAPIV3Schema, turn `nullable: true` into an added "null" type, and close every structural object
(`additionalProperties: false`) unless it preserves unknown fields or sits inside allOf/anyOf/oneOf/not.
The root keeps apiVersion, kind and metadata; metadata is checked against Kubernetes' ObjectMeta.
Core objects (apiVersion v1, e.g. Service) are checked against the `kubernetes` client's models:
every key must be a known field of its type, recursively. Not covered: CEL rules, formats, defaults,
admission webhooks, required fields of core objects.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError

__all__ = ["PACKAGED_SCHEMAS", "Problem", "SchemaSet", "strict_schema"]

PACKAGED_SCHEMAS = Path(__file__).resolve().parent / "schemas"
_COMBINATORS = ("allOf", "anyOf", "oneOf", "not")
_ROOT_FIELDS = ("apiVersion", "kind", "metadata")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Key = tuple[str, str, str]  # (group, version, kind)
# built-in API groups checked, like the core group, against the kubernetes client's models
_BUILTIN_GROUPS = frozenset({"networking.k8s.io"})


@dataclass(frozen=True)
class Problem:
    """One reason an object is refused: which object, which field, what is wrong."""

    object: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.field}: {self.message}"


def strict_schema(schema: Mapping[str, Any], *, root: bool = True, open_: bool = False) -> dict[str, Any]:
    """Convert one openAPIV3Schema to a strict draft-4 schema (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: strict_schema(v, root=False, open_=open_) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = strict_schema(value, root=False, open_=open_)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict_schema(v, root=False, open_=True) for v in value]
        elif key == "not":
            out[key] = strict_schema(value, root=False, open_=True)
        elif key == "nullable":
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    if root:
        props = out.setdefault("properties", {})
        for name in _ROOT_FIELDS:
            props.setdefault(name, {})
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not preserve and not open_:
        out["additionalProperties"] = False
    return out


def _label(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')} {ns}{meta.get('name', '?')}"


def _field_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


class SchemaSet:
    """CRD schemas indexed by (group, version, kind); validators built on first use."""

    def __init__(self, schemas: Mapping[Key, Mapping[str, Any]]) -> None:
        self._schemas = dict(schemas)
        self._validators: dict[Key, Draft4Validator] = {}

    def __len__(self) -> int:
        """How many CRD versions it holds."""
        return len(self._schemas)

    @classmethod
    def from_dir(cls, directory: str | Path) -> SchemaSet:
        """Read every CRD in *.yaml / *.yml (multi-document) and *.json (one CRD or a list) under it."""
        schemas: dict[Key, Mapping[str, Any]] = {}
        for path in sorted(Path(directory).rglob("*")):
            for crd in _read_crds(path):
                spec = crd["spec"]
                for version in spec["versions"]:
                    if version.get("served"):
                        key = (spec["group"], version["name"], spec["names"]["kind"])
                        schemas[key] = version["schema"]["openAPIV3Schema"]
        return cls(schemas)

    @classmethod
    def packaged(cls) -> SchemaSet:
        return _packaged()

    def kinds(self) -> list[Key]:
        return sorted(self._schemas)

    def validate(self, obj: Mapping[str, Any]) -> list[Problem]:
        label = _label(obj)
        api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
        group, _, version = api_version.rpartition("/")
        problems = list(_check_metadata(label, obj.get("metadata")))
        if not group or group in _BUILTIN_GROUPS:
            return problems + [Problem(label, f, m) for f, m in _check_core(version, kind, obj)]
        key = (group, version, kind)
        if key not in self._schemas:
            return [*problems, Problem(label, "apiVersion", f"no schema for {kind} in {api_version}")]
        validator = self._validators.get(key)
        if validator is None:
            validator = Draft4Validator(strict_schema(self._schemas[key]))
            self._validators[key] = validator
        errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
        for error in errors:
            problems.extend(_describe(label, error))
        return problems


def _describe(label: str, error: ValidationError) -> Iterator[Problem]:
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = set(schema.get("properties", {}))
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        for key in sorted(error.instance):
            if key not in known and not any(p.search(key) for p in patterns):
                yield Problem(label, _field_path([*path, key]), "unknown field")
        return
    yield Problem(label, _field_path(path), error.message)


def _read_crds(path: Path) -> Iterator[Mapping[str, Any]]:
    if path.suffix in (".yaml", ".yml"):
        with path.open("rb") as f:
            docs: Iterable[Any] = list(yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    elif path.name.endswith((".json", ".json.gz")):
        raw = path.read_bytes()
        loaded = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
        docs = loaded if isinstance(loaded, list) else [loaded]
    else:
        return
    for doc in docs:
        if isinstance(doc, Mapping) and doc.get("kind") == "CustomResourceDefinition":
            yield doc


@cache
def _packaged() -> SchemaSet:
    return SchemaSet.from_dir(PACKAGED_SCHEMAS)


# --- metadata and core objects (kubernetes client models) ---------------------------------------


def _check_metadata(label: str, meta: Any) -> Iterator[Problem]:
    if not isinstance(meta, Mapping):
        yield Problem(label, "metadata", "missing")
        return
    for field, message in _check_model("metadata", meta, "V1ObjectMeta"):
        yield Problem(label, field, message)
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        yield Problem(label, "metadata.name", f"invalid name {name!r}")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            yield Problem(label, f"metadata.labels.{key}", f"invalid label value {value!r}")


def _check_core(version: str, kind: str, obj: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    type_name = f"{version.capitalize()}{kind}"
    if _model_class(type_name) is None:
        yield "apiVersion", f"no Kubernetes type for {kind} in {version}"
        return
    yield from _check_model("", {k: v for k, v in obj.items() if k != "metadata"}, type_name)


def _model_class(name: str) -> Any:
    from kubernetes import client  # imported on use: the client package is large

    return getattr(client, name, None)


# the client spells containers List[X] / Dict[str, X] (older releases: list[X] / dict(str, X))
_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
_DICT = re.compile(r"^[Dd]ict[\[(]str, (.+)[\])]$")
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "bytes": (str,),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),
}


def _check_value(path: str, value: Any, type_name: str) -> Iterator[tuple[str, str]]:
    if (m := _LIST.match(type_name)) is not None:
        if not isinstance(value, list):
            yield path, f"expected a list, got {type(value).__name__}"
            return
        for i, item in enumerate(value):
            yield from _check_value(f"{path}[{i}]", item, m.group(1))
    elif (m := _DICT.match(type_name)) is not None:
        if not isinstance(value, Mapping):
            yield path, f"expected a mapping, got {type(value).__name__}"
            return
        for key, item in value.items():
            yield from _check_value(f"{path}.{key}", item, m.group(1))
    elif type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name])
        if not ok or (type_name == "int" and isinstance(value, bool)):
            yield path, f"expected {type_name}, got {type(value).__name__}"
    else:
        yield from _check_model(path, value, type_name)


def _check_model(path: str, value: Any, type_name: str) -> Iterator[tuple[str, str]]:
    model = _model_class(type_name)
    if model is None:
        return
    if not isinstance(value, Mapping):
        yield path or "<root>", f"expected a mapping ({type_name}), got {type(value).__name__}"
        return
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key in sorted(value):
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            yield sub, "unknown field"
        else:
            yield from _check_value(sub, value[key], model.openapi_types[fields[key]])

"""Parse a policy document once into a frozen Policy, or fail with every problem at once."""

from __future__ import annotations

import difflib
import sys
import typing
from pathlib import Path as FsPath
from typing import Any, TextIO

from pydantic import BaseModel, ValidationError

from . import _fields
from ._checks import cross_check, warnings_of
from ._yaml import LineMap, load_yaml
from .errors import Issue, Path, PolicyError, describe_value, format_path
from .model import Policy

__all__ = [
    "EMPTY_POLICY",
    "load_or_report",
    "load_policy",
    "load_policy_and_warnings",
    "parse_policy",
    "parse_policy_bytes",
    "policy_warnings",
]

MAX_POLICY_BYTES = 8 << 20
EMPTY_POLICY = (
    "the policy is empty (no document: a 0-byte, blank or comment-only file, or one read while it was "
    "being written); refused"
)

_PATTERN_HELP = {
    _fields.NAME_PATTERN: (
        "lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit, at most 63"
    ),
    _fields.MODEL_NAME_PATTERN: (
        "letters, digits, '-', '_' or '.', starting and ending with a letter or digit, at most 128"
    ),
    _fields.GLOB_PATTERN: "letters, digits, '-', '_', '.' and the globs * ? [ ]",
    _fields.HEADER_PATTERN: "a lowercase HTTP header name",
    _fields.K8S_NAME_PATTERN: "a Kubernetes name: lowercase letters, digits and '-', at most 63",
    _fields.ISVC_NAME_PATTERN: (
        "an InferenceService name: lowercase letters, digits and '-', starting with a letter, at most 45 "
        "(KServe's <name>-predictor-00001 must fit 63)"
    ),
    "^[0-9a-f]{64}$": "64 lowercase hex digits (the SHA-256 of the key)",
}

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "tuple_type": "a list",
    "model_type": "a mapping",
    "mapping_type": "a mapping",
    "dict_type": "a mapping",
}


MAX_ISSUES = 100
"""Problems listed for one document; past them, one line says how many more there are."""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in typing.get_args(annotation) if (m := _model_in(arg)) is not None), None)


def _fields_at(path: Path) -> list[str]:
    """The field names of the model at `path` (list indexes skipped), or [] where no model is."""
    model: type[BaseModel] | None = Policy
    for part in path:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part) if model is not None else None
        model = _model_in(info.annotation) if info is not None else None
    return list(model.model_fields) if model is not None else []


def _message(err: Any) -> str:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        path = _loc_path(err["loc"])
        key = path[-1]
        close = difflib.get_close_matches(str(key), _fields_at(path[:-1]), n=1)
        return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return "required field is missing"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {describe_value(value)}"
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        return f"invalid value {value!r}: expected {_PATTERN_HELP.get(pattern, 'a match for ' + pattern)}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {bound}, got {value!r}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {describe_value(value)}"


def _loc_path(loc: tuple[Any, ...]) -> Path:
    # pydantic inserts validator tags (e.g. 'function-after[...]') into locations: they are not fields
    return tuple(p for p in loc if isinstance(p, int) or "[" not in p)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate one policy document. Raises PolicyError listing every problem."""
    return _parse(text, source)[0]


def _parse(text: str, source: str) -> tuple[Policy, LineMap]:
    """`parse_policy`, and the line of each field of the document (for its warnings)."""
    data, lines = load_yaml(text, source)
    if not lines.has_document:
        raise PolicyError([Issue(source, 1, "<document>", EMPTY_POLICY)])
    if not isinstance(data, dict):
        raise PolicyError([Issue(source, 1, "<document>", "a policy must be a mapping at the top level")])
    policy, errors = _validate(data)
    if policy is None:
        raise PolicyError(_issues(errors, lines, source))
    problems = cross_check(policy)
    if problems:
        raise PolicyError(Issue(source, lines.line(path), format_path(path), msg) for path, msg in problems)
    return policy, lines


def _sections() -> dict[str, type[BaseModel]]:
    """Policy's list sections (`models: tuple[Model, ...]`, ...) and the model of their items."""
    out: dict[str, type[BaseModel]] = {}
    for name, info in Policy.model_fields.items():
        args = typing.get_args(info.annotation)
        homogeneous = typing.get_origin(info.annotation) is tuple and len(args) == 2 and args[1] is Ellipsis
        if homogeneous and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            out[name] = args[0]
    return out


_SECTIONS = _sections()


def _validate(data: dict[str, Any]) -> tuple[Policy | None, list[Any]]:
    """`Policy.model_validate(data)`, the items of each list section one at a time: the same policy
    and the same errors, but no single call into pydantic-core (which holds the GIL) lasts as long as a
    large policy takes (~30 ms for 1000 models: the reload pipeline's worker thread shares the
    interpreter with the event loop that serves calls)."""
    errors: list[Any] = []
    data = dict(data)
    for name, item_model in _SECTIONS.items():
        items = data.get(name)
        if not isinstance(items, tuple):
            continue  # not a list: the whole validation below says so
        validated = []
        for i, item in enumerate(items):
            try:
                validated.append(item_model.model_validate(item))
            except ValidationError as exc:
                errors.extend({**err, "loc": (name, i, *err["loc"])} for err in exc.errors())
        data[name] = tuple(validated)
    try:
        policy = Policy.model_validate(data)  # the items are instances now: not validated again
    except ValidationError as exc:
        errors.extend(exc.errors())
        return None, errors
    return (None, errors) if errors else (policy, [])


def _issues(validation_errors: list[Any], lines: LineMap, source: str) -> list[Issue]:
    errors = [(_loc_path(err["loc"]), err) for err in validation_errors]
    failed = {p[:n] for p, _ in errors for n in range(len(p))}  # (every proper prefix of a path)
    out: list[Issue] = []
    for path, err in errors:
        # a list whose items failed is also reported "too short": the item errors say it better
        if err["type"] == "too_short" and path in failed:
            continue
        if len(out) == MAX_ISSUES:
            more = len(errors) - MAX_ISSUES
            out.append(Issue(source, lines.line(path), "<document>", f"and at most {more} more problems"))
            break
        out.append(Issue(source, lines.line(path), format_path(path), _message(err)))
    return out


def load_policy(path: str | FsPath) -> Policy:
    """Read and parse a policy file. A file that cannot be read is a PolicyError too."""
    return parse_policy_bytes(_read(path), str(path))


def _read(path: str | FsPath) -> bytes:
    try:
        return FsPath(path).read_bytes()
    except OSError as exc:
        raise PolicyError([Issue(str(path), 0, "<file>", f"cannot read: {exc.strerror}")]) from None


def parse_policy_bytes(raw: bytes, source: str) -> Policy:
    """Parse the bytes of a policy file (what `load_policy` read, or a watcher's settled copy)."""
    return _parse_bytes(raw, source)[0]


def _parse_bytes(raw: bytes, source: str) -> tuple[Policy, LineMap]:
    """`parse_policy_bytes`, and the line of each field of the document."""
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError([Issue(source, 0, "<file>", f"larger than {MAX_POLICY_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        problem = f"not UTF-8: byte {exc.start} ({exc.object[exc.start]:#04x}): {exc.reason}"
        raise PolicyError([Issue(source, line, "<document>", problem)]) from None
    return _parse(text, source)


def load_or_report(path: str | FsPath, *, stream: TextIO | None = None) -> Policy | None:
    """For commands: the policy, or None after printing every issue to `stream` (stderr)."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=stream or sys.stderr)
        return None


def policy_warnings(path: str | FsPath) -> list[Issue]:
    """What a valid policy file holds that is probably not meant (`meshgate validate` prints them), in
    line order. Raises PolicyError as `load_policy` does when the file is not a valid policy."""
    return load_policy_and_warnings(path)[1]


def load_policy_and_warnings(path: str | FsPath) -> tuple[Policy, list[Issue]]:
    """`load_policy` and `policy_warnings` from one read and one parse of the file."""
    source = str(path)
    policy, lines = _parse_bytes(_read(path), source)
    warnings = sorted(Issue(source, lines.line(p), format_path(p), msg) for p, msg in warnings_of(policy))
    return policy, warnings

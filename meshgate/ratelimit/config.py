"""envoyproxy/ratelimit YAML, accepted unchanged, parsed strictly into the compiled model.

One file holds one domain:

    domain: mongo_cps
    descriptors:
      - key: database
        value: users
        rate_limit: {unit: second, requests_per_unit: 500, name: users, replaces: [{name: x}]}
        shadow_mode: false
        detailed_metric: false
        descriptors: [...]

meshgate adds one optional key, `rate_limit.algorithm` (fixed_window | sliding_window). Unknown keys,
wrong types and every error of envoyproxy/ratelimit are refused; each error names the file, the line
and the field path, e.g. `limits/db.yaml:7: descriptors[0].rate_limit.unit: invalid rate limit unit 'parsec'`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path as FsPath
from typing import Any

from ..policy._yaml import LineMap, load_yaml
from ..policy.errors import Issue, PolicyError, describe_value, format_path
from .model import UNIT_SECONDS, Node, RateLimitConfig, Rule

__all__ = ["ConfigError", "load_config_dir", "merge_domains", "parse_config"]

MAX_FILE_BYTES = 4 << 20
SUFFIXES = (".yaml", ".yml")

_ROOT_KEYS = ("domain", "descriptors")
_DESCRIPTOR_KEYS = ("key", "value", "rate_limit", "descriptors", "shadow_mode", "detailed_metric")
_RATE_LIMIT_KEYS = ("unit", "requests_per_unit", "unlimited", "name", "replaces", "algorithm")
_ALL_KEYS = {*_ROOT_KEYS, *_DESCRIPTOR_KEYS, *_RATE_LIMIT_KEYS}
_ALGORITHMS = ("fixed_window", "sliding_window")
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", tuple: "a list", dict: "a mapping"}

FieldPath = tuple[str | int, ...]


class ConfigError(ValueError):
    """Rate limit configuration that cannot be used; `issues` lists every problem, in order."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues: tuple[Issue, ...] = tuple(sorted(set(issues)))
        super().__init__("\n".join(str(i) for i in self.issues))


class _File:
    """Collects the issues of one file, each with its line."""

    def __init__(self, source: str, lines: LineMap) -> None:
        self.source = source
        self.lines = lines
        self.issues: list[Issue] = []

    def error(self, path: FieldPath, message: str) -> None:
        self.issues.append(Issue(self.source, self.lines.line(path), format_path(path), message))


def _check_keys(f: _File, path: FieldPath, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(_ALL_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            f.error((*path, key), f"unknown key {key!r}{hint}")


def _get(f: _File, path: FieldPath, data: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        f.error((*path, key), f"expected {_TYPE_NAMES[kind]}, got {describe_value(value)}")
        return default
    return value


def _mapping(f: _File, path: FieldPath, value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    f.error(path, f"expected a mapping, got {describe_value(value)}")
    return None


def parse_config(text: str, source: str) -> tuple[str, Node]:
    """One envoyproxy/ratelimit YAML document -> (domain, tree). Raises ConfigError."""
    try:
        data, lines = load_yaml(text, source)
    except PolicyError as exc:
        raise ConfigError(exc.issues) from None
    f = _File(source, lines)
    root = _mapping(f, (), data)
    if root is None:
        raise ConfigError(f.issues)
    _check_keys(f, (), root, _ROOT_KEYS)
    domain = _get(f, (), root, "domain", str, "")
    if not domain and not f.issues:
        f.error(("domain",), "config file cannot have empty domain")
    descriptors = _get(f, (), root, "descriptors", tuple, ())
    tree = _level(f, ("descriptors",), descriptors, domain)
    if f.issues:
        raise ConfigError(f.issues)
    return domain, tree


def _level(f: _File, path: FieldPath, items: tuple[Any, ...], parent_key: str) -> Node:
    children: dict[tuple[str, str | None], Node] = {}
    wildcards: dict[str, list[tuple[str, Node]]] = {}
    for i, item in enumerate(items):
        at = (*path, i)
        d = _mapping(f, at, item)
        if d is None:
            continue
        _check_keys(f, at, d, _DESCRIPTOR_KEYS)
        key = _get(f, at, d, "key", str, "")
        value = _get(f, at, d, "value", str, "")
        if not key:
            f.error((*at, "key"), "descriptor has empty key")
            continue
        composite = f"{parent_key}.{key}" + (f"_{value}" if value else "")
        slot: tuple[str, str | None] = (key, value or None)
        if slot in children:
            f.error(at, f"duplicate descriptor composite key '{composite}'")
            continue
        rule = _rule(f, at, d, composite)
        sub = _get(f, at, d, "descriptors", tuple, ())
        below = _level(f, (*at, "descriptors"), sub, composite)
        node = Node(children=below.children, wildcards=below.wildcards, rule=rule)
        children[slot] = node
        if value.endswith("*"):
            wildcards.setdefault(key, []).append((value[:-1], node))
    return Node(children=children, wildcards={k: tuple(v) for k, v in wildcards.items()})


def _rule(f: _File, at: FieldPath, d: Mapping[str, Any], composite: str) -> Rule | None:
    shadow = _get(f, at, d, "shadow_mode", bool, False)
    detailed = _get(f, at, d, "detailed_metric", bool, False)
    if d.get("rate_limit") is None:
        return None
    path = (*at, "rate_limit")
    rl = _mapping(f, path, d["rate_limit"])
    if rl is None:
        return None
    _check_keys(f, path, rl, _RATE_LIMIT_KEYS)
    unlimited = _get(f, path, rl, "unlimited", bool, False)
    unit = _get(f, path, rl, "unit", str, "")
    rpu = _get(f, path, rl, "requests_per_unit", int, 0)
    name = _get(f, path, rl, "name", str, "")
    algorithm = _get(f, path, rl, "algorithm", str, "fixed_window")
    valid_unit = unit.lower() in UNIT_SECONDS
    if unlimited and valid_unit:
        f.error(path, "should not specify rate limit unit when unlimited")
    elif not unlimited and not valid_unit:
        f.error((*path, "unit"), f"invalid rate limit unit '{unit}'")
    if rpu < 0 or rpu > 0xFFFFFFFF:
        f.error((*path, "requests_per_unit"), f"must be from 0 to 4294967295, got {rpu}")
    if algorithm not in _ALGORITHMS:
        f.error((*path, "algorithm"), f"{algorithm!r} is not one of 'fixed_window' or 'sliding_window'")
    replaces = _replaces(f, path, rl, name)
    return Rule(
        full_key=composite,
        requests_per_unit=rpu,
        unit=unit.lower() if valid_unit else "second",
        unlimited=unlimited,
        shadow_mode=shadow,
        name=name,
        replaces=replaces,
        detailed_metric=detailed,
        algorithm=algorithm if algorithm in _ALGORITHMS else "fixed_window",
    )


def _replaces(f: _File, path: FieldPath, rl: Mapping[str, Any], name: str) -> tuple[str, ...]:
    out = []
    for j, item in enumerate(_get(f, path, rl, "replaces", tuple, ())):
        at = (*path, "replaces", j)
        r = _mapping(f, at, item)
        if r is None:
            continue
        _check_keys(f, at, r, ("name",))
        target = _get(f, at, r, "name", str, "")
        if not target:
            f.error((*at, "name"), "should not have an empty replaces entry")
        elif target == name:
            f.error((*at, "name"), "replaces should not contain name of same descriptor")
        else:
            out.append(target)
    return tuple(out)


def load_config_dir(directory: str | FsPath) -> dict[str, tuple[str, Node]]:
    """Every *.yaml / *.yml file of `directory` (hidden names skipped) -> {domain: (file, tree)}.

    Raises ConfigError listing every problem in every file, and duplicate domains across files.
    """
    root = FsPath(directory)
    try:
        names = sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))
    except OSError as exc:
        raise ConfigError([Issue(str(root), 0, "<directory>", f"cannot read: {exc.strerror}")]) from None
    issues: list[Issue] = []
    domains: dict[str, tuple[str, Node]] = {}
    for path in names:
        try:
            raw = path.read_bytes()
            if len(raw) > MAX_FILE_BYTES:
                raise ConfigError([Issue(str(path), 0, "<file>", f"larger than {MAX_FILE_BYTES} bytes")])
            domain, tree = parse_config(raw.decode("utf-8"), str(path))
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(Issue(str(path), 0, "<file>", f"cannot read: {exc}"))
            continue
        if domain in domains:
            issues.append(Issue(str(path), 1, "domain", f"duplicate domain '{domain}' in config file "
                                f"(first in {domains[domain][0]})"))
            continue
        domains[domain] = (str(path), tree)
    if issues:
        raise ConfigError(issues)
    return domains


def merge_domains(*sources: Mapping[str, tuple[str, Node]]) -> RateLimitConfig:
    """Join domain sets into one config; a domain defined twice is an error naming both sources."""
    domains: dict[str, Node] = {}
    origin: dict[str, str] = {}
    issues = []
    for source in sources:
        for domain, (where, tree) in source.items():
            if domain in domains:
                message = f"duplicate domain '{domain}' (also in {origin[domain]})"
                issues.append(Issue(where, 1, "domain", message))
                continue
            domains[domain] = tree
            origin[domain] = where
    if issues:
        raise ConfigError(issues)
    return RateLimitConfig(domains=domains, sources=tuple(sorted(set(origin.values()))))

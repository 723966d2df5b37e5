"""YAML to plain data, remembering the line of every node so errors can name it.

Mappings become dicts, sequences become tuples (the policy model is frozen), scalars keep
PyYAML's safe types. Duplicate keys are an error here: PyYAML would silently keep the last.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import Issue, Path, PolicyError, format_path

__all__ = ["LineMap", "load_yaml"]

# the C loader is much faster; both compose the same nodes
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineMap:
    """Field path -> 1-based line. A missing path falls back to its nearest ancestor."""

    def __init__(self) -> None:
        self._lines: dict[Path, int] = {}

    def set(self, path: Path, line: int) -> None:
        self._lines.setdefault(path, line)

    @property
    def has_document(self) -> bool:
        """False for a stream with no document at all (empty, blank or only comments)."""
        return bool(self._lines)

    def line(self, path: Path) -> int:
        for n in range(len(path), -1, -1):
            if path[:n] in self._lines:
                return self._lines[path[:n]]
        return 1


def load_yaml(text: str, source: str) -> tuple[Any, LineMap]:
    """Parse one YAML document. Raises PolicyError for syntax errors and duplicate keys."""
    lines = LineMap()
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        last = max(1, len(text.splitlines()))
        line = min(mark.line + 1, last) if mark else 1  # end-of-stream errors point past the last line
        raise PolicyError([Issue(source, line, "<document>", f"invalid YAML: {exc.problem}")]) from None
    except yaml.YAMLError as exc:  # e.g. several documents in one file
        raise PolicyError([Issue(source, 1, "<document>", f"invalid YAML: {exc}")]) from None
    if node is None:
        return {}, lines
    issues: list[Issue] = []
    constructor = yaml.constructor.SafeConstructor()  # a loader would keep every node alive in a cycle
    data = _convert(node, (), lines, issues, source, constructor)
    if issues:
        raise PolicyError(issues)
    return data, lines


def _convert(
    node: yaml.Node, path: Path, lines: LineMap, issues: list[Issue], source: str,
    ctor: yaml.constructor.SafeConstructor,
) -> Any:
    lines.set(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        ctor.flatten_mapping(node)  # merge keys (<<)
        for key_node, value_node in node.value:
            key = ctor.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                issues.append(Issue(source, line, format_path(path), f"mapping key {key!r} must be a string"))
                continue
            if key in out:
                issues.append(Issue(source, line, format_path((*path, key)), f"duplicate key {key!r}"))
                continue
            lines.set((*path, key), line)
            out[key] = _convert(value_node, (*path, key), lines, issues, source, ctor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return tuple(
            _convert(item, (*path, i), lines, issues, source, ctor) for i, item in enumerate(node.value)
        )
    return ctor.construct_object(node, deep=True)

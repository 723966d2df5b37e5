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
    data = _Converter(lines, issues, source, constructor).convert(node, ())
    if issues:
        raise PolicyError(issues)
    return data, lines


# what PyYAML's safe constructors raise on a value they cannot build (`!!int x`, `2001-13-01`, a bad
# `!!binary`, an unknown tag, a merge key onto a scalar, an empty `!!float`): reported, never raised
_CONSTRUCT_ERRORS = (yaml.YAMLError, ValueError, TypeError, AttributeError, IndexError, OverflowError)


class _Converter:
    def __init__(
        self, lines: LineMap, issues: list[Issue], source: str, ctor: yaml.constructor.SafeConstructor
    ) -> None:
        self.lines, self.issues, self.source, self.ctor = lines, issues, source, ctor
        self._open: set[int] = set()  # collections being converted: an alias to one is a cycle

    def _issue(self, node: yaml.Node, path: Path, message: str) -> None:
        self.issues.append(Issue(self.source, node.start_mark.line + 1, format_path(path), message))

    def _construct(self, node: yaml.Node, path: Path) -> tuple[bool, Any]:
        try:
            return True, self.ctor.construct_object(node, deep=True)
        except _CONSTRUCT_ERRORS as exc:
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else exc
            what = "value"
            if isinstance(node, yaml.ScalarNode):
                what = f"value {node.value!r} (tag {node.tag})"
            self._issue(node, path, f"invalid {what}: {problem}")
            return False, None

    def convert(self, node: yaml.Node, path: Path) -> Any:
        self.lines.set(path, node.start_mark.line + 1)
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return self._construct(node, path)[1]
        if id(node) in self._open:
            self._issue(node, path, "recursive alias: an anchor used inside itself")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return tuple(self.convert(item, (*path, i)) for i, item in enumerate(node.value))
            return self._mapping(node, path)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        try:
            self.ctor.flatten_mapping(node)  # merge keys (<<)
        except _CONSTRUCT_ERRORS as exc:
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else exc
            self._issue(node, path, f"invalid merge key: {problem}")
            return out
        for key_node, value_node in node.value:
            built, key = self._construct(key_node, path)
            line = key_node.start_mark.line + 1
            if not built:
                continue
            if not isinstance(key, str):
                self.issues.append(
                    Issue(self.source, line, format_path(path), f"mapping key {key!r} must be a string")
                )
                continue
            if key in out:
                self.issues.append(
                    Issue(self.source, line, format_path((*path, key)), f"duplicate key {key!r}")
                )
                continue
            self.lines.set((*path, key), line)
            out[key] = self.convert(value_node, (*path, key))
        return out

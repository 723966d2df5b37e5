"""YAML to plain data, remembering the line of every node so errors can name it.

Mappings become dicts, sequences become tuples (the policy model is frozen), scalars keep
PyYAML's safe types. Duplicate keys are an error here: PyYAML would silently keep the last.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import Issue, Path, PolicyError, format_path

__all__ = ["MAX_DEPTH", "MAX_NODES", "LineMap", "load_yaml"]

MAX_NODES = 1_000_000
"""The most nodes (mappings, lists, keys and scalars) a document may hold once its aliases are expanded.
An alias is a reference, but the policy is plain data: each use of an anchor is converted and validated
again, so a few hundred bytes of anchors of anchors ("billion laughs") would take minutes and gigabytes.
A policy of 100,000 tenants (a name and a tier each) holds ~500,000 nodes; so does an 8 MiB list of URLs."""

MAX_DEPTH = 200
"""The deepest nesting of mappings and lists. A policy nests ~6 levels; the conversion below recurses
once per level, and libyaml allows 1000 levels: more than Python's recursion limit."""

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
    except yaml.reader.ReaderError as exc:  # a character YAML refuses (a NUL, a control character)
        line = text.count("\n", 0, exc.position) + 1
        what = f"character #x{exc.character:04x}" if isinstance(exc.character, int) else "character"
        raise PolicyError([Issue(source, line, "<document>", f"invalid YAML: unacceptable {what}")]) from None
    except yaml.YAMLError as exc:  # e.g. several documents in one file
        raise PolicyError([Issue(source, 1, "<document>", f"invalid YAML: {exc}")]) from None
    if node is None:
        return {}, lines
    _check_size(node, source)
    issues: list[Issue] = []
    constructor = yaml.constructor.SafeConstructor()  # a loader would keep every node alive in a cycle
    data = _Converter(lines, issues, source, constructor).convert(node, ())
    if issues:
        raise PolicyError(issues)
    return data, lines


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_size(root: yaml.Node, source: str) -> None:
    """Refuse a document that holds more than MAX_NODES nodes once its aliases are expanded, or nests
    deeper than MAX_DEPTH, before converting it. Each composed node is visited once (its size and depth
    are kept by id), without recursion; an alias to a collection being visited (a recursive alias, which
    the conversion reports) counts as 1 node. Raises PolicyError at the line of the first (innermost)
    collection past a bound."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (nodes, depth) once expanded
    open_: set[int] = set()  # collections on the current path
    shared = False  # a collection reached twice: an alias
    over: tuple[yaml.Node, str] | None = None
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if not children_done:
            if key in sizes or key in open_:  # an alias (an ancestor's: recursive, counted as 1)
                shared = True
                continue
            open_.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if isinstance(c, yaml.CollectionNode))
            continue
        open_.discard(key)
        size, depth = 1, 1
        for child in _children(node):
            child_size, child_depth = sizes.get(id(child), (1, 1))
            size, depth = size + child_size, max(depth, child_depth + 1)
        sizes[key] = (size, depth)
        if over is None and depth > MAX_DEPTH:
            over = node, f"the document nests more than {MAX_DEPTH} levels deep"
        elif over is None and size > MAX_NODES:
            over = node, ""
    if over is None:
        return
    node, message = over
    if not message:
        total = sizes[id(root)][0]
        message = f"the document holds {total:,} nodes, more than {MAX_NODES:,}"
        if shared:
            message = (
                f"the document holds {total:,} nodes once its aliases are expanded, more than "
                f"{MAX_NODES:,} (an anchor used again and again)"
            )
    raise PolicyError([Issue(source, node.start_mark.line + 1, "<document>", message)])


# what PyYAML's safe constructors raise on a value they cannot build (`!!int x`, `2001-13-01`, a bad
# `!!binary`, an unknown tag, a merge key onto a scalar, an empty `!!float`): reported, never raised
_CONSTRUCT_ERRORS = (yaml.YAMLError, ValueError, TypeError, AttributeError, IndexError, OverflowError)


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_DECIMAL = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$")
"""An integer as a person writes it. YAML 1.1 also reads octal (010), hexadecimal (0x3c), binary and
sexagesimal (1:00, and 1:30.5 as a float) numbers; a policy refuses them rather than read 010 as 8."""


class _Converter:
    def __init__(
        self, lines: LineMap, issues: list[Issue], source: str, ctor: yaml.constructor.SafeConstructor
    ) -> None:
        self.lines, self.issues, self.source, self.ctor = lines, issues, source, ctor
        self._open: set[int] = set()  # collections being converted: an alias to one is a cycle

    def _issue(self, node: yaml.Node, path: Path, message: str) -> None:
        self.issues.append(Issue(self.source, node.start_mark.line + 1, format_path(path), message))

    def _construct(self, node: yaml.Node, path: Path) -> tuple[bool, Any]:
        text = node.value if isinstance(node, yaml.ScalarNode) else ""
        if (node.tag == _INT and not _DECIMAL.match(text)) or (node.tag == _FLOAT and ":" in text):
            self._issue(node, path, f"invalid number {node.value!r}: write it in decimal")
            return False, None
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

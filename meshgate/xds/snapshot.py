"""An immutable xDS snapshot: every resource serialized once, versioned by the hash of its bytes.

`Snapshot.build(...)` takes protobuf messages, serializes each one deterministically, and checks
consistency (every referenced cluster, route configuration, EDS assignment and secret exists)
before anything can publish it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf import any_pb2  # type: ignore[import-untyped]
from google.protobuf.message import Message  # type: ignore[import-untyped]

from ._refs import references
from ._types import CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, SECRET, short

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ORDER",
    "ROUTE",
    "SECRET",
    "InconsistentSnapshot",
    "Resource",
    "Snapshot",
]


class InconsistentSnapshot(ValueError):
    """A resource references something the snapshot does not contain."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("inconsistent snapshot: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Resource:
    """One named resource: its message, its bytes packed in an Any once, and the hash of those bytes."""

    name: str
    version: str
    message: Message
    packed: any_pb2.Any

    @classmethod
    def of(cls, type_url: str, name: str, message: Message) -> Resource:
        data = message.SerializeToString(deterministic=True)
        packed = any_pb2.Any(type_url=type_url, value=data)
        return cls(name=name, version=hashlib.sha256(data).hexdigest()[:16], message=message, packed=packed)

    @property
    def size(self) -> int:
        return len(self.packed.value)


def type_version(resources: Mapping[str, Resource]) -> str:
    """The version of a set of resources: a hash of their names and versions (order independent)."""
    digest = hashlib.sha256()
    for name in sorted(resources):
        digest.update(f"{name}\0{resources[name].version}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """Resources per type URL (name -> Resource), their type versions, and one version for the whole."""

    resources: Mapping[str, Mapping[str, Resource]]
    versions: Mapping[str, str]
    version: str

    @classmethod
    def build(cls, items: Mapping[str, Iterable[tuple[str, Message]]], *, check: bool = True) -> Snapshot:
        """Serialize each (name, message) per type URL; raise InconsistentSnapshot on a dangling reference
        (or a duplicate name). `check=False` skips the reference check (tests of the check itself)."""
        resources: dict[str, Mapping[str, Resource]] = {}
        for type_url in ORDER:
            named: dict[str, Resource] = {}
            for name, message in items.get(type_url, ()):
                if name in named:
                    raise InconsistentSnapshot([f"duplicate {short(type_url)} {name!r}"])
                named[name] = Resource.of(type_url, name, message)
            resources[type_url] = MappingProxyType(named)
        versions = {t: type_version(resources[t]) for t in ORDER}
        whole = hashlib.sha256("".join(versions[t] for t in ORDER).encode()).hexdigest()[:16]
        snapshot = cls(MappingProxyType(resources), MappingProxyType(versions), whole)
        if check:
            problems = snapshot.problems()
            if problems:
                raise InconsistentSnapshot(problems)
        return snapshot

    def replace(self, items: Mapping[str, Iterable[tuple[str, Message]]]) -> Snapshot:
        """A new snapshot with the named resources of `items` replaced (or added); every other resource
        is kept as it is (same bytes, same version, not serialized again). Checked for consistency."""
        resources: dict[str, Mapping[str, Resource]] = dict(self.resources)
        for type_url, changed in items.items():
            named = dict(self.resources[type_url])
            for name, message in changed:
                named[name] = Resource.of(type_url, name, message)
            resources[type_url] = MappingProxyType(named)
        versions = {t: type_version(resources[t]) if t in items else self.versions[t] for t in ORDER}
        whole = hashlib.sha256("".join(versions[t] for t in ORDER).encode()).hexdigest()[:16]
        snapshot = Snapshot(MappingProxyType(resources), MappingProxyType(versions), whole)
        problems = snapshot.problems()
        if problems:
            raise InconsistentSnapshot(problems)
        return snapshot

    def problems(self) -> list[str]:
        """Every dangling reference, as 'kind name -> missing kind name'."""
        found = []
        for type_url in ORDER:
            for name, resource in self.resources[type_url].items():
                for ref_type, ref_name in references(type_url, resource.message):
                    if ref_name not in self.resources[ref_type]:
                        found.append(
                            f"{short(type_url)} {name!r} references missing {short(ref_type)} {ref_name!r}"
                        )
        return found

    @functools.cached_property
    def named_types(self) -> Mapping[tuple[str, str], frozenset[str]]:
        """(type, name) of each resource -> the types of the resources it names (what a proxy holding it
        asks for next: a cluster's endpoints and secrets, a listener's routes and secrets)."""
        return MappingProxyType(
            {
                (type_url, name): frozenset(t for t, _ in references(type_url, resource.message))
                for type_url in ORDER
                for name, resource in self.resources[type_url].items()
            }
        )

    def __getitem__(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources[type_url]

    def __iter__(self) -> Iterator[str]:
        return iter(ORDER)

    @property
    def size(self) -> int:
        """Total serialized bytes."""
        return sum(r.size for t in ORDER for r in self.resources[t].values())

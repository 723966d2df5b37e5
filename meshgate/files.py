"""Files a policy or a flag names (certificates, keys, CA bundles, a model's tokenizer): read only when
they are regular files of a bounded size. A device (`/dev/zero`), a FIFO or a huge file named by
mistake would otherwise be read until memory runs out; instead the load that names it is refused with
the path and why (a reload keeps the policy it had).
"""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["MAX_PEM_BYTES", "read_bounded", "regular_size"]

MAX_PEM_BYTES = 4 << 20
"""The largest certificate, key or CA bundle read (a system CA bundle is ~0.2 MiB)."""


def regular_size(path: str | Path, limit: int, what: str) -> int:
    """The size of `path`, a regular file of at most `limit` bytes; else ValueError naming `what`."""
    try:
        info = Path(path).stat()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        raise ValueError(f"cannot read {what} {str(path)!r}: not a regular file of at most {_size(limit)}")
    return info.st_size


def read_bounded(path: str | Path, limit: int = MAX_PEM_BYTES, what: str = "file") -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (checked before and while reading)."""
    regular_size(path, limit, what)
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # (it grew since)
        raise ValueError(f"cannot read {what} {str(path)!r}: larger than {_size(limit)}")
    return data


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"

"""The byte bound on a client-chosen string in what meshgate writes: log lines, spans, denial messages,
status reports. One rule for every server: extauthz, ratelimit and xds import it from here (docs/extauthz.md,
"Bounds").
"""

from __future__ import annotations

__all__ = ["LOGGED_STRING_BYTES", "clip"]

LOGGED_STRING_BYTES = 256
"""A client-chosen string (model, version, user, request id, a node id, an error's text) is cut to this
many bytes of UTF-8 in audit lines, spans, log lines, status reports and denial messages."""

_CUT_MARK = "..."


def clip(value: str, limit: int = LOGGED_STRING_BYTES) -> str:
    """`value` if its UTF-8 is at most `limit` bytes, else its first `limit` bytes (whole characters)
    followed by "..."."""
    if len(value) <= limit >> 2:  # at most 4 bytes a character: short strings need no encoding
        return value
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return value
    return raw[:limit].decode("utf-8", "ignore") + _CUT_MARK

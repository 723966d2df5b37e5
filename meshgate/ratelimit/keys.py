"""Counter keys, shared by every store:

    mg:{<tag>}:<domain>:<k1>=<v1>:<k2>=<v2>:<window seconds>:<window start, epoch seconds>

`<tag>` is the value of the descriptor's `tenant` entry, else its first `key=value`: all counters of
one tenant share a Redis Cluster slot. Keys, values and the domain are percent-encoded unless they are
letters, digits and `_ . -`.

Keys stay short whatever a client sends: a tag longer than `TAG_MAX` characters, and a
`<domain>:<pairs>` part longer than `BODY_MAX`, are replaced by `#` and 32 hex digits of a BLAKE2b
digest of what they stand for (length-prefixed, so two descriptors never share one). Each distinct
descriptor keeps its own counter, as in envoyproxy/ratelimit; only its name is shortened. A readable
part never starts with `#` (it is percent-encoded), so the two forms never meet.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from urllib.parse import quote

__all__ = ["BODY_MAX", "TAG_MAX", "counter_base"]

TAG_MAX = 64
BODY_MAX = 256
_PLAIN = re.compile(r"^[A-Za-z0-9_.\-]*$")


def _q(text: str) -> str:
    return text if _PLAIN.match(text) else quote(text, safe="")


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(b"%d:" % len(data))
        h.update(data)
    return "#" + h.hexdigest()


def counter_base(domain: str, entries: Sequence[tuple[str, str]], window: int) -> tuple[str, str]:
    """The key of a descriptor's counters up to the window start, and its hash tag. A long value is
    never percent-encoded (encoding only lengthens): its raw length already says it will be hashed."""
    tenant = next((v for k, v in entries if k == "tenant"), None)
    if tenant is not None:
        tag = _q(tenant) if len(tenant) <= TAG_MAX else None
        if tag is None or len(tag) > TAG_MAX:
            tag = _digest(tenant)
    elif entries:
        key, value = entries[0]
        tag = f"{_q(key)}={_q(value)}" if len(key) + len(value) < TAG_MAX else None
        if tag is None or len(tag) > TAG_MAX:
            tag = _digest(key, value)
    else:
        tag = ""
    body: str | None = None
    if len(domain) + sum(len(k) + len(v) + 2 for k, v in entries) <= BODY_MAX:
        body = f"{_q(domain)}:{':'.join(f'{_q(k)}={_q(v)}' for k, v in entries)}"
    if body is None or len(body) > BODY_MAX:
        body = _digest(domain, *(part for pair in entries for part in pair))
    return f"mg:{{{tag}}}:{body}:{window}:", tag

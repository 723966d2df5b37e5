"""A decision's answer in the form its transport sends: gRPC's serialized CheckResponse, or the HTTP/1.1
answer of `http.to_http` (a HEAD's without its body). A decision served from the cache reuses the
answer built for it before, in that form (keyed by the decision object, the client's x-meshgate-*
header names, whether the path is OpenAI's, and the form): only its decision id changes, written into a
template's hole (`WireTemplate`). A decision made now, or one whose answer is over the memo's
per-entry bound, is built for this request only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from envoy.service.auth.v3 import external_auth_pb2

from .bounds import RESPONSE_ENTRY_BYTES, RESPONSE_MEMO_BYTES
from .cache import BoundedMemo, decision_bytes, strings_bytes
from .core import Authorizer
from .http import to_http
from .request import CheckInput, Decision
from .responses import HEADER_PREFIX, WireTemplate, add_decision_id, to_response
from .table import AuthzTable
from .target import OPENAI_PREFIXES

__all__ = ["Answers", "Form", "check_response"]


class Form(enum.Enum):
    """The bytes a transport sends for a CheckResponse."""

    GRPC = "grpc"
    HTTP = "http"
    HTTP_HEAD = "http-head"  # (the answer to a HEAD: no body, its length kept)

    @classmethod
    def http(cls, req: CheckInput) -> Form:
        """The HTTP form for `req` (Envoy sends the client's method)."""
        return cls.HTTP_HEAD if req.method == "HEAD" else cls.HTTP

    def encode(self, response: external_auth_pb2.CheckResponse) -> bytes:
        return _ENCODE[self](response)


_ENCODE: dict[Form, Callable[[external_auth_pb2.CheckResponse], bytes]] = {
    Form.GRPC: lambda r: bytes(r.SerializeToString(deterministic=True)),
    Form.HTTP: to_http,
    Form.HTTP_HEAD: lambda r: to_http(r, head=True),
}
_MemoKey = tuple[int, tuple[str, ...], bool, Form]  # decision, client x-meshgate-* names, OpenAI path, form


class Answers:
    """The answers of decisions, with the memo of the cached decisions' templates."""

    def __init__(self) -> None:
        self._memo: BoundedMemo[_MemoKey, tuple[Decision, WireTemplate]] = BoundedMemo(
            RESPONSE_MEMO_BYTES, max_entry_bytes=RESPONSE_ENTRY_BYTES
        )

    @property
    def memo_bytes(self) -> tuple[int, int]:
        """(bytes held, bound) of the memo."""
        return self._memo.bytes, self._memo.max_bytes

    def clear(self) -> None:
        """Forget every template (a new policy: its tables may answer differently)."""
        self._memo.clear()

    def encoded(
        self,
        authorizer: Authorizer,
        decision: Decision,
        req: CheckInput,
        decision_id: str,
        *,
        cached: bool,
        form: Form,
    ) -> bytes:
        """The answer to `req` for `decision`, carrying `decision_id`, in `form`."""
        client_headers = tuple([name for name in req.headers if name.startswith(HEADER_PREFIX)])
        openai = req.path.startswith(OPENAI_PREFIXES)  # errors in OpenAI's shape there
        if cached:
            key = (id(decision), client_headers, openai, form)
            memo = self._memo.get(key)
            if memo is not None and memo[0] is decision:
                return memo[1].render(decision_id)
            if self._memoize(authorizer.table, decision, key, width=len(decision_id)):
                return self._memo.get(key)[1].render(decision_id)  # type: ignore[index]
        response = check_response(authorizer.table, decision, client_headers, openai=openai)
        add_decision_id(response, decision_id)
        return form.encode(response)

    def _memoize(self, table: AuthzTable, decision: Decision, key: _MemoKey, *, width: int) -> bool:
        """Keep the answer template of a cached decision, unless it is over the per-entry bound (the
        decision is counted too: the memo keeps it alive). Whether it was kept."""
        _, client_headers, openai, form = key
        size = strings_bytes(client_headers) + decision_bytes(decision)
        if size > self._memo.max_entry_bytes:
            return False
        response = check_response(table, decision, client_headers, openai=openai)
        template = WireTemplate.build(response, width=width, encode=form.encode)
        return self._memo.put(key, (decision, template), size + len(template.head) + len(template.tail))


def check_response(
    table: AuthzTable, decision: Decision, client_headers: tuple[str, ...], *, openai: bool
) -> external_auth_pb2.CheckResponse:
    """The CheckResponse a check sends for `decision` (headers, metadata).
    `client_headers`: the x-meshgate-* header names the client sent; `openai`: under OpenAI's paths."""
    response: external_auth_pb2.CheckResponse = to_response(
        decision,
        client_headers=client_headers,
        api_key_header=table.auth.api_key_header,
        forward_authorization=table.auth.forward_authorization,
        openai=openai,
    )
    return response

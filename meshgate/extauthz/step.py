"""One Check between its steps (the decision, the prompt's count, the token admission), and the token
admission's part of the answer (`gateway.ratelimit.admission: extauthz`: meshgate/ratelimit/admission.py
decides it; this module asks it and shapes the CheckResponse)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from opentelemetry import trace

from .core import Authorizer, Counting
from .request import CheckInput, Decision, Unavailable
from .responses import identity_values, refused

if TYPE_CHECKING:
    from meshgate.ratelimit.admission import Admission, Refusal

__all__ = ["Admitted", "Step", "admit", "admits", "with_admission"]

Admitted = tuple["Refusal | None", tuple[tuple[str, str], ...]]
"""The token admission's answer: the refusal (None: admitted), and the rate limit headers."""
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclasses.dataclass(slots=True)
class Step:
    """A Check in progress: its decision once made (or the count it waits for), its open span."""

    started: float
    req: CheckInput
    span: trace.Span | None
    authorizer: Authorizer
    counting: Counting | None = None
    decision: Decision | None = None
    cached: bool = False
    admitted: Admitted | None = None

    def decide(self, tokens: int) -> None:
        """Finish the decision with the prompt's count."""
        assert self.counting is not None
        self.decision = self.authorizer.finish(self.counting, tokens)
        self.counting = None

    def end(self) -> None:
        if self.span is not None:
            self.span.end()
            self.span = None


def admits(admission: Admission, decision: Decision) -> bool:
    """Whether the admission in the Check applies: an allowed request for a model with quotas decided
    there (AdmissionPlan)."""
    target = decision.target
    return (
        decision.allowed and target is not None and target.kind == "model" and admission.applies(target.model)
    )


async def admit(admission: Admission, decision: Decision, *, openai: bool) -> Admitted:
    """Ask the rate limiter; a store that cannot answer (and the policy fails closed) leaves the Check
    undecided (Unavailable: Envoy's ext_authz error answer)."""
    from meshgate.ratelimit.store import StoreUnavailable  # (extauthz imports no rate limiter at load)

    assert decision.target is not None
    try:
        return await admission.admit(identity_values(decision), decision.target.tokens, openai=openai)
    except StoreUnavailable as exc:
        raise Unavailable(f"admission: {exc}") from exc


def with_admission(
    response: external_auth_pb2.CheckResponse, admitted: Admitted | None
) -> external_auth_pb2.CheckResponse:
    """`response` (an allow) with the admission's answer: the 429 instead, or the rate limit headers
    added to the client's answer (OkHttpResponse.response_headers_to_add)."""
    if admitted is None:
        return response
    refusal, headers = admitted
    if refusal is not None:
        return refused(refusal.headers, refusal.body)
    ok = response.ok_response
    for name, value in headers:
        ok.response_headers_to_add.add(
            header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
        )
    return response

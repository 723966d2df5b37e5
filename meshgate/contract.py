"""Names that several compilers and services must agree on: one rule, one place.

LLM token accounting (docs/llm.md) crosses three rooms. extauthz puts the tokens a request *asks*
for in its dynamic metadata; xds configures Envoy to copy the tokens a response *used* (the backend's
OpenAI `usage` object, in the JSON body or the last SSE event) into dynamic metadata and to send both
to the rate limiter in descriptors; ratelimit recognises the reserved descriptor entries. Every name
those steps share lives here, and each side imports it from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshgate.policy.model import Model

__all__ = [
    "ASKED_TOKENS",
    "ASKED_TOKENS_KEY",
    "CHARGE",
    "CHECK",
    "COMPLETION_TOKENS",
    "EXTAUTHZ_METADATA",
    "EXTAUTHZ_NAMESPACE",
    "PHASE_KEY",
    "PROMPT_TOKENS",
    "REQUESTS",
    "STREAM_HEADER",
    "TOTAL_TOKENS",
    "USAGE_FIELDS",
    "USAGE_KEY",
    "USAGE_KINDS",
    "USAGE_NAMESPACE",
    "USAGE_RULE",
    "USED_TOKENS",
    "metadata",
    "reads_usage",
]

# --- descriptors the rate limiter reads -------------------------------------------------------------

PHASE_KEY = "meshgate.phase"
"""Reserved last entry of a token quota's descriptor: `check` (at request time: refuse if the asked
tokens would not fit, add nothing) or `charge` (at stream end: add the used tokens, never refuse)."""
CHECK, CHARGE = "check", "charge"

USAGE_KEY = "meshgate.usage"
"""Reserved first entry of a chargeback descriptor, `meshgate.usage=<kind>, tenant=<t>, model=<m>`,
sent at stream end: counted per (kind, tenant, model) for the names the policy declares, never limited."""
USAGE_RULE = "meshgate.usage"
"""Name of the (unlimited) rules the policy compiles for the declared chargeback descriptors."""



def reads_usage(model: Model) -> bool:
    """Whether the gateway reads `model`'s usage from its responses (OpenAI-compatible backends): xds
    sends its chargeback descriptors, ratelimit counts them."""
    return model.protocol == "openai"


# --- dynamic metadata ------------------------------------------------------------------------------

EXTAUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
"""Envoy's ext_authz filter stores the metadata meshgate extauthz returns under its own name."""
EXTAUTHZ_METADATA = "meshgate"
"""The struct meshgate extauthz returns in `dynamic_metadata` (tenant, user, tier, model, tokens)."""
ASKED_TOKENS_KEY = "tokens"
"""Its key for the tokens a request asks for (prompt estimate + max_tokens, or the context limit)."""

USAGE_NAMESPACE = "meshgate.usage"
"""Where Envoy writes what the backend reported it used (one number per key below)."""
TOTAL_TOKENS = "tokens"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
REQUESTS = "requests"  # 1 once a response reported usage: the requests a tenant is charged for
USAGE_FIELDS = {
    TOTAL_TOKENS: "total_tokens",
    PROMPT_TOKENS: "prompt_tokens",
    COMPLETION_TOKENS: "completion_tokens",
}
"""Metadata key -> field of the OpenAI `usage` object it is read from (vLLM, TGI, llama.cpp, KServe)."""
USAGE_KINDS = (REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS)
"""The chargeback counters, by the metadata key that feeds each (also the value of the USAGE_KEY entry)."""


def metadata(namespace: str, *path: str) -> str:
    """Envoy's formatter for one dynamic metadata value: `%DYNAMIC_METADATA(ns:key:...)%`."""
    return f"%DYNAMIC_METADATA({':'.join((namespace, *path))})%"


ASKED_TOKENS = metadata(EXTAUTHZ_NAMESPACE, EXTAUTHZ_METADATA, ASKED_TOKENS_KEY)
"""The tokens a request asks for, as Envoy's formatter reads them after ext_authz."""
USED_TOKENS = metadata(USAGE_NAMESPACE, TOTAL_TOKENS)
"""The tokens the response used, as the backend reported them."""

# --- headers ---------------------------------------------------------------------------------------

STREAM_HEADER = "x-meshgate-stream"
"""Set by the gateway from the request body's `stream` (`true` when streaming), overwriting any copy
the client sent; the gateway then asks the backend for usage in the stream (docs/llm.md)."""

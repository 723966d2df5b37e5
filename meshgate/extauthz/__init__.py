"""meshgate.extauthz: envoy.service.auth.v3.Authorization with JWT, API keys and model RBAC.

`decide(table, request) -> Decision` is the pure core (request.py, core.py, target.py, tokens.py);
`ExtAuthzService` is the thin grpc.aio adapter (service.py, responses.py). Reference: docs/extauthz.md.
"""

from .core import Authorizer, decide
from .jwks import JwksRefresher
from .request import CODES, CheckInput, Decision, Identity, Target, Unavailable
from .service import ExtAuthzService
from .table import AuthzTable, compile_table

__all__ = [
    "CODES",
    "Authorizer",
    "AuthzTable",
    "CheckInput",
    "Decision",
    "ExtAuthzService",
    "Identity",
    "JwksRefresher",
    "Target",
    "Unavailable",
    "compile_table",
    "decide",
]

"""meshgate.ratelimit: envoy.service.ratelimit.v3.RateLimitService, a drop-in for envoyproxy/ratelimit.

`core.Limiter.decide` is the pure decision; `store` / `redis_store` hold the counters; `config`
reads envoyproxy/ratelimit YAML and `compile` the policy's quotas into the same `model`; `service`
is the thin grpc.aio adapter and the Service the composition root runs.
"""

from .compile import compile_policy
from .config import ConfigError, load_config_dir, parse_config
from .core import PHASE_KEY, Decision, Descriptor, InvalidRequest, Limiter, Request, Settings, Status
from .model import Node, RateLimitConfig, Rule
from .service import RateLimitService, RateLimitServicer
from .store import MemoryStore, Slot, Store, StoreResult, StoreUnavailable

__all__ = [
    "PHASE_KEY",
    "ConfigError",
    "Decision",
    "Descriptor",
    "InvalidRequest",
    "Limiter",
    "MemoryStore",
    "Node",
    "RateLimitConfig",
    "RateLimitService",
    "RateLimitServicer",
    "Request",
    "Rule",
    "Settings",
    "Slot",
    "Status",
    "Store",
    "StoreResult",
    "StoreUnavailable",
    "compile_policy",
    "load_config_dir",
    "parse_config",
]

"""The policy model: parsing, validation, loading and watching (see README "Policy reference")."""

from .errors import Issue, PolicyError
from .load import load_policy, parse_policy, policy_warnings
from .model import Model, ModelVersion, Policy, Quota, Role, Tenant, Tier

__all__ = [
    "Issue",
    "Model",
    "ModelVersion",
    "Policy",
    "PolicyError",
    "Quota",
    "Role",
    "Tenant",
    "Tier",
    "load_policy",
    "parse_policy",
    "policy_warnings",
]

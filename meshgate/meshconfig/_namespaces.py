"""Namespaces the policy declares, and what goes into them: the Namespace itself and, for tenants,
a ResourceQuota and a NetworkPolicy. Nothing namespace-wide goes into a namespace the policy does not
name: a model without `namespace` lands in `default` (or its KServe namespace) with its own objects
only, and a tenant without `namespace` gets no isolation objects at all (`gaps` says so).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..policy.model import Policy
from ._common import Obj, metadata, model_namespace

__all__ = [
    "TENANT_QUOTA",
    "declared_model_namespaces",
    "declared_tenant_namespaces",
    "namespace",
    "network_policy",
    "tenant_objects",
]

# a tenant namespace may run what it likes, but not expose it past the gateway: no LoadBalancer or
# NodePort Service of its own (a Service reachable from outside would bypass ext_authz)
TENANT_QUOTA = {"services.loadbalancers": "0", "services.nodeports": "0"}
_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every Namespace (1.22+)


def declared_model_namespaces(policy: Policy) -> list[str]:
    """Namespaces of models whose `namespace` the policy sets, sorted."""
    return sorted({m.namespace for m in policy.models if m.namespace is not None})


def declared_tenant_namespaces(policy: Policy) -> list[str]:
    """Namespaces of tenants whose `namespace` the policy sets and that hold no model, sorted."""
    models = {model_namespace(m) for m in policy.models}
    return sorted({t.namespace for t in policy.tenants if t.namespace is not None} - models)


def namespace(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata(name, None)}


def network_policy(name: str, ns: str, allowed: Iterable[str]) -> Obj:
    """Ingress to every pod of `ns` only from pods of the `allowed` namespaces (by their name label)."""
    source = {
        "namespaceSelector": {
            "matchExpressions": [{"key": _NAME_LABEL, "operator": "In", "values": sorted(set(allowed))}]
        }
    }
    spec = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [source]}]}
    meta = metadata(name, ns)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


def tenant_objects(ns: str, allowed: Iterable[str]) -> list[Obj]:
    """A declared tenant namespace: the Namespace, its ResourceQuota, its NetworkPolicy."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": metadata("meshgate-tenant", ns),
        "spec": {"hard": dict(TENANT_QUOTA)},
    }
    return [namespace(ns), quota, network_policy("meshgate-tenant-isolation", ns, [ns, *allowed])]

"""meshgate: ext_authz, global rate limit and xDS for AI inference behind Envoy."""

__version__ = "0.1.0"
__all__ = ["__version__"]

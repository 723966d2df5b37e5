"""meshgate.models."""

"""meshgate.ratelimit."""

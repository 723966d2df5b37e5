"""meshgate.meshconfig."""

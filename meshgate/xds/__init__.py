"""meshgate.xds."""

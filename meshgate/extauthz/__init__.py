"""meshgate.extauthz."""

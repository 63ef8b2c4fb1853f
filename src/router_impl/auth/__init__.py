"""API keys and authentication: hashed keys, scopes, expiry, revocation."""

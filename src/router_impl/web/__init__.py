"""The HTTP shell around the domain: Connexion glue, pure-ASGI middleware, response helpers."""

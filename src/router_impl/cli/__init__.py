"""The `router` command line: serve, config, keys, limits, usage, policy and ops commands."""

from router_impl.cli.commands import main

__all__ = ["main"]

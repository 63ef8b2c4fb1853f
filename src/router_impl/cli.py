"""The `router` command line: `router serve`, `router version`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from router_impl import __version__


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    # Workers are separate processes that build their own app from the environment.
    overrides = {"ROUTER_HOST": args.host, "ROUTER_PORT": args.port, "ROUTER_WORKERS": args.workers}
    if args.config is not None:
        overrides["ROUTER_CONFIG_PATH"] = os.path.abspath(args.config)
    if args.log_level is not None:
        overrides["ROUTER_LOG_LEVEL"] = args.log_level
    if args.demo:
        overrides["ROUTER_DEMO"] = "true"
    os.environ.update({k: str(v) for k, v in overrides.items() if v is not None})

    from router_impl.settings import Settings

    settings = Settings()
    if settings.demo:
        _print_demo_banner(settings)
    uvicorn.run(
        "router_impl.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=16 * 1024,
    )
    return 0


def _print_demo_banner(settings: Any) -> None:
    upstream = settings.demo_upstream or "the built-in demo upstream"
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"router demo mode: model 'demo' on {upstream}\n"
        f"  inference key (ROUTER_DEMO_API_KEY):   {settings.demo_api_key.get_secret_value()}\n"
        f"  admin key     (ROUTER_DEMO_ADMIN_KEY): {settings.demo_admin_key.get_secret_value()}\n"
        f"  try: curl -s {base}/v1/chat/completions -H 'Authorization: Bearer "
        f"{settings.demo_api_key.get_secret_value()}' -H 'Content-Type: application/json' "
        """-d '{"model":"demo","messages":[{"role":"user","content":"hello"}]}'""",
        file=sys.stderr,
        flush=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router", description="API Router Service")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the router (settings from ROUTER_* env; flags override)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.add_argument("--config", default=None, help="runtime config YAML (ROUTER_CONFIG_PATH)")
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--demo",
        action="store_true",
        help="embedded defaults + a built-in upstream serving model 'demo' (ROUTER_DEMO)",
    )
    serve.set_defaults(func=_serve)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _: print(__version__) or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

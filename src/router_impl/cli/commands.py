"""The `router` command line: `router serve`, `router config validate`, `router version`, admin commands."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router_impl import __version__
from router_impl.cli import config as config_cli
from router_impl.cli import ops as ops_cli
from router_impl.cli import usage as usage_cli


def _share_metrics(directory: Path) -> None:
    """Workers write their metric values to one fresh directory; any worker's scrape sums them.
    Set before the workers start: prometheus-client reads it when first imported."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


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
    if args.demo_allow_public:
        overrides["ROUTER_DEMO_ALLOW_PUBLIC"] = "true"
    os.environ.update({k: str(v) for k, v in overrides.items() if v is not None})

    from pydantic import ValidationError

    from router_impl.demo.config import demo_bind_refusal
    from router_impl.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:  # e.g. --workers N without a shared store: say why, no traceback
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            print(f"router serve: {where + ': ' if where else ''}{message}", file=sys.stderr)
        return 2
    if (refusal := demo_bind_refusal(settings)) is not None:
        print(f"router: {refusal}", file=sys.stderr)
        return 2
    if not config_cli.check_before_serve(settings.config_path, settings.data_dir):
        return 1
    if settings.demo:
        threading.Thread(target=_banner_when_serving, args=(settings,), daemon=True).start()
    if settings.workers > 1:
        _share_metrics(settings.data_dir / "prometheus")
    uvicorn.run(
        "router_impl.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=_limited_http(settings),  # a protocol factory: uvicorn only calls it
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=16 * 1024,
    )
    return 0


def _limited_http(settings: Any) -> Any:
    """uvicorn's httptools protocol with the connection limits of settings (web/http_protocol.py);
    a partial of module-level classes, so uvicorn can hand it to spawned workers."""
    from router_impl.web.http_protocol import ConnectionLimits, LimitedHttpToolsProtocol, WaitingConnections

    limits = ConnectionLimits(
        max_head_bytes=settings.max_header_bytes,
        max_header_fields=settings.max_header_fields,
        head_timeout_seconds=settings.header_timeout_seconds,
        max_connections=settings.max_connections,
    )
    _raise_open_file_limit(settings.max_connections * settings.workers)
    return functools.partial(LimitedHttpToolsProtocol, waiting=WaitingConnections(limits))


def _raise_open_file_limit(connections: int) -> None:
    """Connections are file descriptors: lift the soft limit (often 1024) to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and connections + 256 > soft:
        print(
            f"router: warning: ROUTER_MAX_CONNECTIONS x workers ({connections}) does not fit the "
            f"open-file limit ({soft}); raise ulimit -n or lower ROUTER_MAX_CONNECTIONS",
            file=sys.stderr,
        )


def _banner_when_serving(settings: Any, within: float = 120.0) -> None:
    """The demo banner once the router answers its health check, so it is the last thing `make run`
    shows (after the start-up log lines), not lost above them."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/v1/status/healthz"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                _print_demo_banner(settings)
                return
        except OSError:
            time.sleep(0.2)


def _print_demo_banner(settings: Any) -> None:
    upstream = settings.demo_upstream or "the built-in demo upstream"
    if settings.demo_upstream and settings.demo_upstream_model:
        upstream += f" (as model '{settings.demo_upstream_model}')"
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


def _admin(args: argparse.Namespace) -> Any:
    from router_impl.cli.admin_client import AdminClient

    key = args.admin_key or os.environ.get("ROUTER_ADMIN_KEY")
    if not key:
        raise SystemExit("router: an admin key is needed (--admin-key or ROUTER_ADMIN_KEY)")
    return AdminClient(args.url, key)


KEY_COLUMNS = ("id", "organization_id", "name", "prefix", "scopes", "expires_at", "revoked", "created_at")


def _created(answer: dict[str, Any]) -> str:
    secrets = {k: v for k, v in answer.items() if k != "key"}
    return ops_cli.fields({**answer["key"], **secrets}) + "\nthe secret is shown once: keep it now"


def _keys_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"organization_id": args.org, "scopes": args.scope or ["inference"]}
    if args.name:
        body["name"] = args.name
    if args.model:
        body["allowed_models"] = args.model
    if args.expires_at:
        body["expires_at"] = args.expires_at
    if args.signature_required:
        body["signature_required"] = True
    return ops_cli.show(_admin(args).request("POST", "/v1/admin/keys", body), args.json, _created)


def _keys_list(args: argparse.Namespace) -> int:
    query = {"organization_id": args.org, "limit": args.limit, "cursor": args.cursor}
    answer = _admin(args).request("GET", "/v1/admin/keys", query=query)
    return ops_cli.show(answer, args.json, lambda r: ops_cli.page(r, KEY_COLUMNS))


def _keys_revoke(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else None
    answer = _admin(args).request("POST", f"/v1/admin/keys/{args.key_id}/revoke", body)
    return ops_cli.show(answer, args.json, ops_cli.fields)


def _admin_parser(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("--url", default=os.environ.get("ROUTER_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--admin-key", default=None, help="admin-scope key (default: ROUTER_ADMIN_KEY)")
    return parser.add_subparsers(dest="action", required=True)


def _add_policy_commands(sub: Any) -> None:
    from router_impl.cli import policy as policy_cli

    actions = _admin_parser(
        sub, "policy", "routing config (backends, model policies, states) over the admin API"
    )
    dump = actions.add_parser("dump", help="print the applied routing config as runtime-config YAML")
    dump.add_argument("--output", "-o", help="write to this file instead of stdout")
    ops_cli.add_json_flag(dump)
    dump.set_defaults(func=lambda args: policy_cli.run_dump(_admin(args), args))
    apply = actions.add_parser(
        "apply", help="apply a runtime-config YAML file (backends, models, states, org_limits)"
    )
    apply.add_argument("file")
    ops_cli.add_json_flag(apply)
    apply.set_defaults(func=lambda args: policy_cli.run_apply(_admin(args), args))


def _add_keys_commands(sub: Any) -> None:
    actions = _admin_parser(sub, "keys", "manage API keys through the admin API")
    create = actions.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--org", required=True, help="organisation id")
    create.add_argument("--scope", action="append", choices=["inference", "audit", "admin"])
    create.add_argument("--name")
    create.add_argument("--model", action="append", help="allowed model (repeat); default: all")
    create.add_argument("--expires-at", help="RFC 3339 time, e.g. 2027-01-01T00:00:00Z")
    create.add_argument("--signature-required", action="store_true")
    create.set_defaults(func=_keys_create)
    listing = actions.add_parser("list", help="list keys (metadata only)")
    listing.add_argument("--org")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--cursor")
    listing.set_defaults(func=_keys_list)
    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    revoke.add_argument("--reason")
    revoke.set_defaults(func=_keys_revoke)
    for action in (create, listing, revoke):
        ops_cli.add_json_flag(action)


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
    serve.add_argument(
        "--demo-allow-public",
        action="store_true",
        help="demo mode may listen beyond loopback with its well-known keys (ROUTER_DEMO_ALLOW_PUBLIC)",
    )
    serve.set_defaults(func=_serve)

    _add_keys_commands(sub)
    _add_policy_commands(sub)
    config_cli.add_commands(sub)
    usage_cli.add_commands(sub)
    ops_cli.add_commands(sub)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _: print(__version__) or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from router_impl.cli.admin_client import AdminApiError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AdminApiError as exc:
        print(json.dumps(exc.body, indent=2) if not isinstance(exc.body, str) else exc.body, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"router: cannot reach the router: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Operator commands over the admin and audit APIs: `router limits`, `router backends`, `router audit`,
and the one renderer every `router` command prints with: human-readable tables by default, `--json`
for scripts."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from router_impl.cli import limits as limits_cli

Run = Callable[[Any, argparse.Namespace], Any]
AUDIT_COLUMNS = ("timestamp", "action", "organization_id", "api_key_id", "request_id", "decision_reason")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned text columns; absent values print as '-'."""
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    return "\n".join(line(r, widths) for r in [[c.upper() for c in columns], *cells])


def fields(answer: dict[str, Any]) -> str:
    """One object as a two-column table of its fields."""
    return table([{"field": k, "value": v} for k, v in answer.items()], ("field", "value"))


def page(answer: dict[str, Any], columns: Sequence[str]) -> str:
    """A list answer's items, and the flag that fetches the next page if there is one."""
    more = f"\nnext: --cursor {answer['next_cursor']}" if answer.get("next_cursor") else ""
    return table(answer["items"], columns) + more


def line(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One row of cells, each padded to its width (the last one's padding trimmed)."""
    return "  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip()


def show(answer: Any, as_json: bool, render: Callable[[Any], str]) -> int:
    """What every CLI prints: ``render``'s table, or with ``--json`` the answer as indented JSON."""
    print(json.dumps(answer, indent=2, sort_keys=True) if as_json else render(answer))
    return 0


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def _client(args: argparse.Namespace) -> Any:
    from router_impl.cli.admin_client import AdminClient

    key = args.key or os.environ.get(args.key_env) or os.environ.get("ROUTER_ADMIN_KEY")
    if not key:
        raise SystemExit(f"router: a key is needed (--key or {args.key_env})")
    return AdminClient(args.url, key)


def _command(actions: Any, name: str, help_text: str, run: Run, render: Callable[[Any], str]) -> Any:
    parser = actions.add_parser(name, help=help_text)
    add_json_flag(parser)
    parser.add_argument("--url", default=os.environ.get("ROUTER_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--key", "--admin-key", dest="key", help="API key (default: ROUTER_ADMIN_KEY)")

    def func(args: argparse.Namespace) -> int:
        return show(run(_client(args), args), args.json, render)

    parser.set_defaults(func=func)
    return parser


def _group(sub: Any, name: str, help_text: str, key_env: str) -> Any:
    parser = sub.add_parser(name, help=f"{help_text}; key from --key or {key_env}")
    parser.set_defaults(key_env=key_env)
    return parser.add_subparsers(dest="action", required=True)


def _limits_view(answer: dict[str, Any]) -> str:
    limits, state = answer.get("limits") or {}, answer.get("state") or {}
    rows = [{"setting": k, "value": v} for k, v in limits.items()]
    rows += [{"setting": f"now: {k}", "value": v} for k, v in state.items()]
    return f"organisation {answer.get('organization_id')}\n" + table(rows, ("setting", "value"))


def _add_limits(sub: Any) -> None:
    actions = _group(
        sub, "limits", "an organisation's rate limits and budgets (admin API)", "ROUTER_ADMIN_KEY"
    )
    get = _command(
        actions,
        "get",
        "limits and their current state",
        lambda c, a: c.request("GET", f"/v1/admin/orgs/{a.org}/limits"),
        _limits_view,
    )
    get.add_argument("org")
    reset = _command(
        actions,
        "reset",
        "refill buckets and/or clear the budget period",
        lambda c, a: c.request(
            "POST",
            f"/v1/admin/orgs/{a.org}/limits/reset",
            {k: v for k, v in {"scope": a.scope, "key_id": a.key_id, "reason": a.reason}.items() if v},
        ),
        lambda r: table([r], ("organization_id", "scope", "key_id", "cleared", "reset_at")),
    )
    reset.add_argument("org")
    reset.add_argument("--reason", required=True)
    patch = _command(
        actions,
        "patch",
        "change some limits, keep the rest (JSON Merge Patch, RFC 7396)",
        lambda c, a: c.request("PATCH", f"/v1/admin/orgs/{a.org}/limits", limits_cli.patch_body(a)),
        _limits_view,
    )
    patch.add_argument("org")
    limits_cli.add_patch_arguments(patch)
    reset.add_argument("--scope", choices=["buckets", "budget", "all"], default="all")
    reset.add_argument("--key-id", help="only this key's buckets")


def _add_backends(sub: Any) -> None:
    actions = _group(sub, "backends", "backends and their states (admin API)", "ROUTER_ADMIN_KEY")
    columns = (
        "id",
        "state",
        "breaker_state",
        "in_flight",
        "error_ratio",
        "latency_p50_ms",
        "models",
        "state_reason",
    )
    _command(
        actions,
        "list",
        "every backend with its operator state and breaker",
        lambda c, a: c.request("GET", "/v1/admin/backends"),
        lambda r: table(r["items"], columns),
    )
    state = _command(
        actions,
        "state",
        "set a backend's state: healthy, degraded or disabled (kill switch)",
        lambda c, a: c.request(
            "POST", f"/v1/admin/backends/{a.backend_id}/state", {"state": a.state, "reason": a.reason}
        ),
        lambda r: table([r], columns),
    )
    state.add_argument("backend_id")
    state.add_argument("state", choices=["healthy", "degraded", "disabled"])
    state.add_argument("--reason", required=True)


def _add_audit(sub: Any) -> None:
    actions = _group(sub, "audit", "the audit trail (a key with scope audit)", "ROUTER_API_KEY")
    columns = AUDIT_COLUMNS
    events = _command(
        actions,
        "events",
        "audit events, newest first",
        lambda c, a: c.request(
            "GET",
            "/v1/audit/events",
            query={
                "organization_id": a.org,
                "action": a.event_action,
                "since": a.since,
                "until": a.until,
                "limit": a.limit,
                "cursor": a.cursor,
            },
        ),
        lambda r: page(r, columns),
    )
    events.add_argument("--org")
    events.add_argument("--action", dest="event_action", help="REQUEST_ALLOWED, REQUEST_DENIED, ...")
    events.add_argument("--since", help="RFC 3339 time")
    events.add_argument("--until", help="RFC 3339 time")
    events.add_argument("--limit", type=int)
    events.add_argument("--cursor")
    request = _command(
        actions,
        "request",
        "what happened to one request",
        lambda c, a: c.request("GET", f"/v1/audit/requests/{a.request_id}"),
        fields,
    )
    request.add_argument("request_id")


def add_commands(sub: Any) -> None:
    _add_limits(sub)
    _add_backends(sub)
    _add_audit(sub)

"""`router limits get|patch ORG`: an organisation's limits over the admin API. ``patch`` sends a JSON
Merge Patch (RFC 7396), built from ``--set path=value`` pairs or read from a JSON file, so what it
does not name is kept (``PUT`` would replace the whole object)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def merge_patch_of(assignments: Sequence[str]) -> dict[str, Any]:
    """``["budgets.daily_tokens=5000", "budgets.monthly_usd=null"]`` as a nested merge patch; a
    value is JSON when it parses (numbers, null, objects), else a string."""
    patch: dict[str, Any] = {}
    for item in assignments:
        path, sep, raw = item.partition("=")
        names = path.split(".")
        if not sep or not all(names):
            raise ValueError(f"--set takes path=value (e.g. budgets.daily_tokens=5000), not {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = patch
        for name in names[:-1]:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {item!r}: {name} is already set to a value")
            node = child
        node[names[-1]] = value
    return patch


def add_commands(
    sub: Any, admin_parser: Callable[[Any, str, str], Any], admin: Callable[[argparse.Namespace], Any]
) -> None:
    actions = admin_parser(sub, "limits", "an organisation's rate limits and budgets over the admin API")
    get = actions.add_parser("get", help="configured limits and live counters")
    get.add_argument("org")
    get.set_defaults(func=lambda args: _print(admin(args).request("GET", _path(args.org))))
    patch = actions.add_parser("patch", help="change some limits, keep the rest (JSON Merge Patch)")
    patch.add_argument("org")
    given = patch.add_mutually_exclusive_group(required=True)
    given.add_argument("--set", action="append", metavar="PATH=VALUE", help="repeat; null removes")
    given.add_argument("--file", type=Path, help="a JSON merge patch document")
    patch.set_defaults(func=lambda args: _patch(admin(args), args))


def _patch(client: Any, args: argparse.Namespace) -> int:
    try:
        body = json.loads(args.file.read_text(encoding="utf-8")) if args.file else merge_patch_of(args.set)
    except ValueError as exc:
        raise SystemExit(f"router: {exc}") from None
    return _print(client.request("PATCH", _path(args.org), body))


def _path(org: str) -> str:
    return f"/v1/admin/orgs/{urllib.parse.quote(org, safe='')}/limits"


def _print(value: Any) -> int:
    print(json.dumps(value, indent=2, sort_keys=True))
    return 0

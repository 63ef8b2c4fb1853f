"""What `router limits patch ORG` sends (the command is in ops_cli.py): a JSON
Merge Patch (RFC 7396), built from ``--set path=value`` pairs or read from a JSON file, so what it
does not name is kept (``PUT`` would replace the whole object)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
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


def patch_body(args: argparse.Namespace) -> dict[str, Any]:
    """The merge patch of `router limits patch`: its ``--file`` (JSON) or its ``--set`` pairs."""
    try:
        body = json.loads(args.file.read_text(encoding="utf-8")) if args.file else merge_patch_of(args.set)
    except ValueError as exc:
        raise SystemExit(f"router: {exc}") from None
    if not isinstance(body, dict):
        raise SystemExit("router: a merge patch of limits is a JSON object")
    return body


def add_patch_arguments(patch: argparse.ArgumentParser) -> None:
    given = patch.add_mutually_exclusive_group(required=True)
    given.add_argument("--set", action="append", metavar="PATH=VALUE", help="repeat; null removes")
    given.add_argument("--file", type=Path, help="a JSON merge patch document")

"""`router policy dump` and `router policy apply FILE`: the routing config, over the admin API.

The file is the runtime-config YAML (backends with their credential references, models,
backend_states, org_limits). Apply writes backends first, then model policies, backend states and
limits, so every step leaves a valid config on every replica. What the admin API cannot take (API
keys given by their hashes, unknown sections) is refused, with the list, before anything is written:
`router config apply` writes such a file to the config source directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from router_impl.cli.admin_client import AdminClient
from router_impl.cli.ops import show, table

BACKEND_FIELDS = (
    "base_url",
    "protocol",
    "models",
    "timeout_ms",
    "connect_timeout_ms",
    "max_in_flight",
    "health_check",
    "labels",
)
WRITE_ONLY_FIELDS = ("api_key_env", "api_key_file")  # credential references: applied, never dumped
SECTIONS = ("backends", "models", "backend_states", "org_limits")


def dump(client: AdminClient) -> dict[str, Any]:
    """The applied routing config as a runtime-config document (status-only fields left out)."""
    backends = client.request("GET", "/v1/admin/backends")["items"]
    models = client.request("GET", "/v1/admin/models")["items"]
    states = {
        b["id"]: {"state": b["state"], "reason": b.get("state_reason", "")}
        for b in backends
        if b.get("state", "healthy") != "healthy"
    }
    document: dict[str, Any] = {
        "backends": [{"id": b["id"], **{k: b[k] for k in BACKEND_FIELDS if k in b}} for b in backends],
        "models": models,
    }
    if states:
        document["backend_states"] = states
    return document


def unappliable(document: dict[str, Any]) -> list[str]:
    """What of ``document`` the admin API cannot apply (nothing may be dropped silently)."""
    problems = [
        f"{section}: not applied through the admin API (use `router config apply`)"
        for section in document
        if section not in SECTIONS
    ]
    for backend in document.get("backends") or []:
        extra = sorted(set(backend) - {"id", *BACKEND_FIELDS, *WRITE_ONLY_FIELDS})
        if extra:
            problems.append(f"backends.{backend.get('id')}: unknown field(s) {', '.join(extra)}")
    return problems


def apply(client: AdminClient, document: dict[str, Any]) -> list[dict[str, str]]:
    """PUT every object of ``document``; returns one row (kind, id) per object written."""
    done: list[dict[str, str]] = []
    for backend in document.get("backends") or []:
        body = {k: v for k, v in backend.items() if k in BACKEND_FIELDS or k in WRITE_ONLY_FIELDS}
        client.request("PUT", f"/v1/admin/backends/{_quote(backend['id'])}", body)
        done.append({"kind": "backend", "id": backend["id"]})
    for policy in document.get("models") or []:
        client.request("PUT", f"/v1/admin/models/{_quote(policy['model'])}", policy)
        done.append({"kind": "model", "id": policy["model"]})
    for backend_id, state in (document.get("backend_states") or {}).items():
        body = {"state": state["state"], "reason": state.get("reason") or "set by router policy apply"}
        client.request("POST", f"/v1/admin/backends/{_quote(backend_id)}/state", body)
        done.append({"kind": "backend state", "id": f"{backend_id}={state['state']}"})
    for org, limits in (document.get("org_limits") or {}).items():
        client.request("PUT", f"/v1/admin/orgs/{_quote(org)}/limits", limits)
        done.append({"kind": "limits", "id": org})
    return done


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def run_dump(client: AdminClient, args: argparse.Namespace) -> int:
    """The runtime-config YAML ``apply`` takes (a document to keep and diff), or with ``--json`` JSON."""
    document = dump(client)
    text = json.dumps(document, indent=2) + "\n" if args.json else yaml.safe_dump(document, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


def run_apply(client: AdminClient, args: argparse.Namespace) -> int:
    document = yaml.safe_load(Path(args.file).read_text(encoding="utf-8")) or {}
    if not isinstance(document, dict):
        raise SystemExit(f"router: {args.file} is not a runtime-config mapping")
    problems = unappliable(document)
    if problems:
        print(
            f"router: {args.file} cannot be applied through the admin API; nothing was written:",
            file=sys.stderr,
        )
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    return show(
        {"applied": apply(client, document)}, args.json, lambda r: table(r["applied"], ("kind", "id"))
    )

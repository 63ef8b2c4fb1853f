"""`router policy dump` and `router policy apply FILE`: the routing config, over the admin API.

The file is the runtime-config YAML (backends, models, backend_states); keys are managed with
`router keys`. Apply writes backends first, then model policies, then backend states, so every
step leaves a valid config on every replica.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from router_impl.admin_client import AdminClient

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


def apply(client: AdminClient, document: dict[str, Any]) -> list[str]:
    """PUT every object of ``document``; returns one line per object written."""
    done: list[str] = []
    for backend in document.get("backends") or []:
        body = {k: v for k, v in backend.items() if k in BACKEND_FIELDS}
        client.request("PUT", f"/v1/admin/backends/{_quote(backend['id'])}", body)
        done.append(f"backend {backend['id']}")
    for policy in document.get("models") or []:
        client.request("PUT", f"/v1/admin/models/{_quote(policy['model'])}", policy)
        done.append(f"model {policy['model']}")
    for backend_id, state in (document.get("backend_states") or {}).items():
        body = {"state": state["state"], "reason": state.get("reason") or "set by router policy apply"}
        client.request("POST", f"/v1/admin/backends/{_quote(backend_id)}/state", body)
        done.append(f"backend state {backend_id}={state['state']}")
    return done


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def run_dump(client: AdminClient, args: argparse.Namespace) -> int:
    text = yaml.safe_dump(dump(client), sort_keys=False)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


def run_apply(client: AdminClient, args: argparse.Namespace) -> int:
    document = yaml.safe_load(Path(args.file).read_text(encoding="utf-8")) or {}
    if not isinstance(document, dict):
        raise SystemExit(f"router: {args.file} is not a runtime-config mapping")
    if document.get("api_keys"):
        print("router: api_keys in the file are ignored; manage keys with `router keys`")
    for line in apply(client, document):
        print(f"applied {line}")
    print(json.dumps({"applied": True}))
    return 0

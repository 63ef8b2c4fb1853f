"""The contract on the wire: ``GET /openapi.json`` (the bundled generated spec) and ``GET /docs`` (Swagger
UI from the swagger-ui-bundle package: no CDN, no network). The pages are built on their first request,
not at start-up (parsing the spec costs a busy event loop seconds); any other request passes through
untouched. It sits behind the fast lane, so hot requests never see it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

_STATIC = {
    "swagger-ui.css": b"text/css; charset=utf-8",
    "swagger-ui-bundle.js": b"text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": b"text/javascript; charset=utf-8",
    "favicon-32x32.png": b"image/png",
}
_INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>API Router: the contract</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"});
</script>
</body>
</html>
"""

Page = tuple[bytes, bytes]  # content type, body


def read_contract(spec_path: Path) -> dict[str, Any]:
    """The contract as a document, parsed by libyaml's safe loader where PyYAML has it: ~10x less CPU
    than the pure-Python loader Connexion uses when handed the file (~0.35 s of every start)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec: dict[str, Any] = yaml.load(spec_path.read_bytes(), Loader=loader)  # noqa: S506 -- a SafeLoader
    return spec


def contract_pages(spec_path: Path, swagger_ui_dir: Path | None) -> dict[str, Page]:
    """The pages by path: the spec as JSON, and the docs page when Swagger UI's files are there."""
    spec = read_contract(spec_path)
    pages = {"/openapi.json": (b"application/json", json.dumps(spec, default=str).encode())}
    if swagger_ui_dir is not None and all((swagger_ui_dir / name).is_file() for name in _STATIC):
        pages["/docs"] = (b"text/html; charset=utf-8", _INDEX.encode())
        for name, content_type in _STATIC.items():
            pages[f"/docs/{name}"] = (content_type, (swagger_ui_dir / name).read_bytes())
    return pages


def swagger_ui_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


PATHS = frozenset({"/openapi.json", "/docs", *(f"/docs/{name}" for name in _STATIC)})


class ApiDocsMiddleware:
    def __init__(self, app: ASGIApp, *, pages: Callable[[], dict[str, Page]]) -> None:
        self.app = app
        self._build = pages
        self._pages: dict[str, Page] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PATHS or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if self._pages is None:
            self._pages = self._build()
        page = self._pages.get(scope["path"])
        if page is None:  # /docs without Swagger UI's files
            await self.app(scope, receive, send)
            return
        content_type, body = page
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"public, max-age=300"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})

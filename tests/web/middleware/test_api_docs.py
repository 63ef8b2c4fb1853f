"""An integrator reads the contract from the running router: GET /openapi.json is the bundled generated
spec and GET /docs its Swagger UI, served from the package (no CDN); ROUTER_API_DOCS=false turns both off;
the hot operations' fast lane never passes through them."""

from __future__ import annotations

import re

import pytest
import yaml
from router_contract import SPEC_PATH

from router_impl.settings import Settings
from router_impl.web.middleware.api_docs import ApiDocsMiddleware
from router_impl.web.middleware.fast_lane import FastLaneMiddleware
from tests.harness.inprocess import in_process


@pytest.fixture
async def router(tmp_path):
    async with in_process(Settings(data_dir=tmp_path, access_log=False)) as running:
        yield running.app, running.client


async def test_openapi_json_is_the_bundled_contract(router):
    _, client = router
    reply = await client.get("/openapi.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == yaml.safe_load(SPEC_PATH.read_text())
    assert "/v1/chat/completions" in reply.json()["paths"]


async def test_docs_page_is_swagger_ui_served_without_any_external_url(router):
    _, client = router
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text
    assert not re.search(r"(https?:)?//[a-z]", page.text)  # no CDN: every asset comes from the router
    for asset in re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.text):
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 500, asset


async def test_other_methods_and_paths_pass_through_to_the_contract_errors(router):
    _, client = router
    reply = await client.post("/openapi.json", json={})
    assert reply.status_code in (404, 405)
    assert "code" in reply.json()
    assert (await client.get("/docs/../settings.py")).status_code == 404


async def test_the_fast_lane_is_in_front_of_the_docs(router):
    app, _ = router
    layer = app
    order = []
    while hasattr(layer, "app"):
        order.append(type(layer))
        layer = layer.app
    assert order.index(FastLaneMiddleware) < order.index(ApiDocsMiddleware)


async def test_api_docs_off_answers_404_in_the_error_shape(tmp_path):
    async with in_process(Settings(data_dir=tmp_path, access_log=False, api_docs=False)) as running:
        for path in ("/openapi.json", "/docs"):
            reply = await running.client.get(path)
            assert reply.status_code == 404
            assert reply.json()["code"]

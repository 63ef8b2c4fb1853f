"""Validates httpx exchanges against the bundled contract with openapi-core."""

from __future__ import annotations

from functools import cache
from urllib.parse import parse_qs

import httpx
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from router_contract import SPEC_PATH
from werkzeug.datastructures import Headers, ImmutableMultiDict


@cache
def contract() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


class _Request:
    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(request.url.query.decode())),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )

    @property
    def host_url(self) -> str:
        return f"{self._request.url.scheme}://{self._request.url.netloc.decode()}"

    @property
    def path(self) -> str:
        return self._request.url.path

    @property
    def method(self) -> str:
        return self._request.method.lower()

    @property
    def body(self) -> bytes | None:
        return self._request.content or None

    @property
    def content_type(self) -> str:
        return self._request.headers.get("content-type", "")


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def data(self) -> bytes:
        return self._response.content

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def content_type(self) -> str:
        return self._response.headers.get("content-type", "")

    @property
    def headers(self) -> Headers:
        return Headers(dict(self._response.headers))


def assert_conforms(response: httpx.Response) -> None:
    """Raises when the response is not one the contract documents for this operation."""
    contract().validate_response(_Request(response.request), _Response(response))

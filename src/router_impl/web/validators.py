"""Request body validation with the generated pydantic models (validator_map).

Each request-body component in the bundled spec names its generated model (``x-router-model``,
added by tools/codegen.py). The model validates the raw bytes once, in strict mode (~5 µs, where
Connexion's per-request Draft4 jsonschema validation costs ~150 µs), through ``intake.accept_body``
as on the fast lane; the parsed document is kept in the request state, so handlers read it
without parsing the body again. An optional body may be
absent (Connexion would reject it as empty). Bodies without a model fall back to jsonschema.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import router_contract.models as contract_models
from connexion.datastructures import MediaTypeDict
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator
from pydantic import BaseModel, ValidationError
from starlette.types import Scope

from router_impl.errors import ApiError
from router_impl.web.intake import accept_body
from router_impl.web.parameter_validator import ReadableParameterValidator
from router_impl.web.request_state import state_of

BODY_MODEL_KEY = "x-router-model"
_MAX_DETAILS = 10
_FORMATS = jsonschema.Draft4Validator.FORMAT_CHECKER


# pydantic names a union's branch in an error's location: a generated class (``ChatMessageContent1``)
# or a type tag (``str``, ``list[...]``, ``function-after[...]``). Clients know the contract's field
# names only, so the location keeps those.
_MODEL_NAMES = frozenset(name for name, value in vars(contract_models).items() if isinstance(value, type))
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|constrained-[a-z]+|[a-z][a-z-]*\[.*\])$")


def _field(location: tuple[int | str, ...]) -> str:
    parts = (
        str(part)
        for part in location
        if not isinstance(part, str) or (part not in _MODEL_NAMES and not _TYPE_TAG.match(part))
    )
    return ".".join(["body", *parts])


def _message(error: Any) -> str:
    """pydantic's message, without the schema's regular expression for a pattern mismatch."""
    if error["type"] == "string_pattern_mismatch":
        return "String does not have the format this field requires"
    return str(error["msg"])


def validation_error(exc: ValidationError) -> ApiError:
    """Errors name the offending fields; neither input values nor schema fragments are echoed back."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    details = [{"field": _field(e["loc"]), "message": _message(e)} for e in errors[:_MAX_DETAILS]]
    first = details[0]
    return ApiError("VALIDATION_ERROR", f"{first['field']}: {first['message']}", details=details)


class ModelBodyValidator(JSONRequestBodyValidator):  # type: ignore[misc]
    def __init__(self, *, schema: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(schema=schema, **kwargs)
        name = schema.get(BODY_MODEL_KEY)
        model = getattr(contract_models, name, None) if isinstance(name, str) else None
        self._model: type[BaseModel] | None = model if isinstance(model, type) else None

    async def _parse(self, stream: AsyncGenerator[bytes, None], scope: Scope) -> Any:
        raw = b"".join([chunk async for chunk in stream])
        if self._model is None:
            return await super()._parse(_replay(raw), scope)
        if not raw:
            return None
        try:
            return accept_body(self._model, raw, state_of(scope))
        except ValidationError as exc:
            raise validation_error(exc) from None

    def _validate(self, body: Any) -> dict[str, Any] | None:
        if body is None and not self._required:
            return None
        if self._model is not None:
            if body is None:
                raise ApiError("VALIDATION_ERROR", "A request body is required.")
            return None  # validated in _parse, against the raw bytes
        result: dict[str, Any] | None = super()._validate(body)
        return result


async def _replay(raw: bytes) -> AsyncGenerator[bytes, None]:
    yield raw


VALIDATORS: dict[str, Any] = {
    **VALIDATOR_MAP,
    "parameter": ReadableParameterValidator,
    "body": MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": ModelBodyValidator}),
}

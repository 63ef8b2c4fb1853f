"""Query, path and header parameter errors that say which parameter is wrong and what it accepts
(``query parameter 'action' must be one of ...``), instead of jsonschema's multi-line dump."""

from __future__ import annotations

import copy
from typing import Any

from connexion.utils import is_null, is_nullable
from connexion.validators.parameter import ParameterValidator
from jsonschema import (  # type: ignore[import-untyped]  # Connexion's own validator (no stubs pinned)
    Draft4Validator,
    ValidationError,
)

from router_impl.errors import ApiError

_FORMATS = {"date-time": "an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z", "uuid": "a UUID"}
_TYPES = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string"}


def expectation(error: ValidationError) -> str:
    """What the parameter accepts, from the failed schema keyword; never the rejected value."""
    keyword, limit = error.validator, error.validator_value
    if keyword == "enum":
        return "must be one of " + ", ".join(str(v) for v in limit)
    if keyword == "type":
        return f"must be {_TYPES.get(str(limit), str(limit))}"
    if keyword == "minimum":
        return f"must be at least {limit}"
    if keyword == "maximum":
        return f"must be at most {limit}"
    if keyword == "minLength":
        return f"must be at least {limit} characters long"
    if keyword == "maxLength":
        return f"must be at most {limit} characters long"
    if keyword == "format":
        return f"must be {_FORMATS.get(str(limit), str(limit))}"
    if keyword == "pattern":  # the regular expression is the contract's, not the client's business
        return "does not have the format this parameter requires"
    return f"is not valid ({keyword})"


class ReadableParameterValidator(ParameterValidator):  # type: ignore[misc]
    @staticmethod
    def validate_parameter(
        parameter_type: str, value: Any, param: dict[str, Any], param_name: str | None = None
    ) -> str | None:
        if value is None or (is_nullable(param) and is_null(value)):
            return ParameterValidator.validate_parameter(parameter_type, value, param, param_name)  # type: ignore[no-any-return]
        schema = copy.deepcopy(param.get("schema", param))
        try:
            Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER).validate(value)
        except ValidationError as exc:
            name = param_name or param.get("name", "?")
            message = f"{parameter_type} parameter '{name}' {expectation(exc)}"
            raise ApiError(
                "VALIDATION_ERROR",
                message,
                details=[{"field": f"{parameter_type}.{name}", "message": message}],
            ) from None
        return None

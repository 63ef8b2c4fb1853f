"""Request body validation: Connexion's JSON validator, except that an optional body may be absent.

Connexion rejects an empty body on an operation whose requestBody is optional ("Request body must
not be empty"); the contract says it may be left out (e.g. revokeApiKey's reason).
"""

from __future__ import annotations

from typing import Any

from connexion.datastructures import MediaTypeDict
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator


class OptionalAwareJSONBodyValidator(JSONRequestBodyValidator):  # type: ignore[misc]
    def _validate(self, body: Any) -> dict[str, Any] | None:
        if body is None and not self._required:
            return None
        result: dict[str, Any] | None = super()._validate(body)
        return result


VALIDATORS: dict[str, Any] = {
    **VALIDATOR_MAP,
    "body": MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": OptionalAwareJSONBodyValidator}),
}

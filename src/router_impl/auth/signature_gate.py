"""The signature policy for an authenticated key: who must sign, how, and with which secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from router_impl.auth.authenticator import Principal
from router_impl.auth.secret_box import SecretBox, SecretBoxError
from router_impl.auth.signing import BodySignature, SignatureVerifier
from router_impl.errors import ApiError


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a signature covers, as received. ``path`` is the URL path without the query string.

    ``payload_signature`` is the ``hmac_signature`` of a /v1/inference body, the contract's
    alternative to the headers (``signing.body_signature_of`` extracts it).
    """

    method: str
    path: str
    body: bytes = field(repr=False)
    timestamp_header: str | None = None
    signature_header: str | None = None
    payload_signature: BodySignature | None = field(default=None, repr=False)


class SignatureGate:
    """Keys with ``signature_required`` must sign (headers, or the payload field on /v1/inference).

    Signature material sent with any key is checked, so a wrong signature never passes silently;
    a key without a signing secret cannot sign, so material sent with it is refused.
    """

    def __init__(self, secret_box: SecretBox, verifier: SignatureVerifier, log: Any = None) -> None:
        self._box = secret_box
        self._verifier = verifier
        self._log = log if log is not None else structlog.get_logger("router.auth")

    async def verify(self, principal: Principal, request: SignedRequest) -> None:
        sent_headers = request.timestamp_header is not None or request.signature_header is not None
        if not (principal.signature_required or sent_headers or request.payload_signature is not None):
            return
        if sent_headers or request.payload_signature is None:
            await self._verifier.verify_headers(
                principal.key_id,
                self._signing_secret(principal),
                request.method,
                request.path,
                request.body,
                request.timestamp_header,
                request.signature_header,
            )
        if request.payload_signature is not None:  # checked whenever sent, headers or not
            await self._verifier.verify_body(
                principal.key_id, self._signing_secret(principal), request.payload_signature
            )

    def _signing_secret(self, principal: Principal) -> bytes:
        if principal.signing_secret_enc is None:
            if principal.signature_required:  # misconfigured key: refuse rather than skip the check
                self._log.error("signing_secret_absent", key_id=principal.key_id)
            raise ApiError("SIGNATURE_INVALID", "This API key has no signing secret.")
        try:
            return self._box.decrypt(principal.signing_secret_enc, context=principal.key_id).encode()
        except SecretBoxError:
            # The master key changed or the record was altered: an operator problem, not the client's.
            self._log.error("signing_secret_unreadable", key_id=principal.key_id)
            raise ApiError("INTERNAL_ERROR") from None

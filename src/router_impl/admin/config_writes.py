"""One audited write to the config source: the source's errors mapped to the contract's codes.

Every admin change of a config object (backend, backend state, model policy, organisation limits)
goes through ``ConfigWriter.write``: it runs the write, answers a refusal with the contract's error
(the per-operation ``invalid_as`` / ``conflict_as`` let an operation that does not document 409 answer
otherwise), logs ``policy_update`` and records a ``POLICY_UPDATE`` audit event at the injected clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, ValidationError

from router_impl.admin.audit_trail import Caller, RecordAudit, record_change
from router_impl.config.layout import object_key, summary
from router_impl.config.source import (
    ConfigConflict,
    ConfigInvalid,
    ObjectKind,
    ObjectNotFound,
    SourceUnavailable,
)
from router_impl.errors import ApiError

MESSAGE_MAX = 2000


class ConfigWrites(Protocol):
    """The config service's writes: each returns the source's new revision."""

    async def put(self, kind: ObjectKind, object_id: str, obj: BaseModel, *, wait: float = 2.0) -> int: ...

    async def delete(self, kind: ObjectKind, object_id: str, *, wait: float = 2.0) -> int: ...


def invalid_object(exc: ValidationError) -> ApiError:
    """An object the config model refuses: 400 with pydantic's summary."""
    return ApiError("VALIDATION_ERROR", f"Invalid object: {summary(exc)}"[:MESSAGE_MAX])


def problem_details(problems: dict[str, str]) -> list[dict[str, str]]:
    return [{"field": key[:256], "message": reason[:1000]} for key, reason in sorted(problems.items())][:100]


class ConfigWriter:
    """Audited, error-mapped writes to the config source."""

    def __init__(
        self, *, writes: ConfigWrites, record_audit: RecordAudit, now: Callable[[], datetime]
    ) -> None:
        self.writes = writes
        self.record_audit = record_audit
        self.now = now

    async def write(
        self,
        caller: Caller,
        action: str,
        kind: ObjectKind,
        object_id: str,
        call: Callable[[], Awaitable[int]],
        *,
        invalid_as: str = "CONFLICT",
        conflict_as: str = "CONFLICT",
    ) -> int:
        """Run one source write (``call``); returns the new revision."""
        try:
            revision = await call()
        except ObjectNotFound as exc:
            raise ApiError("NOT_FOUND", f"No {kind} object {object_id!r} in the config source.") from exc
        except ConfigInvalid as exc:
            listed = "; ".join(f"{k}: {v}" for k, v in sorted(exc.problems.items()))
            message = f"The change would make the runtime config invalid: {listed}"[:MESSAGE_MAX]
            raise ApiError(invalid_as, message, details=problem_details(exc.problems)) from exc
        except ConfigConflict as exc:
            raise ApiError(conflict_as, str(exc)[:MESSAGE_MAX]) from exc
        except SourceUnavailable as exc:
            raise ApiError(
                "SERVICE_UNAVAILABLE", f"The config source is unavailable: {exc}"[:MESSAGE_MAX]
            ) from exc
        key = object_key(kind, object_id)
        event = caller.event(
            "POLICY_UPDATE",
            f"{action} {key}",
            self.now(),
            organization_id=object_id if kind == "limits" else "",
            metadata={"kind": kind, "id": object_id[:512], "action": action, "revision": str(revision)},
        )
        await record_change(
            self.record_audit,
            event,
            "policy_update",
            kind=kind,
            id=object_id,
            key=key,
            action=action,
            revision=revision,
        )
        return revision

    async def put(
        self,
        caller: Caller,
        action: str,
        kind: ObjectKind,
        object_id: str,
        obj: BaseModel,
        *,
        invalid_as: str = "CONFLICT",
        conflict_as: str = "CONFLICT",
    ) -> int:
        return await self.write(
            caller,
            action,
            kind,
            object_id,
            lambda: self.writes.put(kind, object_id, obj),
            invalid_as=invalid_as,
            conflict_as=conflict_as,
        )

    async def delete(
        self,
        caller: Caller,
        kind: ObjectKind,
        object_id: str,
        *,
        invalid_as: str = "CONFLICT",
        conflict_as: str = "CONFLICT",
    ) -> int:
        return await self.write(
            caller,
            "delete",
            kind,
            object_id,
            lambda: self.writes.delete(kind, object_id),
            invalid_as=invalid_as,
            conflict_as=conflict_as,
        )

"""Ids for records and events: unique, not secret."""

from __future__ import annotations

import functools
import random
import uuid


def random_uuid4() -> uuid.UUID:
    """A version-4 UUID from the stdlib generator (seeded from os.urandom, reseeded in forked
    children). Usage record and audit event ids must be unique, not unguessable, and ``uuid4()``
    costs a getrandom syscall per id on the hot path (two per request)."""
    return uuid.UUID(int=random.getrandbits(128), version=4)


# Namespace of the UUIDv5 ids that stand in for ids which are not UUIDs (config-declared key ids,
# clients' X-Request-IDs) where the platform's usage-record schema requires a UUID. Never change it:
# consumers join records on these ids.
RECORD_ID_NAMESPACE = uuid.UUID("6f1b3f52-94c4-5a0e-9a7d-2b8e61c4d0a3")


def as_uuid(value: str) -> str | None:
    """``value`` unchanged when it is a UUID in its 8-4-4-4-12 form, else None."""
    if len(value) != 36 or any(value[i] != "-" for i in (8, 13, 18, 23)):
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return None
    return value


@functools.lru_cache(maxsize=1024)  # key ids repeat on every request; a UUIDv5 is a SHA-1 (~5 us)
def uuid_for(value: str) -> str:
    """``value`` itself when it is a UUID, else its deterministic UUIDv5 (same input, same id)."""
    return as_uuid(value) or str(uuid.uuid5(RECORD_ID_NAMESPACE, value))

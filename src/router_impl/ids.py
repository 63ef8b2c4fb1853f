"""Ids for records and events: unique, not secret."""

from __future__ import annotations

import random
import uuid


def random_uuid4() -> uuid.UUID:
    """A version-4 UUID from the stdlib generator (seeded from os.urandom, reseeded in forked
    children). Usage record and audit event ids must be unique, not unguessable, and ``uuid4()``
    costs a getrandom syscall per id on the hot path (two per request)."""
    return uuid.UUID(int=random.getrandbits(128), version=4)

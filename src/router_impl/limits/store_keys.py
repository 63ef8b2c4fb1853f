"""Limit store key names: one organisation's buckets, budget counters, lockout and leases.

Every key carries the organisation as its Redis Cluster hash tag (``{org}``), so one admit touches
one slot. The names are the store's contract with itself across releases: a changed name is a
reset counter."""

from __future__ import annotations

from router_impl.limits.periods import PeriodWindow
from router_impl.limits.store import BucketOwner, Unit


def bucket_key(org_id: str, owner: BucketOwner, key_id: str | None, kind: str) -> str:
    """``rl:{org}:org:<kind>`` or ``rl:{org}:key:<key id>:<kind>``."""
    holder = "org" if owner == "org" else f"key:{key_id}"
    return f"rl:{{{org_id}}}:{holder}:{kind}"


def key_bucket_prefix(org_id: str) -> str:
    """What every key bucket of the organisation starts with."""
    return f"rl:{{{org_id}}}:key:"


def key_bucket_name(store_key: str) -> str:
    """``rl:{org}:key:<id>:<kind>`` -> ``key_bucket:<id>:<kind>`` (what an admin reset reports)."""
    _, _, rest = store_key.partition(":key:")
    return f"key_bucket:{rest}"


def lockout_key(org_id: str) -> str:
    return f"lockout:{{{org_id}}}"


def lease_key(org_id: str) -> str:
    return f"lease:{{{org_id}}}"


def lease_held_key(org_id: str) -> str:
    return f"lease:{{{org_id}}}:held"


def counter_key(org_id: str, span: PeriodWindow, unit: Unit) -> str:
    """One budget counter of one period: a new period is a new key, so it starts at zero."""
    return f"budget:{{{org_id}}}:{span.period}:{span.label}:{unit}"

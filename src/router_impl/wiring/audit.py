"""Wiring of the audit log: Redis when shared, else LMDB in the data directory; every event is also
forwarded to the usage bus through the outbox."""

from __future__ import annotations

import time

from router_impl.lifecycle import Lifecycle, every, sync
from router_impl.settings import Settings
from router_impl.usage.audit import AuditLog, ForwardedAuditLog
from router_impl.usage.audit_lmdb import LmdbAuditLog
from router_impl.usage.audit_redis import RedisAuditLog
from router_impl.usage.wiring import UsageParts
from router_impl.wiring.shared_redis import SharedRedis


def build_audit(
    settings: Settings, lifecycle: Lifecycle, redis: SharedRedis | None, usage: UsageParts
) -> ForwardedAuditLog:
    return ForwardedAuditLog(
        _store(settings, lifecycle, redis),
        lambda key, value: usage.outbox.append(usage.audit_topic, key, value),
    )


def _store(settings: Settings, lifecycle: Lifecycle, redis: SharedRedis | None) -> AuditLog:
    retention = settings.audit_retention_seconds
    if redis is not None:
        shared = RedisAuditLog(redis.client, retention, scripts=redis.scripts)
        lifecycle.background(every(300, lambda: shared.sweep(time.time())))
        return shared
    store = LmdbAuditLog(settings.data_dir / "audit", settings.audit_map_size_bytes, retention)
    lifecycle.background(every(60, lambda: store.sweep(time.time())))
    lifecycle.on_stop(sync(store.close))
    return store

"""The admin application services over real parts: a config file, the config service, an LMDB audit
log, the embedded limit store, keys as config objects; one fixed clock (``tests.config.samples.NOW``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from router_impl.admin.audit_trail import Caller
from router_impl.auth.store_config import ConfigKeyStore
from router_impl.config.file_source import FileSource, render
from router_impl.config.holder import ConfigHolder
from router_impl.config.model import RuntimeConfig
from router_impl.config.service import ConfigService
from router_impl.limits.service import LimitsService
from router_impl.limits.store_memory import MemoryLimitStore
from router_impl.routing.backend_client import BackendClient
from router_impl.routing.health import BackendHealth
from router_impl.usage.audit import AuditEvent, AuditQuery
from router_impl.usage.audit_lmdb import LmdbAuditLog
from router_impl.wiring.admin_services import AdminServices, build_admin
from router_impl.wiring.config import ConfigParts
from tests.config.samples import NOW, clock, sample_config
from tests.harness.clock import ManualClock

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@dataclass(frozen=True)
class Admin:
    services: AdminServices
    config: ConfigParts
    audit: LmdbAuditLog
    config_file: Path
    written: list[str] = field(default_factory=list)  # request ids of callers, in order

    def caller(self) -> Caller:
        """A new administrator request (its own id, so the audit log's order can be checked)."""
        self.written.append(f"req_{len(self.written) + 1}")
        return Caller("key_admin1", self.written[-1], TRACE_ID)

    async def events(self) -> list[AuditEvent]:
        """Every audit event, in the order written (all carry the one fixed instant)."""
        page = await self.audit.query(AuditQuery(organization_id=None))
        order = {request_id: i for i, request_id in enumerate(self.written)}
        return sorted(page.items, key=lambda e: order[e.request_id])


@asynccontextmanager
async def admin_services(tmp_path: Path, config: RuntimeConfig | None = None) -> AsyncIterator[Admin]:
    config_file = tmp_path / "runtime.yaml"
    config_file.write_text(render(config or sample_config()))
    holder = ConfigHolder(RuntimeConfig())
    service = ConfigService(FileSource(config_file, poll_interval=0.02), holder, None, clock=clock)
    parts = ConfigParts(holder, service)
    audit = LmdbAuditLog(tmp_path / "audit", 64 << 20, 30 * 86_400, clock=ManualClock(NOW.timestamp()))
    backends = BackendClient()
    await service.start(within=5)
    try:
        services = build_admin(
            config=parts,
            limits=LimitsService(config=holder.current, local=MemoryLimitStore(), now=clock),
            key_store=ConfigKeyStore(holder.current, service.put, secret_box=None),  # keys as config objects
            health=BackendHealth(ManualClock()),
            backends=backends,
            record_audit=audit.record,
            now=clock,
        )
        yield Admin(services, parts, audit, config_file)
    finally:
        await service.stop()
        await backends.close()
        audit.close()

"""A mock backend in its own process, so a test can SIGKILL it the way a node dies: the kernel
closes its sockets mid-request (unlike ``MockBackend.stop()``, which shuts down in good order).

``python -m tests.harness.backend_proc PORT MODEL LATENCY_MS`` serves ``MockBackend`` until killed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx

from tests.harness.backend import MockBackend
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.process import ManagedProcess

_REPO = Path(__file__).resolve().parents[2]


class BackendProcess(ManagedProcess):
    name = "mock-backend"

    def __init__(self, model: str, *, latency_ms: int = 0, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.model = model
        self.latency_ms = latency_ms
        self.port = free_port()

    @property
    def openai_base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.harness.backend_proc",
            str(self.port),
            self.model,
            str(self.latency_ms),
        ]

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "PYTHONPATH": str(_REPO)}

    def choose_new_ports(self) -> None:
        self.port = free_port()

    def is_healthy(self) -> bool:
        try:
            return httpx.get(f"http://{LOOPBACK}:{self.port}/health", timeout=0.5, trust_env=False).is_success
        except httpx.HTTPError:
            return False


def main(argv: list[str]) -> None:
    port, model, latency_ms = int(argv[0]), argv[1], int(argv[2])
    backend = MockBackend(port=port, models=(model,))
    backend.configure(latency_ms=latency_ms)
    backend.start()
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main(sys.argv[1:])

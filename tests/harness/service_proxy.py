"""A TCP proxy on loopback: a Kubernetes Service in miniature, and a network partition on demand.

Each new connection goes to the next target round-robin; a target that refuses the connection (a
killed pod) is skipped, as endpoints that fail readiness leave a Service. Bytes are piped as they come;
when a target dies, its open connections end, as clients of a killed pod see. ``partition()`` holds
every byte in both directions, on open connections and on new ones alike (connections stay open and
silent, as when packets are dropped); ``heal()`` lets them flow again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence

from tests.harness.ports import LOOPBACK
from tests.harness.threaded_server import ThreadedServer


class ServiceProxy(ThreadedServer):
    thread_name = "service-proxy"

    def __init__(self, target_ports: Sequence[int]) -> None:
        super().__init__()
        self.target_ports = tuple(target_ports)
        self.port = 0
        self._next = itertools.cycle(range(len(self.target_ports)))
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def partition(self) -> None:
        self._call(lambda flowing: flowing.clear())

    def heal(self) -> None:
        self._call(lambda flowing: flowing.set())

    def _call(self, change: Callable[[asyncio.Event], None]) -> None:
        assert self._loop is not None and self._flowing is not None
        self._loop.call_soon_threadsafe(change, self._flowing)

    async def _serve(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._connect, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        await self._flowing.wait()
        first = next(self._next)
        for offset in range(len(self.target_ports)):
            port = self.target_ports[(first + offset) % len(self.target_ports)]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer), return_exceptions=True
        )

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        finally:
            with contextlib.suppress(Exception):
                sink.close()

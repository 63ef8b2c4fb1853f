"""A server whose event loop runs on a background thread, so sync and async tests can both use it;
``AppServer`` is one serving an aiohttp app on loopback (the mock backend, budget and identity services)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from types import TracebackType
from typing import Self

from aiohttp import web

from tests.harness.ports import LOOPBACK

THREAD_TIMEOUT_S = 10.0


class ThreadedServer:
    """Subclasses implement ``_serve`` (bind and start, on the loop) and ``_shutdown`` (stop serving)."""

    thread_name = "threaded-server"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(THREAD_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(THREAD_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(THREAD_TIMEOUT_S)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class AppServer(ThreadedServer):
    """An aiohttp app (``_app``) on loopback port ``port``: 0 picks a free one, kept across a restart
    (``down``/``up``). ``_stopping`` is set at shutdown, so hanging handlers can end."""

    shutdown_timeout_s = 0.5

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.port = port
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _app(self) -> web.Application:
        raise NotImplementedError

    def down(self) -> None:
        """Close the listening socket: connections are refused until `up()`."""
        self.stop()

    def up(self) -> None:
        self.start()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = self._app()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        self.port = sock.getsockname()[1]  # a restart reuses the port picked the first time
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout_s)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def serve_until_signalled(server: ThreadedServer, what: str) -> None:
    """Run ``server`` until SIGINT or SIGTERM: the ``python -m`` entry point of a mock service."""
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # before the server thread inherits the mask
    with server:
        print(f"{what} listening on {getattr(server, 'base_url', '?')}", flush=True)
        signal.sigwait(stop_signals)

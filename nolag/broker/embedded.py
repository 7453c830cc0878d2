"""Run the broker on its own asyncio loop in a daemon thread, for tests and samples."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Union

from .config import BrokerConfig
from .server import BrokerServer, serve
from .tokens import TokenStore, load_tokens

logger = logging.getLogger("nolag.broker")

_thread_numbers = itertools.count(1)


def _url_host(host: str) -> str:
    """Bracket IPv6 literals for use in a URL."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class EmbeddedBroker:
    """A local broker in a background thread: ``start()``, use ``url``, ``stop()``.

    The port chosen at the first start (``port=0`` picks a free one) is kept across
    ``stop()``/``start()``, so a test can restart the broker where clients expect it.
    """

    def __init__(
        self,
        tokens_path: Union[str, Path, None] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_all: bool = False,
        *,
        tokens: Optional[TokenStore] = None,
        **config: Any,
    ) -> None:
        """Load the tokens now (a bad file fails here); ``config`` are BrokerConfig fields,
        e.g. ``compat="kraken"`` (frames exactly as the real broker Kraken sends them,
        docs/brokers.md) with ``lobby_forget_after=1.0``, or the connection limits."""
        self.config = BrokerConfig(**config)
        if tokens is None:
            if tokens_path is None and not allow_all:
                raise ValueError("EmbeddedBroker needs tokens_path or allow_all=True")
            tokens = load_tokens(
                tokens_path, allow_all=allow_all, default_rate_limit=self.config.default_rate_limit
            )
        elif allow_all:
            tokens = tokens.with_allow_all(True)
        self._tokens = tokens
        self.host = host
        self._port = port
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._server: Optional[BrokerServer] = None
        self._ready = threading.Event()
        self._stop_requested = threading.Event()
        self._error: Optional[BaseException] = None
        self._lock = threading.Lock()

    # -- addresses ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (0 until the first start when created with ``port=0``)."""
        return self._port

    @property
    def url(self) -> str:
        """The WebSocket URL, ``ws://host:port/ws``."""
        return f"ws://{_url_host(self.host)}:{self._port}/ws"

    @property
    def http_url(self) -> str:
        """The base URL of the REST endpoint and ``/health``."""
        return f"http://{_url_host(self.host)}:{self._port}"

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._thread is not None and self._thread.is_alive() and self._ready.is_set()

    def connection_count(self) -> int:
        """Open WebSocket connections right now (thread-safe; 0 when stopped)."""
        server = self._server
        return server.connection_count() if server is not None else 0

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Start serving; returns once listening, or raises what prevented it."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("broker already started")
            self._ready.clear()
            self._stop_requested.clear()
            self._error = None
            thread = threading.Thread(
                target=self._run, daemon=True, name=f"nolag-broker-{next(_thread_numbers)}"
            )
            self._thread = thread
            thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            error = self._error
            self.stop(timeout)
            if error is not None:
                raise error
            raise TimeoutError(f"broker did not start within {timeout} s")
        logger.info("broker listening on %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every socket, stop the loop and join the thread (idempotent)."""
        with self._lock:
            if self._thread is None:
                return
            self._stop_requested.set()
            thread, loop, event = self._thread, self._loop, self._stop_event
            if loop is not None and event is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed in between
                    loop.call_soon_threadsafe(event.set)
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"broker thread did not stop within {timeout} s")
            self._thread = None
            self._loop = None
            self._stop_event = None
            self._server = None

    def _run(self) -> None:
        """Thread body: a private loop running the server until asked to stop."""
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._main(loop))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            try:
                _cancel_remaining(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve until the stop event is set."""
        self._stop_event = asyncio.Event()
        self._loop = loop
        if self._stop_requested.is_set():  # stop() ran before the event existed
            self._stop_event.set()

        def ready(port: int, server: BrokerServer) -> None:
            self._port = port
            self._server = server
            self._ready.set()

        await serve(self._tokens, self.config, self.host, self._port, self._stop_event, ready)

    def __enter__(self) -> EmbeddedBroker:
        """Start on entering a ``with`` block."""
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Stop on leaving the ``with`` block."""
        self.stop()

    def __repr__(self) -> str:
        """Show where it listens and whether it runs."""
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.url} {state}>"


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await whatever tasks are still pending on a finished loop."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

"""The aiohttp application: ``/ws`` (the wire protocol), ``/v1/presence`` and ``/health``.

One asyncio loop owns everything. Each socket has one reader (the handler coroutine,
feeding :class:`~nolag.broker.core.BrokerCore`) and one writer task draining its
bounded :class:`~nolag.broker.outbox.Outbox`, so replies and events on a socket keep
their order and a socket that stops reading is closed (1013) instead of stalling others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any, Callable, Optional

from aiohttp import WSMsgType, web

from .codec import encode
from .config import BrokerConfig
from .core import CLOSE_POLICY, BrokerCore, Connection
from .guard import ConnectionGuard
from .outbox import Outbox
from .rest import RestPresence
from .state import Delivery
from .tokens import TokenStore

logger = logging.getLogger("nolag.broker")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
#: sent to every socket when the broker stops: clients should reconnect (RFC 6455 1012)
CLOSE_SERVICE_RESTART = 1012
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_SLOW_CONSUMER = 1013
_END_TYPES = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})
HARD_FRAME_FACTOR = 4
"""aiohttp itself refuses frames over this many times ``max_frame_bytes`` (memory guard).

Frames between the cap and the guard are read whole, then closed with 1009: the client
then reliably sees the close frame (closing while a frame is still arriving resets the
TCP connection, and the close frame can be lost)."""


def _frame_size(data: Any) -> int:
    """Size in bytes of a received binary or text payload."""
    if isinstance(data, str):
        return len(data.encode("utf-8", "surrogatepass"))
    return len(data)


class Session:
    """One open WebSocket: its protocol state, its outbox and its writer task."""

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, conn: Connection, outbox: Outbox
    ) -> None:
        """Bind the socket's parts together; the writer is started by the server."""
        self.ws = ws
        self.request = request
        self.conn = conn
        self.outbox = outbox
        self.writer: Optional[asyncio.Task[None]] = None
        self.killed = False
        self.close_reason = ""
        """The reason sent with the handler's own close frame (e.g. ``auth_timeout: ...``)."""

    async def write_loop(self) -> None:
        """Send queued frames in order until the outbox is closed and drained."""
        while True:
            frame = await self.outbox.get()
            if frame is None or self.ws.closed:
                return
            try:
                await self.ws.send_bytes(frame)
            except Exception as exc:  # the peer went away mid-write: the reader will notice
                logger.debug("%s: write failed (%s)", self.conn.conn_id, type(exc).__name__)
                return

    def abort_transport(self) -> None:
        """Drop the TCP connection at once (for peers that no longer read)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class BrokerServer:
    """Routes, sockets and deliveries around one :class:`BrokerCore`."""

    def __init__(self, tokens: TokenStore, config: Optional[BrokerConfig] = None) -> None:
        """Serve ``tokens`` with ``config``'s limits."""
        self.config = config or BrokerConfig()
        self.core = BrokerCore(tokens, self.config)
        self.rest = RestPresence(self.core)
        self._sessions: dict[str, Session] = {}
        self._count_lock = threading.Lock()
        self._open_sockets = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.guard = ConnectionGuard(
            upgrade_timeout=self.config.upgrade_timeout,
            max_connections=self.config.max_connections,
            max_per_address=self.config.max_connections_per_address,
        )

    def app(self) -> web.Application:
        """The aiohttp application with its three routes."""
        guard = self.guard

        @web.middleware
        async def request_arrived(request: web.Request, handler: Any) -> web.StreamResponse:
            guard.request_started(request.protocol)  # a complete request: no upgrade deadline
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[request_arrived])
        app.router.add_get("/ws", self.handle_ws)
        app.router.add_get("/v1/presence", self.handle_presence)
        app.router.add_get("/health", self.handle_health)
        app.on_shutdown.append(self._on_shutdown)
        return app

    def connection_count(self) -> int:
        """Open WebSocket connections; safe to call from any thread."""
        with self._count_lock:
            return self._open_sockets

    def _count(self, delta: int) -> None:
        """Adjust the open-socket counter under its lock."""
        with self._count_lock:
            self._open_sockets += delta

    def _spawn(self, coro: Any) -> None:
        """Run a background task, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- deliveries ---------------------------------------------------------------

    def deliver(self, deliveries: Iterable[Delivery]) -> None:
        """Encode each distinct frame once and queue it on its socket's outbox."""
        encoded: dict[int, bytes] = {}
        for conn_id, frame in deliveries:
            session = self._sessions.get(conn_id)
            if session is None or session.killed:
                continue
            if isinstance(frame, bytes):
                data = frame
            else:
                data = encoded.get(id(frame)) or b""
                if not data:
                    data = encoded[id(frame)] = encode(frame)
            if not session.outbox.put(data):
                self.kill(session, CLOSE_SLOW_CONSUMER, "slow consumer")

    def kill(self, session: Session, code: int, reason: str) -> None:
        """Close a socket from outside its handler, discarding what it has not read."""
        if session.killed:
            return
        session.killed = True
        level = logging.INFO if code == CLOSE_SERVICE_RESTART else logging.WARNING  # routine
        logger.log(level, "closing %s (%s)", session.conn.conn_id, reason)
        session.outbox.close(discard=True)
        if session.writer is not None:
            session.writer.cancel()
        self._spawn(self._close_then_abort(session, code, reason))

    async def _close_then_abort(self, session: Session, code: int, reason: str) -> None:
        """Send a close frame without waiting on a full buffer, then drop the connection."""
        try:
            await asyncio.wait_for(
                session.ws.close(code=code, message=reason.encode(), drain=False),
                self.config.close_timeout,
            )
        except Exception as exc:
            logger.debug("%s: close failed (%s)", session.conn.conn_id, type(exc).__name__)
        session.abort_transport()

    # -- /ws ------------------------------------------------------------------------

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """Serve one WebSocket from upgrade to close."""
        ws = web.WebSocketResponse(
            autoping=False,
            compress=False,
            max_msg_size=self.config.max_frame_bytes * HARD_FRAME_FACTOR,
            timeout=self.config.close_timeout,
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": "upgrade_required", "hint": "connect with a WebSocket client"},
                status=426,
                headers={"Upgrade": "websocket"},
            )
        await ws.prepare(request)
        conn = self.core.open(request.remote or "")
        session = Session(
            ws, request, conn, Outbox(self.config.max_outbox_bytes, self.config.max_outbox_frames)
        )
        self._sessions[conn.conn_id] = session
        self._count(+1)
        session.writer = asyncio.ensure_future(session.write_loop())
        logger.debug("%s: open from %s", conn.conn_id, request.remote)
        close_code = CLOSE_NORMAL
        try:
            close_code = await self._read_loop(session)
        except asyncio.CancelledError:
            close_code = CLOSE_GOING_AWAY
            raise
        except Exception:
            logger.exception("%s: internal error; closing with 1011", conn.conn_id)
            close_code = CLOSE_SERVER_ERROR
        finally:
            await self._finish(session, close_code)
        return ws

    async def _read_loop(self, session: Session) -> int:
        """Feed received messages to the core until the socket ends; return the close code.

        Before a successful auth, the wait is also bounded by the auth deadline
        (``auth_timeout`` from the upgrade); heartbeats do not move it.
        """
        ws, conn = session.ws, session.conn
        loop = asyncio.get_running_loop()
        auth_timeout = self.config.auth_timeout
        auth_deadline = loop.time() + auth_timeout if auth_timeout > 0 else None
        while True:
            timeout = self.config.idle_timeout
            if auth_deadline is not None:
                if conn.authenticated:
                    auth_deadline = None
                else:
                    left = auth_deadline - loop.time()
                    if left <= 0:
                        logger.info(
                            "%s: not authenticated within %g s; closing",
                            conn.conn_id,
                            auth_timeout,
                        )
                        session.close_reason = (
                            f"auth_timeout: no successful auth within {auth_timeout:g} s"
                        )
                        return CLOSE_POLICY
                    timeout = min(timeout, left)
            try:
                msg = await ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                if auth_deadline is not None and auth_deadline - loop.time() <= 0:
                    continue  # the auth deadline, reported at the top of the loop
                logger.info("%s: idle for %.1f s; closing", conn.conn_id, self.config.idle_timeout)
                return CLOSE_NORMAL
            if (
                msg.type in (WSMsgType.BINARY, WSMsgType.TEXT)
                and _frame_size(msg.data) > self.config.max_frame_bytes
            ):
                logger.info(
                    "%s: frame over %d bytes; closing with 1009",
                    conn.conn_id,
                    self.config.max_frame_bytes,
                )
                return CLOSE_TOO_BIG
            if msg.type is WSMsgType.BINARY:
                self.deliver(self.core.receive_binary(conn, msg.data))
            elif msg.type is WSMsgType.TEXT:
                self.deliver(self.core.receive_text(conn, msg.data))
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type in _END_TYPES:
                if msg.type is WSMsgType.ERROR:
                    logger.info("%s: closed on protocol error (%s)", conn.conn_id, msg.data)
                return CLOSE_NORMAL
            # PONG and anything else: activity only
            if conn.close_request is not None:
                code, session.close_reason = conn.close_request
                return code

    async def _finish(self, session: Session, close_code: int) -> None:
        """Broadcast the socket's leaves, flush what it may still read, close it."""
        conn = session.conn
        self._sessions.pop(conn.conn_id, None)
        try:
            self.deliver(self.core.close(conn))
        except Exception:
            logger.exception("%s: error while dropping presence", conn.conn_id)
        session.outbox.close(discard=session.ws.closed)
        writer = session.writer
        try:
            if writer is not None and not session.killed:
                await asyncio.wait_for(asyncio.shield(writer), self.config.close_timeout)
            if not session.ws.closed:
                reason = session.close_reason.encode("utf-8")[:123]  # RFC 6455's limit
                await session.ws.close(code=close_code, message=reason)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            session.abort_transport()
        except Exception as exc:
            logger.debug("%s: close failed (%s)", conn.conn_id, type(exc).__name__)
        finally:
            if writer is not None and not writer.done():
                writer.cancel()
            self._count(-1)
            logger.debug("%s: closed", conn.conn_id)

    async def close_all(self, code: int = CLOSE_SERVICE_RESTART) -> None:
        """Close every socket (close frame, then end of TCP) and wait briefly for handlers."""
        sessions = list(self._sessions.values())
        for session in sessions:
            self.kill(session, code, "server shutting down")
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=self.config.close_timeout + 1.0)

    async def _on_shutdown(self, app: web.Application) -> None:
        """aiohttp shutdown hook: close the sockets so their handlers can finish."""
        await self.close_all()

    # -- REST -----------------------------------------------------------------------

    async def handle_presence(self, request: web.Request) -> web.Response:
        """``GET /v1/presence[?roomId=<slug>]`` (404 in Kraken mode: Kraken has no such
        endpoint, and a 404 is what tells the SDK so)."""
        if self.config.kraken:
            return web.json_response(
                {"error": "not_found", "hint": "no REST presence endpoint in kraken mode"},
                status=404,
            )
        room = request.query.get("roomId")
        reply = self.rest.presence(request.headers.get("Authorization"), room)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    async def handle_health(self, request: web.Request) -> web.Response:
        """``GET /health``: liveness."""
        return web.json_response({"status": "ok"})


async def serve(
    tokens: TokenStore,
    config: BrokerConfig,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_ready: Callable[[int, BrokerServer], None],
) -> None:
    """Run the broker on ``host:port`` until ``stop`` is set; ``on_ready`` gets the bound port."""
    server = BrokerServer(tokens, config)
    runner = web.AppRunner(
        server.app(),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=config.close_timeout + 1.0,
        # idle HTTP keep-alive connections (REST clients) between requests
        keepalive_timeout=config.upgrade_timeout or 75.0,
    )
    await runner.setup()
    assert runner.server is not None
    server.guard.install(runner.server)
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        ports: list[int] = [addr[1] for addr in runner.addresses if isinstance(addr, tuple)]
        on_ready(ports[0] if ports else port, server)
        await stop.wait()
    finally:
        await runner.cleanup()

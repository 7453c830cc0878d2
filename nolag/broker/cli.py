"""The ``nolag broker`` / ``python -m nolag.broker`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from typing import Optional

from .config import COMPAT_LOCAL, COMPAT_MODES, DEFAULT_MAX_MESSAGE_BYTES, BrokerConfig
from .devtokens import describe, dev_token_document
from .server import BrokerServer, serve
from .tokens import TokenFileError, TokenStore, load_tokens, parse_tokens

logger = logging.getLogger("nolag.broker")

ALLOW_ALL_WARNING = (
    "ALLOW-ALL MODE: every non-empty token is accepted, every room and lobby is open. "
    "INSECURE: use it for local development only."
)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, separate so that help and errors can be tested."""
    parser = argparse.ArgumentParser(
        prog="nolag broker",
        description="Run the local NoLag-compatible broker: /ws (the wire protocol), "
        "/v1/presence (REST) and /health.",
        epilog="exit codes: 0 stopped cleanly (Ctrl-C), 1 cannot serve (e.g. the port is "
        "taken), 2 bad arguments or a bad token file",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to bind (default 8080; 0 picks a free one)"
    )
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        help="token file in the open-source broker's static-auth format (default: the "
        "built-in development tokens dev-token-alice, dev-token-bob, ...; loopback only)",
    )
    parser.add_argument(
        "--allow-all",
        action="store_true",
        help="accept every non-empty token (INSECURE; development only)",
    )
    parser.add_argument(
        "--i-know-allow-all-is-insecure",
        action="store_true",
        help="required with --allow-all on a non-loopback --host",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="close sockets silent for S seconds (default 60)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help="largest accepted message (default 921600)",
    )
    parser.add_argument(
        "--compat",
        choices=COMPAT_MODES,
        default=COMPAT_LOCAL,
        help="which broker's frames to send: 'local' (default: the real broker's plus "
        "compatible extensions) or 'kraken' (exactly as Kraken v0.4.0, quirks included)",
    )
    parser.add_argument(
        "--lobby-forget-after",
        type=float,
        default=300.0,
        metavar="S",
        help="--compat kraken: forget a lobby's rooms S seconds after its last subscribe "
        "(default 300, as Kraken)",
    )
    parser.add_argument(
        "--upgrade-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close TCP connections that send no complete HTTP request within S seconds "
        "(default 10; 0 disables)",
    )
    parser.add_argument(
        "--auth-timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="close WebSockets not authenticated within S seconds, with 1008 (default 20; "
        "0 disables)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        metavar="N",
        help="open TCP connections in total; more get HTTP 503 (default 4096; 0 unlimited)",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=int,
        default=2048,
        metavar="N",
        help="open TCP connections per remote address; more get HTTP 503 (default 2048; "
        "0 unlimited)",
    )
    parser.add_argument(
        "--max-connections-per-token",
        type=int,
        default=256,
        metavar="N",
        help="authenticated sockets per token; more are refused and closed with 4002 "
        "(default 256; 0 unlimited)",
    )
    parser.add_argument(
        "--max-auth-failures",
        type=int,
        default=20,
        metavar="N",
        help="refused auths per remote address per --auth-failure-window; past it the "
        "socket is closed with 1008 (default 20; 0 unlimited)",
    )
    parser.add_argument(
        "--auth-failure-window",
        type=float,
        default=60.0,
        metavar="S",
        help="the window of --max-auth-failures in seconds (default 60)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    return parser


async def _run(tokens: TokenStore, config: BrokerConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows has no add_signal_handler; KeyboardInterrupt then ends asyncio.run.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    def ready(bound: int, server: BrokerServer) -> None:
        url_host = f"[{host}]" if ":" in host else host
        logger.info(
            "nolag broker listening on ws://%s:%d/ws (REST at http://%s:%d)",
            url_host,
            bound,
            url_host,
            bound,
        )

    await serve(tokens, config, host, port, stop, ready)
    logger.info("nolag broker stopped")


def main(argv: Optional[list[str]] = None) -> int:
    """Parse ``argv``, run the broker until Ctrl-C; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.tokens and not args.allow_all and not is_loopback(args.host):
            parser.exit(
                2,
                f"nolag broker: error: without --tokens the broker serves the well-known "
                f"development tokens, on a loopback address only; give --tokens FILE to "
                f"serve on {args.host!r}\n",
            )
        if args.allow_all and not is_loopback(args.host) and not args.i_know_allow_all_is_insecure:
            parser.exit(
                2,
                f"nolag broker: error: --allow-all on non-loopback host "
                f"{args.host!r} needs --i-know-allow-all-is-insecure\n",
            )
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    logging.getLogger("nolag").setLevel(args.log_level)
    try:
        config = BrokerConfig(
            idle_timeout=args.idle_timeout,
            max_message_bytes=args.max_message_bytes,
            compat=args.compat,
            lobby_forget_after=args.lobby_forget_after,
            upgrade_timeout=args.upgrade_timeout,
            auth_timeout=args.auth_timeout,
            max_connections=args.max_connections,
            max_connections_per_address=args.max_connections_per_address,
            max_connections_per_token=args.max_connections_per_token,
            max_auth_failures=args.max_auth_failures,
            auth_failure_window=args.auth_failure_window,
        )
        dev = not args.tokens and not args.allow_all
        if dev:
            tokens = parse_tokens(dev_token_document())
        else:
            tokens = load_tokens(args.tokens, allow_all=args.allow_all)
    except (TokenFileError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    if args.allow_all:
        logger.warning("%s", ALLOW_ALL_WARNING)
    if dev:
        print(describe(), flush=True)
    if config.kraken:
        logger.info("compat mode 'kraken': frames as Kraken v0.4.0 sends them")
    if not is_loopback(args.host):
        logger.warning("binding %s: the broker is reachable from other machines", args.host)
    try:
        asyncio.run(_run(tokens, config, args.host, args.port))
    except KeyboardInterrupt:
        logger.info("interrupted")
    except OSError as exc:
        logger.error("cannot serve on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return 1
    return 0

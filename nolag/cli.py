"""The `nolag` console script: `nolag demo`, `nolag broker`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from nolag._version import __version__

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nolag",
        description="NoLag realtime presence from Python: a demo, a local broker, and tools.",
        epilog="exit codes: 0 ok, 1 error (bad token, unreachable server), 2 bad arguments",
    )
    parser.add_argument("--version", action="version", version=f"nolag-sync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="watch simulated people come and go on an embedded local broker",
        description="Start an embedded local broker on a free loopback port, let a few "
        "simulated actors join, change status, type and leave, and show who is online live. "
        "Needs no token and no network.",
    )
    demo.add_argument("--actors", type=int, default=5, help="simulated people, 1-10 (default 5)")
    demo.add_argument("--duration", type=_positive, help="stop after this many seconds")
    demo.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    demo.add_argument(
        "--plain", action="store_true", help="print events line by line instead of redrawing"
    )

    sub.add_parser(
        "broker",
        help="run the NoLag-compatible local broker (needs the 'broker' extra)",
        add_help=False,
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["broker"]:
        return _broker(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        if not 1 <= args.actors <= 10:
            parser.error("--actors must be between 1 and 10")
        from nolag.demo import run_demo

        try:
            return run_demo(
                actors=args.actors,
                duration=args.duration,
                seed=args.seed,
                live=False if args.plain else None,
            )
        except ImportError as exc:
            print(
                f"nolag demo: {exc}; install with: pip install 'nolag-sync[broker]'",
                file=sys.stderr,
            )
            return EXIT_ERROR
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


def _broker(argv: list[str]) -> int:
    try:
        from nolag.broker import main as broker_main
    except ImportError as exc:
        print(
            f"nolag broker: {exc}; install with: pip install 'nolag-sync[broker]'", file=sys.stderr
        )
        return EXIT_ERROR
    return broker_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

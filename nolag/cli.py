"""The `nolag` console script: `nolag presence ...`, `nolag demo`, `nolag broker`.

Errors are one line on stderr (no traceback); exit codes: 0 ok, 1 runtime error (bad
token, unreachable server, refused room), 2 usage error (bad or missing arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Optional, TextIO

if TYPE_CHECKING:  # imported late at run time: `nolag --help` stays fast
    from nolag.client import NoLag
    from nolag.events import EventName

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

EXIT_CODES = "exit codes: 0 ok, 1 error (bad token, unreachable server), 2 bad arguments"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: '<prog>: error: <what> (...)'."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Version(argparse.Action):
    """`--version`: the version, the file `import nolag` loads, and any clash (nolag.doctor).

    Computed only when asked for, so that other commands never scan the installed
    distributions.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from nolag.doctor import version_text

        sys.stdout.write(version_text() + "\n")
        parser.exit(EXIT_OK)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nolag",
        description="NoLag realtime presence from Python: a demo, a local broker, and tools.",
        epilog=EXIT_CODES,
    )
    parser.add_argument(
        "--version",
        action=_Version,
        help="print the version and which installed files 'import nolag' loads, then exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _presence_parser(sub)

    demo = sub.add_parser(
        "demo",
        help="watch simulated people come and go on an embedded local broker",
        description="Start an embedded local broker on a free loopback port, let a few "
        "simulated actors join, change status, type and leave, and show who is online live. "
        "Needs no token and no network.",
        epilog=EXIT_CODES,
    )
    demo.add_argument("--actors", type=int, default=5, help="simulated people, 1-10 (default 5)")
    demo.add_argument("--duration", type=_positive, help="stop after this many seconds")
    demo.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    demo.add_argument(
        "--plain", action="store_true", help="print events line by line instead of redrawing"
    )

    sub.add_parser(
        "doctor",
        help="check which distribution 'import nolag' loads, and warn of a name clash",
        description="Print where 'import nolag' is loaded from and every installed "
        "distribution that provides the package 'nolag'. The official asyncio NoLag SDK "
        "(distribution 'nolag') installs the same package name as nolag-sync: with both in one "
        "environment, 'import nolag' may load either. Exit status 1 when another distribution "
        "provides 'nolag', 0 otherwise.",
        epilog="exit codes: 0 no clash, 1 another distribution provides 'nolag'",
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
    if args.command == "presence":
        return _presence(args)
    if args.command == "doctor":
        from nolag.doctor import print_report

        return print_report(sys.stdout)
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


# ---------------------------------------------------------------- nolag presence


def _presence_parser(sub: Any) -> None:
    """Add `nolag presence list|watch|set` to the top-level subcommands."""
    from nolag.models import DEFAULT_URL

    common = _Parser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument(
        "--url",
        default=os.environ.get("NOLAG_URL") or DEFAULT_URL,
        help=f"broker WebSocket URL (env NOLAG_URL; default {DEFAULT_URL})",
    )
    conn.add_argument(
        "--token",
        default=os.environ.get("NOLAG_TOKEN"),
        help="actor access token (env NOLAG_TOKEN; required)",
    )
    conn.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        metavar="S",
        help="seconds to wait for the server (default 10)",
    )
    common.add_argument("--room", help="a room (slug); without one, project-level presence")
    common.add_argument("-v", "--verbose", action="store_true", help="log what the client does")

    presence = sub.add_parser(
        "presence",
        help="list, watch or set presence on a NoLag server",
        description="List who is online, watch presence change live, or announce your own.",
        epilog=EXIT_CODES,
    )
    verbs = presence.add_subparsers(dest="verb", metavar="VERB")
    listing = verbs.add_parser(
        "list",
        parents=[common],
        help="print who is online now (the server's list)",
        description="Ask the server who is online in a room (or project-wide) and print a "
        "table: who, actor id, type, status, since when, typing.",
        epilog=EXIT_CODES,
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    watch = verbs.add_parser(
        "watch",
        parents=[common],
        help="show who is online as a live table that redraws in place",
        description="Show who is online (who, status, since when, typing) and keep the table "
        "up to date as people join, change and leave. The watcher is invisible: it announces "
        "no presence and, in a room, asks the server for the room's list every --interval "
        "seconds. With --visible it is present in the room as --name with status 'watching' "
        "and gets every change as it happens (others see it). Ctrl-C stops.",
        epilog=EXIT_CODES,
    )
    watch.add_argument(
        "--visible",
        action="store_true",
        help="be present in the room (as --name, status 'watching') to get events live",
    )
    watch.add_argument("--name", default="nolag-cli", help="the name a --visible watcher announces")
    watch.add_argument(
        "--interval",
        type=_positive,
        default=1.0,
        metavar="S",
        help="seconds between two asks for a room's list when invisible (default 1)",
    )
    watch.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds")
    mode = watch.add_mutually_exclusive_group()
    mode.add_argument("--live", action="store_true", help="redraw in place (default on a terminal)")
    mode.add_argument(
        "--plain", action="store_true", help="print one line per event (default otherwise)"
    )
    setter = verbs.add_parser(
        "set",
        parents=[common],
        help="announce presence data and stay present until Ctrl-C",
        description="Announce KEY=VALUE presence data (a VALUE that parses as JSON is used as "
        "such: 3, true, null, [1,2]; anything else is a string) and stay present until Ctrl-C "
        "or --duration; presence lasts as long as the connection. Example: nolag presence set "
        "--room general username=Alice status=online",
        epilog=EXIT_CODES,
    )
    setter.add_argument("data", nargs="+", metavar="KEY=VALUE", help="presence data")
    setter.add_argument("--duration", type=_positive, metavar="S", help="leave after S seconds")


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """Parse KEY=VALUE words into presence data; VALUE is JSON when it parses, else a string."""
    data: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        data[key] = value
    return data


class CommandFailed(Exception):
    """A presence command failed: `code` is the exit code, the message is one line for users."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _presence(args: argparse.Namespace) -> int:
    """Run `nolag presence VERB`; every failure ends as one line on stderr and an exit code."""
    prog = f"nolag presence {args.verb}" if args.verb else "nolag presence"
    if args.verb is None:
        print(
            f"{prog}: error: give a verb: list, watch or set (see '{prog} --help')", file=sys.stderr
        )
        return EXIT_USAGE
    logging.getLogger("nolag").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    try:
        if not args.token:
            raise CommandFailed("no token: give --token or set NOLAG_TOKEN", EXIT_USAGE)
        if args.verb == "list":
            return presence_list(args, sys.stdout)
        if args.verb == "watch":
            return presence_watch(args, sys.stdout)
        return presence_set(args, sys.stdout)
    except CommandFailed as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        if sys.stdout.isatty():  # end the line holding the terminal's "^C", for the prompt
            sys.stdout.write("\n")
            sys.stdout.flush()
        return EXIT_OK


def _client(args: argparse.Namespace) -> NoLag:
    """A NoLag client for the arguments (imported late: `nolag --help` stays fast)."""
    from nolag.client import NoLag

    try:
        return NoLag(args.token, url=args.url, connect_timeout=args.timeout, reconnect_max_delay=5)
    except (TypeError, ValueError) as exc:
        raise CommandFailed(str(exc), EXIT_USAGE) from None


def _connect(client: Any, args: argparse.Namespace) -> None:
    """Connect, turning the client's errors into one-line failures."""
    from nolag.errors import AuthenticationError, NoLagError

    try:
        client.connect(timeout=args.timeout)
    except AuthenticationError as exc:
        raise CommandFailed(f"token refused by {args.url} ({exc.reason})") from None
    except NoLagError as exc:
        raise CommandFailed(connect_failure(args.url, exc)) from None


def connect_failure(url: str, exc: BaseException) -> str:
    """One line for a failed connect: what failed, where (once), and what to try.

    The client's message may already name the URL ("cannot connect to URL: reason"); it is
    not repeated. An OSError's "[Errno N] " prefix is dropped.
    """
    reason = str(exc) or type(exc).__name__
    for prefix in (
        f"cannot connect to {url}: ",
        f"cannot reach {url}: ",
        f"cannot open a WebSocket to {url}: ",
    ):
        if reason.startswith(prefix):
            reason = reason[len(prefix) :]
    reason = re.sub(r"^\[Errno -?\d+\] ", "", reason)
    where = "" if url in reason else f" to {url}"
    return (
        f"cannot connect{where}: {reason}; check the URL (--url or NOLAG_URL) and that a "
        f"NoLag server is running there"
    )


def _describe_error(exc: BaseException) -> str:
    """One line for an error the server or the client reported."""
    from nolag.errors import AuthenticationError, ForbiddenError

    if isinstance(exc, ForbiddenError):
        return f"not allowed: {exc}"
    if isinstance(exc, AuthenticationError):
        return f"token refused ({exc.reason})"
    return str(exc) or type(exc).__name__


def presence_list(args: argparse.Namespace, out: TextIO) -> int:
    """`presence list`: the server's list for args.room as a table or JSON; raises CommandFailed."""
    from nolag.errors import NoLagError

    client = _client(args)
    try:
        _connect(client, args)
        try:
            people = client.fetch_presence(args.room, timeout=args.timeout)
        except NoLagError as exc:
            raise CommandFailed(_describe_error(exc)) from None
    finally:
        client.disconnect()
    if args.json:
        # the keys of the REST answer (GET /v1/presence)
        body = {"roomId": args.room, "actors": [p.to_dict() for p in people], "count": len(people)}
        out.write(json.dumps(body, indent=2) + "\n")  # one write: Django's stdout wrapper
    else:
        where = f"room {args.room!r}" if args.room else "the project"
        out.write("\n".join(render_table(people)) + f"\n\n{len(people)} online in {where}\n")
    return EXIT_OK


def _name(actor: Any) -> str:
    """The name to show: presence username or name, else the actor id."""
    data = actor.presence
    return str(data.get("username") or data.get("name") or actor.actor_token_id)


def render_table(
    people: Sequence[Any], first_seen: Optional[Mapping[str, float]] = None
) -> list[str]:
    """Rows of the presence table: who, actor id, type, status, since when, typing."""
    first_seen = first_seen or {}
    rows = [
        f"{'who':<16} {'actor':<16} {'type':<7} {'status':<10} {'since':<9} typing",
        "-" * 68,
    ]
    for actor in sorted(people, key=lambda a: (_name(a).lower(), a.actor_token_id)):
        data = actor.presence
        seen = actor.joined_at or first_seen.get(actor.actor_token_id)
        since = time.strftime("%H:%M:%S", time.localtime(seen)) if seen else "?"
        typing = "typing…" if data.get("isTyping") else ""
        status = str(data.get("status", ""))
        rows.append(
            f"{_name(actor)[:16]:<16} {actor.actor_token_id[:16]:<16} "
            f"{(actor.actor_type or '')[:7]:<7} {status[:10]:<10} {since:<9} {typing}".rstrip()
        )
    if not people:
        rows.append("(nobody)")
    return rows


def presence_watch(args: argparse.Namespace, out: TextIO) -> int:
    """`presence watch`: a live table (or a line per event) until args.duration or Ctrl-C.

    Invisible by default: the watcher sets no presence. Project-level presence reaches
    every connection of the project, so it is watched through events; a room's events
    reach only its members, so an invisible watcher asks the server for the room's list
    every ``args.interval`` seconds and reports the differences. ``args.visible`` makes the
    watcher a member of the room (as ``args.name``, status ``watching``) instead.
    """
    from nolag.errors import (
        AuthenticationError,
        ConnectionError,
        ForbiddenError,
        NoLagError,
        ServerError,
    )

    visible = bool(getattr(args, "visible", False))
    interval = float(getattr(args, "interval", 1.0))
    polling = bool(args.room) and not visible
    client = _client(args)
    live = args.live or (not args.plain and out.isatty())
    first_seen: dict[str, float] = {}
    known: dict[str, Any] = {}  # polling: the last list, by actor id
    changed = threading.Event()
    fatal: list[BaseException] = []
    lock = threading.Lock()

    def line(text: str) -> None:
        if not live:
            with lock:
                out.write(f"{time.strftime('%H:%M:%S')} {text}\n")
                out.flush()

    def shown(actor: Any) -> bool:
        # a visible watcher's own presence is not news; an invisible one has none, so an
        # actor with the watcher's id is someone else's connection with the same token
        return not visible or bool(actor.actor_token_id != client.actor_id)

    def joined(actor: Any) -> None:
        first_seen.setdefault(actor.actor_token_id, time.time())
        if shown(actor):
            line(f"+ {_name(actor)} joined {json.dumps(dict(actor.presence), sort_keys=True)}")
        changed.set()

    def updated(actor: Any) -> None:
        if shown(actor):
            line(f"~ {_name(actor)} updated {json.dumps(dict(actor.presence), sort_keys=True)}")
        changed.set()

    def left(actor: Any) -> None:
        first_seen.pop(actor.actor_token_id, None)
        if shown(actor):
            line(f"- {_name(actor)} left")
        changed.set()

    def is_fatal(exc: BaseException) -> bool:
        return isinstance(exc, (AuthenticationError, ForbiddenError)) or (
            isinstance(exc, ServerError) and exc.error == "unknown_topic"
        )

    def error(exc: BaseException) -> None:
        if is_fatal(exc) or isinstance(exc, ConnectionError):
            fatal.append(exc)  # the watch cannot go on: say why and stop
        changed.set()

    last_problem: list[str] = []

    def poll() -> None:
        """Fetch the room's list and report what changed since the last one."""
        try:
            people = client.fetch_presence(args.room, timeout=args.timeout)
        except NoLagError as exc:
            if is_fatal(exc):
                fatal.append(exc)
            elif [str(exc)] != last_problem:  # say it once, then keep trying
                last_problem[:] = [str(exc)]
                line(f"! {_describe_error(exc)}; trying again")
            return
        last_problem.clear()
        current = {actor.actor_token_id: actor for actor in people}
        for actor_id, actor in current.items():
            before = known.get(actor_id)
            if before is None:
                joined(actor)
            elif before.presence != actor.presence:
                updated(actor)
        for actor_id, actor in known.items():
            if actor_id not in current:
                left(actor)
        known.clear()
        known.update(current)

    if not polling:
        client.on("presence:join", joined)
        client.on("presence:update", updated)
        client.on("presence:leave", left)
    client.on("error", error)
    lifecycle: tuple[EventName, ...] = ("connect", "disconnect", "reconnect", "reconnecting")
    for event in lifecycle:
        client.on(event, lambda *_: changed.set())
    where = f"room {args.room!r}" if args.room else "the project"
    how = f"as {args.name!r} (visible)" if visible and args.room else "invisibly"
    try:
        if visible and args.room:
            client.set_presence({"username": args.name, "status": "watching"}, room=args.room)
        _connect(client, args)
        if not live:
            line(f"watching {where} on {args.url} {how} as {client.actor_id}; Ctrl-C to stop")
        deadline = None if args.duration is None else time.monotonic() + args.duration
        next_poll = time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            if polling and time.monotonic() >= next_poll:
                poll()
                next_poll = time.monotonic() + interval
            if fatal:
                raise CommandFailed(_describe_error(fatal[0]))
            if live:
                if polling:
                    members = list(known.values())
                elif args.room:
                    members = list(client.get_all_presence(args.room))
                else:
                    members = _project(client)
                people = [p for p in members if shown(p)]
                width = min(shutil.get_terminal_size((80, 24)).columns, 120)
                title = f"nolag presence watch — {where} on {args.url} ({client.status})"
                rows = [title, f"{time.strftime('%H:%M:%S')}  Ctrl-C to stop", ""]
                rows += render_table(people, first_seen)
                rows += ["", f"{len(people)} online"]
                with lock:
                    out.write("\x1b[H\x1b[2J" + "\n".join(r[:width] for r in rows) + "\n")
                    out.flush()
            changed.clear()
            wake = min(0.5, max(0.0, next_poll - time.monotonic())) if polling else 0.5
            if deadline is not None:
                wake = max(0.0, min(wake, deadline - time.monotonic()))
            changed.wait(wake)
    finally:
        client.disconnect()
    return EXIT_OK


def _project(client: Any) -> list[Any]:
    """Project-level members of the cache, one per actor."""
    seen: dict[str, Any] = {}
    for actor in client.get_all_presence():
        if actor.room is None:
            seen.setdefault(actor.actor_token_id, actor)
    return list(seen.values())


def presence_set(args: argparse.Namespace, out: TextIO) -> int:
    """`presence set`: announce KEY=VALUE data and stay present until args.duration or Ctrl-C."""
    try:
        data = parse_assignments(args.data)
    except ValueError as exc:
        raise CommandFailed(str(exc), EXIT_USAGE) from None
    client = _client(args)
    errors: list[BaseException] = []
    client.on("error", errors.append)
    try:
        try:
            client.set_presence(data, room=args.room)
        except (TypeError, ValueError) as exc:
            raise CommandFailed(str(exc), EXIT_USAGE) from None
        _connect(client, args)
        deadline = time.monotonic() + args.timeout
        me = client.actor_id
        if me is None:  # connected clients know their actor id (the auth reply)
            raise CommandFailed("the server's auth reply named no actor")
        while client.get_presence(me, args.room) is None:  # our own join, echoed
            if errors:
                raise CommandFailed(_describe_error(errors[0]))
            if time.monotonic() > deadline:
                raise CommandFailed(f"the server did not confirm the presence in {args.timeout:g}s")
            time.sleep(0.02)
        where = f"room {args.room!r}" if args.room else "the project"
        out.write(
            f"present in {where} as {client.actor_id}: {json.dumps(data, sort_keys=True)}"
            f"; Ctrl-C to leave\n"
        )
        out.flush()
        deadline_end = None if args.duration is None else time.monotonic() + args.duration
        while deadline_end is None or time.monotonic() < deadline_end:
            if errors:
                raise CommandFailed(_describe_error(errors[0]))
            time.sleep(0.1)
    finally:
        client.disconnect()
    return EXIT_OK


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

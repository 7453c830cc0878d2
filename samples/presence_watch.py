#!/usr/bin/env python3
"""Watch a room's presence: print every join, leave and update, and how many are online.

nolag broker --tokens tests/fixtures/tokens.json &
python samples/presence_watch.py --url ws://127.0.0.1:8080/ws --token dev-token-alice
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from nolag import ActorPresence, AuthenticationError, NoLag, NoLagError


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("NOLAG_URL", "ws://127.0.0.1:8080/ws"),
        help="broker WebSocket URL (env NOLAG_URL; default %(default)s)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("NOLAG_TOKEN"), help="actor token (env NOLAG_TOKEN)"
    )
    parser.add_argument("--room", default="general", help="room to watch (default %(default)s)")
    parser.add_argument("--name", default="watcher", help="the name this watcher announces")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: --token or NOLAG_TOKEN")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    client = NoLag(args.token, url=args.url)

    def online() -> str:
        return f"{len(client.get_all_presence(args.room))} online"

    def label(actor: ActorPresence) -> str:
        return str(actor.presence.get("username", actor.actor_token_id))

    @client.on("presence:join")
    def joined(actor: ActorPresence) -> None:
        print(f"+ {label(actor)} joined {dict(actor.presence)} — {online()}", flush=True)

    @client.on("presence:update")
    def updated(actor: ActorPresence) -> None:
        print(f"~ {label(actor)} updated {dict(actor.presence)} — {online()}", flush=True)

    @client.on("presence:leave")
    def left(actor: ActorPresence) -> None:
        print(f"- {label(actor)} left — {online()}", flush=True)

    try:
        client.connect(timeout=10)
    except AuthenticationError as exc:
        print(f"presence_watch: token refused: {exc.reason}", file=sys.stderr)
        return 1
    except NoLagError as exc:
        print(f"presence_watch: {exc}", file=sys.stderr)
        return 1
    try:
        client.set_presence({"username": args.name, "status": "watching"}, room=args.room)
        print(f"watching room {args.room!r} on {args.url} as {client.actor_id}", flush=True)
        client.wait(timeout=args.duration)  # until disconnected, the duration, or Ctrl-C
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            print()  # end the line holding the terminal's "^C"
    finally:
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())

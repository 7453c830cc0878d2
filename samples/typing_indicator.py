#!/usr/bin/env python3
"""A debounced typing indicator: isTyping goes true on keystrokes, false after a pause.

Each line you type counts as keystrokes for a nolag.TypingIndicator: presence says
isTyping=true at most once per --min-interval seconds while you type, and isTyping=false
after --idle seconds without one; the base fields (username, status) are always kept.

    nolag broker --tokens tests/fixtures/tokens.json &
    python samples/typing_indicator.py --token dev-token-bob --name Bob
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from nolag import NoLag, NoLagError, TypingIndicator


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NOLAG_URL", "ws://127.0.0.1:8080/ws"))
    parser.add_argument("--token", default=os.environ.get("NOLAG_TOKEN"))
    parser.add_argument("--room", default="general")
    parser.add_argument("--name", default="someone", help="username to announce")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds before typing stops")
    parser.add_argument("--min-interval", type=float, default=1.0, help="seconds between updates")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: --token or NOLAG_TOKEN")

    client = NoLag(args.token, url=args.url)

    @client.on("presence:update")
    def show(actor: Any) -> None:
        if actor.actor_token_id != client.actor_id and "isTyping" in actor.presence:
            name = actor.presence.get("username", actor.actor_token_id)
            state = "is typing…" if actor.presence["isTyping"] else "stopped typing"
            print(f"[{name} {state}]", flush=True)

    try:
        client.connect(timeout=10)
    except NoLagError as exc:
        print(f"typing_indicator: {exc}", file=sys.stderr)
        return 1
    room = client.set_room(args.room)
    room.set_presence({"username": args.name, "status": "online", "isTyping": False})
    typing = TypingIndicator(room, idle=args.idle, min_interval=args.min_interval)
    print(f"in room {args.room!r} as {args.name}; type lines, Ctrl-D to quit", flush=True)
    try:
        for _line in sys.stdin:
            typing.keystroke()
        typing.stop()
    except KeyboardInterrupt:
        pass
    finally:
        typing.stop()
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())

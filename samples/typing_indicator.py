#!/usr/bin/env python3
"""A debounced typing indicator: isTyping goes true on keystrokes, false after a pause.

Each line you type counts as keystrokes. Presence says isTyping=true at most once per
--min-interval seconds while you type, and isTyping=false after --idle seconds without
one; the base fields (username, status) are always kept.

    nolag broker --tokens tests/fixtures/tokens.json &
    python samples/typing_indicator.py --token dev-token-bob --name Bob
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any, Optional

from nolag import NoLag, NoLagError


class Typing:
    """Debounces keystrokes into isTyping presence updates (thread-safe)."""

    def __init__(
        self, client: NoLag, base: dict[str, Any], room: str, idle: float, min_interval: float
    ) -> None:
        self.client, self.base, self.room = client, base, room
        self.idle, self.min_interval = idle, min_interval
        self._lock = threading.Lock()
        self._typing = False
        self._last_sent = 0.0
        self._timer: Optional[threading.Timer] = None

    def keystroke(self) -> None:
        """Note a keystroke: announce typing (rate-limited) and restart the idle timer."""
        with self._lock:
            now = time.monotonic()
            if not self._typing or now - self._last_sent >= self.min_interval:
                self._typing = True
                self._last_sent = now
                self.client.set_presence({**self.base, "isTyping": True}, room=self.room)
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.idle, self.stop)
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        """Announce that typing stopped (idempotent)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._typing:
                self._typing = False
                self.client.set_presence({**self.base, "isTyping": False}, room=self.room)


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
    base = {"username": args.name, "status": "online"}
    client.set_presence({**base, "isTyping": False}, room=args.room)
    typing = Typing(client, base, args.room, args.idle, args.min_interval)
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

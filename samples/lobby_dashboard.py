#!/usr/bin/env python3
"""Who is online across the rooms of a lobby, live, without joining any of them.

nolag broker --tokens tests/fixtures/tokens.json &
python samples/lobby_dashboard.py --token dev-token-carol --lobby main
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Optional

from nolag import ActorPresence, ForbiddenError, NoLag, NoLagError


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NOLAG_URL", "ws://127.0.0.1:8080/ws"))
    parser.add_argument("--token", default=os.environ.get("NOLAG_TOKEN"), help="actor token")
    parser.add_argument("--lobby", default="main", help="lobby to watch (default %(default)s)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--plain", action="store_true", help="print changes instead of redrawing")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: --token or NOLAG_TOKEN")
    return args


def table(rooms: Mapping[str, Mapping[str, ActorPresence]]) -> str:
    """One block per room (lobby.by_room(): {room: {actor_id: ActorPresence}}): its people
    and their status."""
    out = []
    for room in sorted(rooms):
        members = rooms[room]
        out.append(f"{room} ({len(members)})")
        for actor_id in sorted(members):
            data = members[actor_id].presence
            name = data.get("username", actor_id)
            out.append(f"  {name:<14} {data.get('status', '')}")
    total = len({a for members in rooms.values() for a in members})
    out.append(f"\n{total} online in {len(rooms)} rooms")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    client = NoLag(args.token, url=args.url, observer=True)
    lobby = client.set_lobby(args.lobby)
    live = sys.stdout.isatty() and not args.plain
    lock = threading.Lock()

    def redraw() -> None:
        with lock:
            if live:
                sys.stdout.write(
                    "\x1b[H\x1b[2J" + f"lobby {args.lobby!r}\n\n" + table(lobby.by_room()) + "\n"
                )
                sys.stdout.flush()

    def changed(kind: str, actor: ActorPresence) -> None:
        if not live:
            name = actor.presence.get("username", actor.actor_token_id)
            print(f"{kind:<6} {actor.room}: {name} {dict(actor.presence)}", flush=True)
        redraw()

    lobby.on("presence:join", lambda actor: changed("join", actor))
    lobby.on("presence:update", lambda actor: changed("update", actor))
    lobby.on("presence:leave", lambda actor: changed("leave", actor))
    try:
        client.connect(timeout=10)
        lobby.subscribe(timeout=10)
    except ForbiddenError:
        print(f"lobby_dashboard: the token may not watch lobby {args.lobby!r}", file=sys.stderr)
        client.disconnect()
        return 1
    except NoLagError as exc:
        print(f"lobby_dashboard: {exc}", file=sys.stderr)
        client.disconnect()
        return 1
    if live:
        redraw()
    else:
        print(table(lobby.by_room()), flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())

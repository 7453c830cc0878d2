"""`nolag demo`: presence moving in the terminal, with no account and no network.

An embedded local broker runs in-process on a free loopback port; a handful of simulated
actors (real NoLag clients over real sockets) join, change status, type and leave on
their own, while a watcher client shows who is online and every event as it happens.
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
import threading
import time
from collections import deque
from typing import Any, Optional, TextIO

from nolag.client import NoLag
from nolag.models import ActorPresence

__all__ = ["run_demo"]

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
STATUSES = ["online", "away", "busy"]
ROOM = "demo"


class _Actor:
    """One simulated person: a client that comes, goes, changes status and types."""

    def __init__(self, name: str, url: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.client = NoLag(f"demo-{name.lower()}", url=url, heartbeat_interval=15)
        self.data: dict[str, Any] = {}

    @property
    def online(self) -> bool:
        return self.client.connected

    def step(self) -> None:
        """Do one random thing a person in a chat room might do."""
        if not self.online:
            self.client.connect(timeout=5)
            self.data = {"username": self.name, "status": "online", "isTyping": False}
            self.client.set_presence(self.data, room=ROOM)
            return
        roll = self.rng.random()
        if roll < 0.12:
            self.client.disconnect()
        elif roll < 0.45:
            self.data = {**self.data, "isTyping": not self.data.get("isTyping", False)}
            self.client.set_presence(self.data, room=ROOM)
        else:
            choices = [s for s in STATUSES if s != self.data.get("status")]
            self.data = {**self.data, "status": self.rng.choice(choices), "isTyping": False}
            self.client.set_presence(self.data, room=ROOM)


class _View:
    """Renders the watcher's cache and the recent events, redrawn in place on a terminal."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.live = live
        self.events: deque[str] = deque(maxlen=12)
        self.lock = threading.Lock()
        self.started = time.time()
        self.since: dict[str, float] = {}  # first seen, for actors the server gave no joinedAt

    def event(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        line = f"{stamp}  {text}"
        with self.lock:
            self.events.append(line)
            if not self.live:
                print(line, file=self.out, flush=True)

    def draw(self, people: tuple[ActorPresence, ...], url: str) -> None:
        if not self.live:
            return
        width = min(shutil.get_terminal_size((80, 24)).columns, 100)
        rows = [
            f"nolag demo — presence on the embedded local broker at {url}",
            "Ctrl-C to stop".rjust(width - 1),
            "",
            f"{'who':<12} {'status':<9} {'typing':<8} {'since':<9}",
            "-" * 42,
        ]
        for actor in sorted(people, key=lambda a: str(a.presence.get("username", ""))):
            data = actor.presence
            seen = actor.joined_at or self.since.get(actor.actor_token_id, self.started)
            since = time.strftime("%H:%M:%S", time.localtime(seen))
            typing = "typing…" if data.get("isTyping") else ""
            name = str(data.get("username", actor.actor_token_id))
            rows.append(f"{name:<12} {data.get('status', ''):<9} {typing:<8} {since:<9}")
        rows += ["", f"{len(people)} online", "", "recent events:"]
        with self.lock:
            rows += list(self.events)
        self.out.write("\x1b[H\x1b[2J" + "\n".join(row[:width] for row in rows) + "\n")
        self.out.flush()


def _describe(kind: str, actor: ActorPresence, before: Optional[ActorPresence]) -> str:
    """One line for an event, saying what changed since `before`."""
    data = actor.presence
    name = data.get("username", actor.actor_token_id)
    if kind == "join":
        return f"+ {name} joined ({data.get('status', '?')})"
    if kind == "leave":
        return f"- {name} left"
    old = before.presence if before is not None else {}
    if data.get("status") != old.get("status"):
        return f"~ {name} is now {data.get('status', '?')}"
    if data.get("isTyping"):
        return f"~ {name} is typing…"
    return f"~ {name} stopped typing"


def run_demo(
    actors: int = 5,
    duration: Optional[float] = None,
    seed: Optional[int] = None,
    out: TextIO = sys.stdout,
    live: Optional[bool] = None,
) -> int:
    """Run the demo until Ctrl-C or `duration` seconds; returns the process exit code."""
    from nolag.broker import EmbeddedBroker  # the broker extra; imported only for the demo

    if not 1 <= actors <= len(NAMES):
        raise ValueError(f"actors must be between 1 and {len(NAMES)}, got {actors}")
    logging.getLogger("nolag").setLevel(logging.WARNING)
    logging.getLogger("nolag.broker").setLevel(logging.ERROR)  # allow-all on loopback, in-process
    rng = random.Random(seed)
    live = out.isatty() if live is None else live
    view = _View(out, live)
    deadline = None if duration is None else time.monotonic() + duration
    with EmbeddedBroker(allow_all=True) as broker:
        if not live:
            print(f"nolag demo: embedded broker at {broker.url}; Ctrl-C to stop", file=out)
        watcher = NoLag("demo-watcher", url=broker.url)
        last: dict[str, ActorPresence] = {}  # the watcher's previous view, per actor

        def on_change(kind: str, actor: ActorPresence) -> None:
            if kind == "join":
                view.since[actor.actor_token_id] = time.time()
            view.event(_describe(kind, actor, last.get(actor.actor_token_id)))
            last[actor.actor_token_id] = actor

        watcher.on("presence:join", lambda a: on_change("join", a))
        watcher.on("presence:update", lambda a: on_change("update", a))
        watcher.on("presence:leave", lambda a: on_change("leave", a))
        watcher.connect(timeout=5)
        watcher.set_presence({"username": "you", "status": "watching"}, room=ROOM)
        crowd = [_Actor(name, broker.url, rng) for name in NAMES[:actors]]
        try:
            next_draw = 0.0
            while deadline is None or time.monotonic() < deadline:
                rng.choice(crowd).step()
                now = time.monotonic()
                if now >= next_draw:
                    view.draw(tuple(watcher.get_all_presence(ROOM)), broker.url)
                    next_draw = now + 0.25
                time.sleep(rng.uniform(0.15, 0.6))
        except KeyboardInterrupt:
            pass
        finally:
            online = len(watcher.get_all_presence(ROOM))
            for person in crowd:
                person.client.disconnect()
            watcher.disconnect()
        print(f"\nnolag demo: stopped ({online} online at the end)", file=out)
    return 0

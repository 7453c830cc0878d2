#!/usr/bin/env python3
"""A terminal chat room made of presence: who is here, who is typing, what they last said.

On a terminal every key you press counts as a keystroke (isTyping goes true, and false
after a pause); Enter shares the line as your `said` field. Commands: /away, /online,
/quit. With input from a pipe, each line is a message.

    nolag broker --tokens tests/fixtures/tokens.json &
    python samples/chat_room.py --token dev-token-alice --name Alice
    python samples/chat_room.py --token dev-token-bob --name Bob      # in another terminal
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Callable, Optional

from nolag import ActorPresence, NoLag, NoLagError, TypingIndicator


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NOLAG_URL", "ws://127.0.0.1:8080/ws"))
    parser.add_argument("--token", default=os.environ.get("NOLAG_TOKEN"), help="actor token")
    parser.add_argument("--room", default="general", help="room to join (default %(default)s)")
    parser.add_argument("--name", default="guest", help="your display name")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds until typing stops")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: --token or NOLAG_TOKEN")
    return args


def render(people: tuple[ActorPresence, ...], me: Optional[str]) -> str:
    """The room as a small table: name, status, typing, last words."""
    lines = [f"{'who':<12} {'status':<8} {'':<9} said"]
    for person in sorted(people, key=lambda p: str(p.presence.get("username", ""))):
        data = person.presence
        name = str(data.get("username", person.actor_token_id))
        if person.actor_token_id == me:
            name += " (you)"
        typing = "typing…" if data.get("isTyping") else ""
        lines.append(f"{name:<12} {data.get('status', ''):<8} {typing:<9} {data.get('said', '')}")
    return "\n".join(lines)


class ChatScreen:
    """Redraws the room on every change when interactive; prints changes when piped.

    Interactive, the terminal does not echo (keys are read one by one), so the screen shows
    the line being typed itself: after the prompt on every redraw, and as keys arrive.
    """

    def __init__(self, client: NoLag, room: str, live: bool) -> None:
        self.client, self.room, self.live = client, room, live
        self.lock = threading.Lock()
        self.draft = ""  # the line being typed

    def edit(self, draft: str) -> None:
        """Show the line being typed: rewrite the prompt line in place."""
        with self.lock:
            self.draft = draft
            sys.stdout.write("\r\x1b[K> " + draft)
            sys.stdout.flush()

    def changed(self, actor: ActorPresence) -> None:
        with self.lock:
            if self.live:
                people = tuple(self.client.get_all_presence(self.room))
                sys.stdout.write("\x1b[H\x1b[2J" + render(people, self.client.actor_id))
                sys.stdout.write("\n\n> " + self.draft)
            else:
                data = actor.presence
                name = data.get("username", actor.actor_token_id)
                if data.get("isTyping"):
                    print(f"{name} is typing…")
                elif "said" in data:
                    print(f"{name}: {data['said']}")
            sys.stdout.flush()


@contextlib.contextmanager
def keys_one_by_one() -> Iterator[None]:
    """The terminal in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still works).

    Set before connecting, so that nothing typed early is echoed twice; restored on exit.
    """
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def read_keys(screen: ChatScreen, typing: TypingIndicator, submit: Callable[[str], bool]) -> None:
    """Terminal input key by key: every key is a keystroke, shown on the prompt line;
    Enter submits the line, Backspace deletes, Ctrl-D quits."""
    fd = sys.stdin.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # é is two bytes
    line = ""
    while True:
        byte = os.read(fd, 1)
        if not byte:  # the terminal went away
            return
        char = decoder.decode(byte)
        if not char:  # the middle of a character: read on
            continue
        if char in ("\n", "\r"):
            screen.edit("")
            if not submit(line):
                return
            line = ""
        elif char in ("\x7f", "\b"):
            line = line[:-1]
            screen.edit(line)
        elif char == "\x04":  # Ctrl-D
            return
        elif char.isprintable():
            line += char
            screen.edit(line)
            typing.keystroke()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    live = sys.stdin.isatty() and sys.stdout.isatty()
    with keys_one_by_one() if live else contextlib.nullcontext():
        code = chat(args, live)
    if live:
        print()  # leave the prompt line, so that the shell's prompt starts on a fresh one
    return code


def chat(args: argparse.Namespace, live: bool) -> int:
    """Connect, join the room and chat until /quit, Ctrl-D or Ctrl-C; the exit code."""
    client = NoLag(args.token, url=args.url)
    room = client.set_room(args.room)
    screen = ChatScreen(client, args.room, live=live)
    for event in ("presence:join", "presence:update", "presence:leave"):
        room.on(event, screen.changed)
    try:
        client.connect(timeout=10)
    except NoLagError as exc:
        print(f"chat_room: {exc}", file=sys.stderr)
        return 1
    room.set_presence({"username": args.name, "status": "online", "isTyping": False})
    typing = TypingIndicator(room, idle=args.idle)

    def submit(line: str) -> bool:
        typing.stop()
        text = line.strip()
        if text == "/quit":
            return False
        if text in ("/away", "/online"):
            room.set_presence({**(room.own_presence() or {}), "status": text[1:]})
        elif text:
            room.set_presence({**(room.own_presence() or {}), "said": text[:200]})
        return True

    try:
        if screen.live:
            read_keys(screen, typing, submit)
        else:
            print(f"in room {args.room!r} as {args.name}", flush=True)
            for line in sys.stdin:
                typing.keystroke()
                time.sleep(0.05)  # a typist, not a paste
                if not submit(line):
                    break
    except KeyboardInterrupt:
        if not live and sys.stdout.isatty():
            print()  # end the line holding the terminal's "^C"
    finally:
        typing.stop()
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``manage.py nolag_presence list|watch``: the project's presence, with settings.NOLAG's token."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from nolag.cli import CommandFailed, presence_list, presence_watch


class Command(BaseCommand):  # type: ignore[misc]
    """List who is online now, or watch presence change live."""

    help = (
        "List who is online (the server's list) or watch presence change live, using "
        "settings.NOLAG (TOKEN, URL, ROOM). Exit status 1 with a one-line error if the "
        "token is refused or the server cannot be reached."
    )

    def add_arguments(self, parser: Any) -> None:
        """Subcommands `list` and `watch`, with the options of `nolag presence`."""
        verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
        listing = verbs.add_parser("list", help="print who is online now")
        listing.add_argument("--json", action="store_true", help="print JSON, not a table")
        watch = verbs.add_parser("watch", help="a live table of who is online")
        watch.add_argument(
            "--visible",
            action="store_true",
            help="be present in the room (as --name) to get events live; invisible otherwise",
        )
        watch.add_argument("--name", default="django", help="the name a --visible watcher shows")
        watch.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="seconds between two asks for a room's list when invisible (default 1)",
        )
        watch.add_argument("--duration", type=float, help="stop after this many seconds")
        mode = watch.add_mutually_exclusive_group()
        mode.add_argument("--live", action="store_true", help="redraw in place")
        mode.add_argument("--plain", action="store_true", help="one line per event")
        for sub in (listing, watch):
            sub.add_argument("--room", help='a room (default NOLAG["ROOM"])')
            sub.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the verb with the token and URL of settings.NOLAG."""
        from nolag.contrib.django import settings
        from nolag.models import DEFAULT_URL

        try:
            config = settings()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        namespace = argparse.Namespace(
            url=config.url or DEFAULT_URL,
            token=config.token,
            timeout=options["timeout"],
            room=options["room"] or config.room,
            verbose=options["verbosity"] > 1,
            json=options.get("json", False),
            name=options.get("name", "django"),
            visible=options.get("visible", False),
            interval=options.get("interval", 1.0),
            duration=options.get("duration"),
            live=options.get("live", False),
            plain=options.get("plain", False),
        )
        run = presence_list if options["verb"] == "list" else presence_watch
        try:
            run(namespace, self.stdout)
        except CommandFailed as exc:
            raise CommandError(str(exc), returncode=exc.code) from None
        except KeyboardInterrupt:
            pass

#!/usr/bin/env python3
"""A Flask app that shows who is online in a NoLag room: an HTML page and a JSON endpoint.

nolag broker --tokens tests/fixtures/tokens.json &
python samples/flask_app/app.py --token dev-token-backend --room general
# or: NOLAG_TOKEN=dev-token-backend flask --app samples/flask_app/app run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from flask import Flask, jsonify, render_template
from flask.typing import ResponseReturnValue

from nolag.contrib.flask import NoLagPresence

presence = NoLagPresence()


def create_app(config: Optional[dict[str, Any]] = None) -> Flask:
    """The app factory: NOLAG_* settings come from `config`, else from the environment."""
    app = Flask(__name__, root_path=str(Path(__file__).resolve().parent))
    app.config.update(
        NOLAG_TOKEN=os.environ.get("NOLAG_TOKEN"),
        NOLAG_URL=os.environ.get("NOLAG_URL", "ws://127.0.0.1:8080/ws"),
        NOLAG_ROOM=os.environ.get("NOLAG_ROOM", "general"),
    )
    app.config.update(config or {})
    presence.init_app(app)

    @app.get("/")
    def who_is_online() -> ResponseReturnValue:
        room = app.config["NOLAG_ROOM"]
        return render_template("online.html", room=room, people=presence.online(room))

    @app.get("/api/online")
    def online_json() -> ResponseReturnValue:
        room = app.config["NOLAG_ROOM"]
        people = presence.online(room)
        # the keys of `nolag presence list --json` and of the REST answer (docs/api.md)
        return jsonify(roomId=room, actors=[p.to_dict() for p in people], count=len(people))

    @app.template_filter("since")
    def since(joined_at: Optional[float]) -> str:
        return time.strftime("%H:%M:%S", time.localtime(joined_at)) if joined_at else "?"

    return app


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NOLAG_URL", "ws://127.0.0.1:8080/ws"))
    parser.add_argument("--token", default=os.environ.get("NOLAG_TOKEN"), help="env NOLAG_TOKEN")
    parser.add_argument("--room", default="general", help="room to show (default %(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="HTTP port (default %(default)s)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: --token or NOLAG_TOKEN")
    app = create_app({"NOLAG_URL": args.url, "NOLAG_TOKEN": args.token, "NOLAG_ROOM": args.room})
    app.run(port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

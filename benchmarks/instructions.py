"""Instructions per presence event on the socket-less receive path, counted by callgrind.

    python benchmarks/instructions.py              # 20,000 events of the firehose mix
    python benchmarks/instructions.py --n 50000

The receive path without a socket: a batch of the real broker's presence frames (the
ingest benchmark's mix) decoded, routed and applied to the cache, with a listener, as
the loop hands them to the client. callgrind counts instructions, which this shared,
noisy machine cannot disturb: the script runs itself under valgrind twice, making the N
frames both times but receiving them only the second time, and prints the difference
per event, so start-up and making the frames cancel out. It measures
whichever nolag is importable (`Session.receive`; before the session core existed,
`NoLag._handle_batch`), so the same command compares two commits.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import firehose


def _receiver() -> Callable[[list[bytes]], Any]:
    """The receive path of the nolag installed here."""
    try:
        from nolag.models import NoLagOptions
        from nolag.session import Session
    except ImportError:  # before the session core: the client's own batch handler
        from nolag import NoLag

        client = NoLag("bench", url="ws://127.0.0.1:9/ws")
        client.on("presence:join", lambda actor: None)  # a listener: events are queued
        return client._handle_batch  # type: ignore[attr-defined,no-any-return]
    session = Session(NoLagOptions(), "bench")
    session.begin("connect")
    from nolag.protocol import AuthOk

    session.opened(AuthOk("bench", "p", "user", 2), 0.0)

    def receive(payloads: list[bytes]) -> Any:
        return session.receive(payloads, time.monotonic(), True)

    return receive


def inner(n: int, actors: int, feed: bool) -> None:
    payloads = firehose.mix_payloads(n, actors)
    receive = _receiver()
    if not feed:
        return
    for start in range(0, len(payloads), 2500):  # about one 256 KiB socket read each
        receive(payloads[start : start + 2500])


def _instructions(n: int, actors: int, feed: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--inner",
                "--n",
                str(n),
                "--actors",
                str(actors),
                *([] if feed else ["--dry"]),
            ],
            check=True,
            capture_output=True,
        )
        with open(out, encoding="utf-8") as fh:
            for line in fh:
                match = re.match(r"(?:summary|totals):\s+(\d+)", line)
                if match:
                    return int(match.group(1))
    raise RuntimeError("callgrind wrote no total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--actors", type=int, default=10_000)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.n, args.actors, feed=not args.dry)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    base = _instructions(args.n, args.actors, feed=False)  # the same frames, not received
    total = _instructions(args.n, args.actors, feed=True)
    per_event = (total - base) / args.n
    print(f"{per_event:,.0f} instructions per event ({args.n} events, {args.actors} actors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

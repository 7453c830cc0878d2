"""Drive the official asyncio NoLag SDK against the firehose; print {events, seconds, by_kind}.

Runs under the official SDK's own virtualenv, in isolated mode (``python -I``), so that
``import nolag`` is the official package and never this repository's:

    .official-venv/bin/python -I benchmarks/official_ingest.py URL TOKEN N TIMEOUT

The clock starts when connect() returns or at the first presence callback, whichever
comes first (the SDK's receive task can run callbacks before connect() resumes), and
stops at the N-th presence callback.
"""

import asyncio
import json
import sys
import time


async def main(url: str, token: str, n: int, timeout: float) -> dict:
    """Connect, count presence callbacks to N, disconnect."""
    from nolag import NoLag, NoLagOptions

    counts = {"presence:join": 0, "presence:update": 0, "presence:leave": 0}
    state = {"total": 0, "first": None, "last": None}
    done = asyncio.Event()

    def counter(name):
        def on_event(*args):
            if state["first"] is None:
                state["first"] = time.perf_counter()
            counts[name] += 1
            state["total"] += 1
            if state["total"] >= n:
                state["last"] = time.perf_counter()
                done.set()

        return on_event

    client = NoLag(token, NoLagOptions(url=url, reconnect=False, heartbeat_interval=30))
    for name in counts:
        client.on(name, counter(name))
    await client.connect()
    start = time.perf_counter()
    if state["first"] is not None:
        start = min(start, state["first"])
    try:
        await asyncio.wait_for(done.wait(), timeout)
        await asyncio.sleep(0.05)  # let any surplus callback land before counting
    finally:
        client.disconnect()
        await asyncio.sleep(0)
    return {"events": state["total"], "seconds": state["last"] - start, "by_kind": counts}


if __name__ == "__main__":
    url, token, n, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(asyncio.run(main(url, token, n, timeout))))

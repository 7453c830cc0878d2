"""After a reconnect the cache and the event log tell the truth: no ghosts, no lost self.

The observer (alice) reaches the broker through a fault proxy that cuts it off; other
actors use raw sockets straight to the broker ("tabs"), so they join, leave and update
while the observer is away, while it reconnects and while it awaits the room's list.
The truth is the broker's own answer (REST, one entry per actor). Checked for each run:

- the final cache equals the truth (actor, data, socket count), and what a fresh client
  fetches;
- replaying the observer's event log on its initial (empty) cache gives exactly the final
  cache, with no join for an actor already present (no duplicates) and no leave or update
  for an absent one;
- actors that never left (one of them with two tabs) never got a leave (no early leave);
- a sensor updating every 30 ms is seen in order, and without gaps once back in the room.

The same is then done with the broker process killed (SIGKILL) and restarted on the port.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import msgpack
import pytest
from faultproxy import FaultProxy, client_messages, proxy_threads
from helpers import TOKENS, free_port, spawn_broker, wait_until
from rawclient import RawClient

from nolag import ConnectionState, NoLag
from nolag.broker import EmbeddedBroker
from nolag.models import thaw

# issue 14: presence, lobby and reconnect paths run against both broker modes
pytestmark = pytest.mark.both_brokers

TOKENS_PATH = Path(__file__).resolve().parent / "fixtures" / "tokens.json"
ROOM = "general"
SEED = int(os.environ.get("RELIABILITY_SEED", "20261128"))
#: actors the random churn drives: (token, actor id)
POOL = [(f"tok-actor-0{n:02d}", f"actor-0{n:02d}") for n in (0, 1, 2, 3, 4, 5, 10, 11, 12, 13)]
NAMES = (
    "connect",
    "disconnect",
    "reconnecting",
    "reconnect",
    "error",
    "presence:join",
    "presence:update",
    "presence:leave",
)
FAST = {
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.25,
    "heartbeat_interval": 5.0,
    "connect_timeout": 3.0,
}

View = dict[str, tuple[dict[str, Any], int]]


@pytest.fixture
def proxy(broker: EmbeddedBroker) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test broker; its threads are joined afterwards."""
    with FaultProxy(broker.port) as fp:
        yield fp
    assert not proxy_threads()


class EventLog:
    """Everything one client emits, in callback order: (name, actor, room, data) or (name, args)."""

    def __init__(self, client: NoLag) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        for name in NAMES:
            client.on(name, self._handler(name))

    def _handler(self, name: str) -> Any:
        def handle(*args: Any) -> None:
            if name.startswith("presence:"):
                actor = args[0]
                item: tuple[Any, ...] = (
                    name,
                    actor.actor_token_id,
                    actor.room,
                    thaw(actor.presence),
                )
            else:
                item = (name, *args)
            with self._lock:
                self.items.append(item)

        return handle

    def snapshot(self) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self.items)

    def about(self, actor: str) -> list[tuple[Any, ...]]:
        return [i for i in self.snapshot() if i[0].startswith("presence:") and i[1] == actor]


class Tabs:
    """Raw sockets straight to the broker, several per actor; all tabs show the same data."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.open: dict[str, list[RawClient]] = {}
        self.data: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def join(self, token: str, actor: str, data: Optional[dict[str, Any]] = None) -> None:
        """Open one more tab for the actor, showing its current data (or `data`)."""
        tab = RawClient(self.url, timeout=3)
        assert tab.auth(token, 2)["success"] is True
        with self._lock:
            self.tokens[actor] = token
            if data is not None:
                self.data[actor] = data
            shown = self.data.setdefault(actor, {"actor": actor, "v": 0})
            self.open.setdefault(actor, []).append(tab)
        tab.send({"type": "presence", "roomId": ROOM, "data": shown})

    def update(self, actor: str, data: dict[str, Any]) -> None:
        """Show new data in every tab of the actor."""
        with self._lock:
            self.data[actor] = data
            tabs = list(self.open.get(actor, ()))
        for tab in tabs:
            tab.send({"type": "presence", "roomId": ROOM, "data": data})

    def leave(self, actor: str, abrupt: bool = False) -> None:
        """Close the actor's newest tab, cleanly or with a TCP reset."""
        with self._lock:
            tab = self.open[actor].pop()
            if not self.open[actor]:
                del self.open[actor]
        if abrupt:
            tab.abort()
        else:
            tab.close()

    def count(self, actor: str) -> int:
        with self._lock:
            return len(self.open.get(actor, ()))

    def close_all(self) -> None:
        with self._lock:
            tabs = [t for group in self.open.values() for t in group]
            self.open.clear()
        for tab in tabs:
            with contextlib.suppress(Exception):
                tab.close()


class Sensor:
    """A device that updates its presence every 30 ms with an increasing sequence number."""

    ACTOR = "sensor-1"

    def __init__(self, url: str) -> None:
        self.tab = RawClient(url, timeout=3)
        assert self.tab.auth("dev-token-sensor", 2)["success"] is True
        self.seq = 0
        self._send()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-sensor", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        self.tab.send({"type": "presence", "roomId": ROOM, "data": {"seq": self.seq}})

    def _run(self) -> None:
        while not self._stop.wait(0.03):
            self.seq += 1
            self._send()

    def stop(self) -> None:
        """Stop updating (the sensor stays present)."""
        self._stop.set()
        self._thread.join(2)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):
            self.tab.close()


def churn(rng: random.Random, tabs: Tabs, steps: int, pause: float = 0.0) -> None:
    """Random joins (new tabs), leaves (clean or reset) and updates of the pool's actors."""
    for _ in range(steps):
        token, actor = rng.choice(POOL)
        op = rng.choice(("join", "join", "leave", "update"))
        if op == "join" and tabs.count(actor) < 3:
            tabs.join(token, actor)
        elif op == "leave" and tabs.count(actor):
            tabs.leave(actor, abrupt=rng.random() < 0.5)
        elif op == "update" and tabs.count(actor):
            tabs.update(actor, {"actor": actor, "v": rng.randrange(1_000_000)})
        if pause:
            time.sleep(pause)


def cache_view(client: NoLag) -> View:
    return {
        a.actor_token_id: (thaw(a.presence), a.connections) for a in client.get_all_presence(ROOM)
    }


def fresh_fetch(url: str) -> View:
    """What a brand-new client fetches: the broker's list, one entry per actor."""
    probe = NoLag(TOKENS["bob"], url=url)
    try:
        probe.connect(timeout=5)  # without a REST endpoint (Kraken) the list is asked over it
        actors = probe.fetch_presence(ROOM, timeout=5)
    finally:
        probe.disconnect()
    return {a.actor_token_id: (thaw(a.presence), a.connections) for a in actors}


def replay(items: list[tuple[Any, ...]]) -> tuple[dict[str, Any], list[str]]:
    """Apply the logged presence events of ROOM to an empty cache; report impossible ones."""
    state: dict[str, Any] = {}
    problems: list[str] = []
    for index, item in enumerate(items):
        name = item[0]
        if not name.startswith("presence:") or item[2] != ROOM:
            continue
        actor, data = item[1], item[3]
        if name == "presence:join":
            if actor in state:
                problems.append(f"#{index} duplicate join of {actor}")
            state[actor] = data
        elif name == "presence:update":
            if actor not in state:
                problems.append(f"#{index} update of absent {actor}")
            state[actor] = data
        else:
            if actor not in state:
                problems.append(f"#{index} leave of absent {actor}")
            state.pop(actor, None)
    return state, problems


def settle(
    observer: NoLag,
    url: str,
    timeout: float = 10.0,
    until: Optional[Callable[[View], bool]] = None,
) -> View:
    """Wait until the observer's cache equals the broker's truth; return the truth.

    ``until`` also waits for the truth itself to be reached: a reconnected client is
    ``connected`` a moment before it has re-sent its presence, so without it the cache
    and the broker can agree on a state the test is not about yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        truth = fresh_fetch(url)
        if cache_view(observer) == truth and (until is None or until(truth)):
            return truth
        if time.monotonic() > deadline:
            raise AssertionError(f"cache {cache_view(observer)!r}\n!= truth {truth!r}")
        time.sleep(0.1)


def connections(truth: View) -> dict[str, int]:
    """How many sockets each actor has in the truth."""
    return {actor: count for actor, (_, count) in truth.items()}


def check_log(log: EventLog, truth: View, anchors: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The log replays to the truth, without duplicates; anchors never left."""
    expected = {actor: data for actor, (data, _) in truth.items()}
    with contextlib.suppress(AssertionError):  # callbacks run a moment after the cache changed
        wait_until(lambda: replay(log.snapshot())[0] == expected, timeout=5)
    items = log.snapshot()
    state, problems = replay(items)
    assert not problems, problems
    assert state == expected
    for anchor in anchors:
        names = [i[0] for i in log.about(anchor)]
        assert "presence:leave" not in names, f"{anchor} never left but got {names}"
        assert names.count("presence:join") == 1, (anchor, names)
    return items


def check_sensor(items: list[tuple[Any, ...]]) -> None:
    """Sensor values never go back; after each (re)connect they have no gaps."""
    seen: list[tuple[int, int]] = []  # (connection number, seq)
    generation = 0
    for item in items:
        if item[0] in ("connect", "reconnect"):
            generation += 1
        elif (
            item[0].startswith("presence:")
            and item[1] == Sensor.ACTOR
            and item[0] != "presence:leave"
        ):
            seen.append((generation, item[3]["seq"]))
    values = [seq for _, seq in seen]
    assert values == sorted(values) and len(set(values)) == len(values), values
    for (g0, s0), (g1, s1) in zip(seen, seen[1:]):
        if g0 == g1:
            assert s1 == s0 + 1, f"sensor jumped from {s0} to {s1} on one connection"


def test_reconnect_reauths_with_the_flag_and_resends_own_presence(
    broker: EmbeddedBroker, proxy: FaultProxy
) -> None:
    alice = NoLag(TOKENS["alice"], url=proxy.url(), **FAST)
    bob = NoLag(TOKENS["bob"], url=broker.url)
    seen = EventLog(bob)
    try:
        bob.connect(timeout=5)
        bob.set_presence({"name": "Bob"}, room=ROOM)
        alice.connect(timeout=5)
        alice.set_presence({"name": "Alice", "status": "online"}, room=ROOM)
        wait_until(lambda: bob.get_presence("alice", ROOM) is not None)
        proxy.block()
        proxy.cut()
        wait_until(lambda: alice.status is ConnectionState.RECONNECTING, timeout=3)
        wait_until(lambda: bob.get_presence("alice", ROOM) is None, timeout=3)
        alice.set_presence({"name": "Alice", "status": "away"}, room=ROOM)  # while away
        proxy.unblock()
        wait_until(lambda: alice.connected, timeout=5)
        wanted = {"name": "Alice", "status": "away"}
        wait_until(lambda: _data(bob, "alice") == wanted)
        wait_until(lambda: _data(alice, "alice") == wanted)
        wait_until(lambda: alice.get_presence("bob", ROOM) is not None)
        expected = ["presence:join", "presence:leave", "presence:join"]
        wait_until(lambda: [i[0] for i in seen.about("alice")] == expected)  # callbacks run later
        first, second = proxy.links[0], proxy.links[-1]
        auth1 = msgpack.unpackb(client_messages(bytes(first.c2s))[0][1])
        sent2 = [msgpack.unpackb(p) for op, p in client_messages(bytes(second.c2s)) if p]
        assert auth1["type"] == "auth" and "reconnect" not in auth1
        assert sent2[0]["type"] == "auth" and sent2[0]["reconnect"] is True
        presence = [f for f in sent2 if f["type"] == "presence"]
        assert presence and presence[0] == {"type": "presence", "roomId": ROOM, "data": wanted}
        gets = [f for f in sent2 if f["type"] == "getPresence" and f.get("roomId") == ROOM]
        assert gets and sent2.index(gets[0]) > sent2.index(presence[0])  # list after entering
    finally:
        alice.disconnect()
        bob.disconnect()


def _data(client: NoLag, actor: str) -> Any:
    """The actor's presence data in ROOM as the client's cache has it (None if absent)."""
    found = client.get_presence(actor, ROOM)
    return thaw(found.presence) if found is not None else None


def test_cache_and_event_log_match_the_truth_after_a_cut(
    broker: EmbeddedBroker, proxy: FaultProxy
) -> None:
    rng = random.Random(SEED)
    tabs = Tabs(broker.url)
    sensor: Optional[Sensor] = None
    observer = NoLag(TOKENS["alice"], url=proxy.url(), **FAST)
    log = EventLog(observer)
    errors: list[BaseException] = []
    try:
        tabs.join(TOKENS["carol"], "carol", {"name": "Carol"})
        tabs.join(TOKENS["carol"], "carol")  # carol's second tab
        tabs.join(TOKENS["dave"], "dave", {"name": "Dave", "v": 1})
        tabs.join(TOKENS["bob"], "bob", {"name": "Bob"})
        tabs.join("dev-token-backend", "backend", {"name": "Backend"})
        tabs.join("dev-token-backend", "backend")
        sensor = Sensor(broker.url)
        observer.connect(timeout=5)
        observer.set_presence({"name": "Alice"}, room=ROOM)
        churn(rng, tabs, 10)
        tabs.leave("carol")  # one of carol's tabs closes while we watch: she stays
        tabs.join(TOKENS["carol"], "carol")
        settle(observer, broker.url)

        proxy.block()
        proxy.cut()
        wait_until(lambda: observer.status is ConnectionState.RECONNECTING, timeout=3)
        tabs.leave("bob")  # left while we were away: must get a leave
        tabs.join(TOKENS["erin"], "erin", {"name": "Erin"})  # came: a join
        tabs.update("dave", {"name": "Dave", "v": 2})  # changed: an update
        tabs.join(TOKENS["carol"], "carol")  # a third tab comes and goes: nothing
        tabs.leave("carol", abrupt=True)
        tabs.leave("backend")  # both of backend's tabs go: one leave
        tabs.leave("backend", abrupt=True)
        churn(rng, tabs, 15)

        def churn_on() -> None:
            try:
                churn(random.Random(SEED + 1), tabs, 25, pause=0.02)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        background = threading.Thread(target=churn_on, name="test-churn", daemon=True)
        proxy.unblock()
        background.start()  # joins, leaves and updates while the list is awaited
        wait_until(lambda: observer.connected, timeout=5)
        background.join(15)
        assert not errors, errors
        sensor.stop()
        truth = settle(observer, broker.url, until=lambda t: "alice" in t)

        assert "bob" not in truth and "backend" not in truth and "erin" in truth
        assert truth["carol"] == ({"name": "Carol"}, 2)
        assert truth["alice"] == ({"name": "Alice"}, 1)  # own presence restored
        items = check_log(log, truth, anchors=("carol", "dave", Sensor.ACTOR, "alice"))
        after = items[items.index(("reconnect",)) :]
        for actor, kind in (
            ("bob", "presence:leave"),
            ("backend", "presence:leave"),
            ("erin", "presence:join"),
            ("dave", "presence:update"),
        ):
            assert [i[0] for i in after if i[0].startswith("presence:") and i[1] == actor] == [
                kind
            ], (actor, after)
        check_sensor(items)
        assert observer.stats.reconnects == 1
    finally:
        observer.disconnect()
        if sensor is not None:
            sensor.close()
        tabs.close_all()


def _spawn_broker(port: int) -> subprocess.Popen[bytes]:
    return spawn_broker(port, str(TOKENS_PATH), "--log-level", "ERROR")


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
    if proc.stderr is not None:
        proc.stderr.close()


def test_cache_and_event_log_match_the_truth_after_a_broker_kill_and_restart() -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    procs = [_spawn_broker(port)]
    tabs = Tabs(url)
    observer = NoLag(TOKENS["alice"], url=url, **FAST)
    log = EventLog(observer)
    others = {
        "carol-1": NoLag(TOKENS["carol"], url=url, **FAST),
        "carol-2": NoLag(TOKENS["carol"], url=url, **FAST),  # two tabs
        "dave": NoLag(TOKENS["dave"], url=url, **FAST),
    }
    try:
        for name, client in others.items():
            client.connect(timeout=5)
            client.set_presence({"name": name.split("-")[0]}, room=ROOM)
        tabs.join(TOKENS["bob"], "bob", {"name": "Bob"})  # a raw socket: gone for good
        observer.connect(timeout=5)
        observer.set_presence({"name": "Alice"}, room=ROOM)
        settle(observer, url)

        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(5)
        wait_until(lambda: observer.status is ConnectionState.RECONNECTING, timeout=5)
        others["dave"].set_presence({"name": "dave", "status": "away"}, room=ROOM)  # while down
        tabs.open.pop("bob")[0].abort()  # its socket died with the broker
        time.sleep(0.3)  # a few failed attempts against a closed port
        procs.append(_spawn_broker(port))
        tabs.join(TOKENS["erin"], "erin", {"name": "Erin"})  # a newcomer after the restart
        wait_until(lambda: observer.connected, timeout=10)
        for client in others.values():
            wait_until(lambda c=client: c.connected, timeout=10)
        everyone = {"alice": 1, "carol": 2, "dave": 1, "erin": 1}
        truth = settle(observer, url, until=lambda t: connections(t) == everyone)

        assert set(truth) == {"alice", "carol", "dave", "erin"}
        assert truth["carol"] == ({"name": "carol"}, 2)
        assert truth["dave"] == ({"name": "dave", "status": "away"}, 1)
        items = check_log(log, truth, anchors=())
        bob = [i[0] for i in log.about("bob")]
        assert bob == ["presence:join", "presence:leave"], bob  # the ghost is gone, once
        assert [i[0] for i in log.about("alice")] == ["presence:join"]  # own presence kept
        assert items.count(("reconnect",)) == 1
    finally:
        observer.disconnect()
        for client in others.values():
            client.disconnect()
        tabs.close_all()
        for proc in procs:
            _reap(proc)


@pytest.mark.local_extension(
    "telling which tab set its data last needs updateSeq / connectionId in lists, local extensions"
)
def test_two_tabs_with_different_data_show_the_data_set_last_after_a_reconnect(
    broker: EmbeddedBroker, proxy: FaultProxy
) -> None:
    tabs = Tabs(broker.url)
    observer = NoLag(TOKENS["alice"], url=proxy.url(), **FAST)
    try:
        tabs.join(TOKENS["carol"], "carol", {"tab": 1, "v": "A"})
        observer.connect(timeout=5)
        observer.set_presence({"name": "Alice"}, room=ROOM)
        wait_until(lambda: observer.get_presence("carol", ROOM) is not None)
        time.sleep(1.1)  # joinedAt is in whole seconds: the second tab joins a second later
        proxy.block()
        proxy.cut()
        wait_until(lambda: observer.status is ConnectionState.RECONNECTING, timeout=3)
        second = RawClient(broker.url, timeout=3)
        assert second.auth(TOKENS["carol"], 2)["success"] is True
        tabs.open["carol"].append(second)
        second.send({"type": "presence", "roomId": ROOM, "data": {"tab": 2, "v": "B"}})
        time.sleep(0.1)
        first = tabs.open["carol"][0]
        first.send({"type": "presence", "roomId": ROOM, "data": {"tab": 1, "v": "C"}})
        time.sleep(0.1)
        truth = fresh_fetch(broker.url)
        assert truth["carol"] == ({"tab": 1, "v": "C"}, 2)  # the broker: the data set last
        proxy.unblock()
        wait_until(lambda: observer.connected, timeout=5)
        settle(observer, broker.url, timeout=3)
    finally:
        observer.disconnect()
        tabs.close_all()

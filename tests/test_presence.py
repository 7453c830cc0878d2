"""Unit tests of the presence cache: one test (or a few) per rule the store must keep."""

from __future__ import annotations

import math
import pickle
from typing import Any, Optional

import pytest

from nolag.lobby import LobbyStore
from nolag.models import ActorPresence, FrozenDict
from nolag.presence import (
    JOIN,
    LEAVE,
    UPDATE,
    PresenceStore,
    PublicEvent,
    same_data,
)
from nolag.protocol import (
    LobbyPresence,
    LobbySnapshot,
    PresenceEntry,
    PresenceEvent,
    PresenceList,
)

ROOM = "general"
WALL = 5000.0  # the store's wall clock in these tests (epoch seconds)


def ev(kind: str, actor: str, data: Any = None, cid: Optional[str] = None) -> PresenceEvent:
    return PresenceEvent(kind=kind, actor_token_id=actor, presence=data, connection_id=cid)


def entry(
    actor: str, data: Any, joined: Optional[float] = 100.0, cid: Optional[str] = None
) -> PresenceEntry:
    return PresenceEntry(actor_token_id=actor, presence=data, joined_at=joined, connection_id=cid)


def plist(*entries: PresenceEntry, room: Optional[str] = ROOM) -> PresenceList:
    return PresenceList(room=room, entries=tuple(entries))


def names(events: list[PublicEvent]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.name, e.actor.actor_token_id, dict(e.actor.presence)) for e in events]


class Feed:
    """A store plus a clock: apply events and lists with terse calls."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("wall", lambda: WALL)
        self.store = PresenceStore(**kwargs)
        self.now = 1000.0

    def __call__(
        self,
        kind: str,
        actor: str,
        data: Any = None,
        cid: Optional[str] = None,
        room: Optional[str] = ROOM,
    ) -> list[PublicEvent]:
        return self.store.apply_event(ev(kind, actor, data, cid), room, self.now)

    def pair(
        self, actor: str, data: Any, cid: Optional[str] = None, room: Optional[str] = ROOM
    ) -> list[PublicEvent]:
        """What the real broker sends for a socket's first presence: join then update."""
        return self("join", actor, data, cid, room) + self("update", actor, data, cid, room)

    def listed(
        self, *entries: PresenceEntry, mark: Optional[int] = None, room: Optional[str] = ROOM
    ) -> list[PublicEvent]:
        at = self.store.mark() if mark is None else mark
        return self.store.apply_list(plist(*entries, room=room), room, at, self.now)

    def view(self, actor: str, room: Optional[str] = ROOM) -> Optional[ActorPresence]:
        return self.store.get(actor, room)


# ---------------------------------------------------------------- 1. idempotent and quiet


def test_join_update_pair_is_one_join() -> None:
    f = Feed()
    events = f.pair("a", {"name": "A"})
    assert names(events) == [(JOIN, "a", {"name": "A"})]
    assert events[0].room == ROOM
    assert events[0].actor.room == ROOM
    assert events[0].previous is None


def test_update_with_equal_data_is_silent() -> None:
    f = Feed()
    f.pair("a", {"name": "A"})
    version = f.store.version
    assert f("update", "a", {"name": "A"}) == []
    assert f.store.version == version


def test_update_with_new_data_carries_previous() -> None:
    f = Feed()
    f.pair("a", {"s": "online"})
    [event] = f("update", "a", {"s": "away"})
    assert event.name == UPDATE
    assert event.actor.presence == {"s": "away"}
    assert event.previous is not None and event.previous.presence == {"s": "online"}


def test_leave_for_absent_actor_is_silent() -> None:
    f = Feed()
    assert f("leave", "ghost") == []
    f.pair("a", {})
    assert f("leave", "ghost") == []
    assert f.store.count(ROOM) == 1


def test_join_for_present_actor_is_at_most_an_update() -> None:
    f = Feed()
    f.pair("a", {"x": 1})
    assert f("join", "a", {"x": 1}) == []
    assert names(f("join", "a", {"x": 2})) == [(UPDATE, "a", {"x": 2})]


def test_update_for_absent_actor_is_a_join() -> None:
    f = Feed()
    assert names(f("update", "a", {"x": 1})) == [(JOIN, "a", {"x": 1})]
    assert names(f("leave", "a")) == [(LEAVE, "a", {"x": 1})]


def test_leave_event_carries_last_known_presence() -> None:
    f = Feed()
    f.pair("a", {"x": 1})
    f("update", "a", {"x": 2})
    [event] = f("leave", "a")
    assert event.name == LEAVE and event.actor.presence == {"x": 2} and event.room == ROOM
    assert f.view("a") is None


def test_equality_is_strict_about_types() -> None:
    f = Feed()
    f.pair("a", {"n": 1})
    assert names(f("update", "a", {"n": True})) == [(UPDATE, "a", {"n": True})]
    assert names(f("update", "a", {"n": 1.0})) == [(UPDATE, "a", {"n": 1.0})]
    assert f("update", "a", {"n": 1.0}) == []


def test_nan_equals_nan_so_resends_stay_quiet() -> None:
    f = Feed()
    f.pair("a", {"f": float("nan")})
    assert f("update", "a", {"f": float("nan")}) == []


def test_same_data() -> None:
    assert same_data(FrozenDict({"a": (1, 2)}), FrozenDict({"a": (1, 2)}))
    assert not same_data(FrozenDict({"a": (1, 2)}), FrozenDict({"a": (1, 3)}))
    assert not same_data(FrozenDict({"a": 1}), FrozenDict({"b": 1}))
    assert not same_data(FrozenDict({"a": 1}), FrozenDict({"a": 1, "b": 2}))
    assert not same_data((1,), (1, 2))
    assert not same_data(0, False)
    assert same_data(math.nan, math.nan)
    assert not same_data(math.nan, 1.0)


# ---------------------------------------------------------------- 6. foreign, non-map data


@pytest.mark.parametrize("junk", ["online", 7, ["a", 1], None, 1.5, True])
def test_non_map_presence_becomes_empty_mapping(junk: Any) -> None:
    f = Feed()
    [event] = f.pair("p", junk)
    assert event.actor.presence == {} and isinstance(event.actor.presence, FrozenDict)
    assert names(f("update", "p", {"ok": 1})) == [(UPDATE, "p", {"ok": 1})]
    assert names(f("update", "p", junk)) == [(UPDATE, "p", {})]
    assert f("update", "p", "another string") == []  # still {}: nothing changed
    f.listed(entry("p", junk), entry("q", ["x"]))
    assert f.view("q") is not None and f.view("q").presence == {}  # type: ignore[union-attr]


# ---------------------------------------------------------------- 2. several sockets


def test_anonymous_sockets_are_counted() -> None:
    f = Feed()
    assert names(f.pair("a", {"d": "phone"})) == [(JOIN, "a", {"d": "phone"})]
    assert names(f.pair("a", {"d": "laptop"})) == [(UPDATE, "a", {"d": "laptop"})]
    assert f.view("a").connections == 2  # type: ignore[union-attr]
    assert f("leave", "a") == []  # one tab closed: still present, nothing to say
    assert f.view("a").connections == 1  # type: ignore[union-attr]
    assert f.store.count(ROOM) == 1
    assert names(f("leave", "a")) == [(LEAVE, "a", {"d": "laptop"})]
    assert f("leave", "a") == []


def test_connection_ids_are_exact() -> None:
    f = Feed()
    assert names(f.pair("a", {"d": "phone"}, cid="c1")) == [(JOIN, "a", {"d": "phone"})]
    assert f.pair("a", {"d": "phone"}, cid="c1") == []  # a join for a known connection
    assert f.view("a").connections == 1  # type: ignore[union-attr]
    assert f("leave", "a", cid="c9") == []  # unknown connection
    assert f.view("a").connections == 1  # type: ignore[union-attr]
    f.pair("a", {"d": "laptop"}, cid="c2")
    assert f.view("a").connections == 2  # type: ignore[union-attr]
    # the visible data falls back to the newest remaining connection's
    assert names(f("leave", "a", cid="c2")) == [(UPDATE, "a", {"d": "phone"})]
    assert f("leave", "a", cid="c2") == []  # the same leave again
    assert names(f("leave", "a", cid="c1")) == [(LEAVE, "a", {"d": "phone"})]


def test_connection_leave_of_an_older_socket_keeps_the_data() -> None:
    f = Feed()
    f.pair("a", {"d": "phone"}, cid="c1")
    f.pair("a", {"d": "laptop"}, cid="c2")
    f.pair("a", {"d": "tablet"}, cid="c3")
    f("update", "a", {"d": "phone2"}, cid="c1")
    assert f("leave", "a", cid="c2") == []
    assert names(f("leave", "a", cid="c1")) == [(UPDATE, "a", {"d": "tablet"})]


def test_unknown_connection_update_is_a_missed_join() -> None:
    f = Feed()
    assert names(f("update", "a", {"x": 1}, cid="c1")) == [(JOIN, "a", {"x": 1})]
    f("update", "a", {"x": 1}, cid="c2")
    assert f.view("a").connections == 2  # type: ignore[union-attr]


# ---------------------------------------------------------------- 3. lists


def test_list_into_empty_cache_joins_everyone_once_per_actor() -> None:
    f = Feed()
    events = f.listed(entry("a", {"n": 1}, 10), entry("b", {"n": 2}, 11), entry("a", {"n": 1}, 12))
    assert names(events) == [(JOIN, "a", {"n": 1}), (JOIN, "b", {"n": 2})]
    a = f.view("a")
    assert a is not None and a.connections == 2 and a.joined_at == 10 and a.room == ROOM


def test_list_reconciles_leaves_joins_updates() -> None:
    f = Feed()
    f.pair("gone", {"x": 1})
    f.pair("same", {"x": 1})
    f.pair("changed", {"x": 1})
    events = f.listed(entry("same", {"x": 1}), entry("changed", {"x": 2}), entry("new", {"x": 3}))
    assert names(events) == [
        (LEAVE, "gone", {"x": 1}),
        (UPDATE, "changed", {"x": 2}),
        (JOIN, "new", {"x": 3}),
    ]
    assert (
        f.listed(entry("same", {"x": 1}), entry("changed", {"x": 2}), entry("new", {"x": 3})) == []
    )


def test_list_sets_socket_count_without_events_and_keeps_joined_at() -> None:
    """joined_at is set once: the event-learned member was dated by the wall clock (Kraken's
    events carry no joinedAt), and a list neither moves it nor raises an event for it."""
    f = Feed()
    f.pair("a", {"x": 1})
    assert f.view("a").joined_at == WALL  # type: ignore[union-attr]
    version = f.store.version
    assert f.listed(entry("a", {"x": 1}, 50), entry("a", {"x": 1}, 40)) == []
    a = f.view("a")
    assert a is not None and a.joined_at == WALL and a.connections == 2
    assert f.store.version > version


def test_an_event_with_joined_at_dates_the_member_by_it() -> None:
    """The local broker's events carry joinedAt (an extension): the server's time wins."""
    f = Feed()
    joined = PresenceEvent(kind="join", actor_token_id="a", presence={}, joined_at=42.0)
    f.store.apply_event(joined, ROOM, f.now)
    assert f.view("a").joined_at == 42.0  # type: ignore[union-attr]
    later = PresenceEvent(kind="update", actor_token_id="a", presence={"n": 1}, joined_at=43.0)
    f.store.apply_event(later, ROOM, f.now)
    assert f.view("a").joined_at == 42.0  # type: ignore[union-attr]


def test_a_list_entry_without_joined_at_is_dated_by_the_wall_clock() -> None:
    f = Feed()
    f.listed(entry("a", {}, None))
    assert f.view("a").joined_at == WALL  # type: ignore[union-attr]


def test_joined_at_restarts_with_a_new_membership() -> None:
    clock = iter([1.0, 2.0])
    f = Feed(wall=lambda: next(clock))
    f.pair("a", {})
    f("leave", "a")
    f.pair("a", {})
    assert f.view("a").joined_at == 2.0  # type: ignore[union-attr]


def test_list_keeps_cached_data_when_one_socket_shows_it() -> None:
    f = Feed()
    f.pair("a", {"d": "phone"})
    f.pair("a", {"d": "laptop"})
    assert f.listed(entry("a", {"d": "laptop"}, 5), entry("a", {"d": "phone"}, 9)) == []
    assert f.view("a").presence == {"d": "laptop"}  # type: ignore[union-attr]


def test_list_picks_latest_joined_entry_otherwise() -> None:
    f = Feed()
    f.pair("a", {"d": "stale"})
    events = f.listed(entry("a", {"d": "old"}, 5), entry("a", {"d": "new"}, 9))
    assert names(events) == [(UPDATE, "a", {"d": "new"})]


def test_list_choice_is_independent_of_entry_order() -> None:
    picks = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        es = [entry("a", {"d": "x"}, 5), entry("a", {"d": "y"}, 5), entry("a", {"d": "z"}, 4)]
        f = Feed()
        f.listed(*[es[i] for i in order])
        picks.add(f.view("a").presence["d"])  # type: ignore[union-attr]
    assert len(picks) == 1 and picks != {"z"}


def test_leave_after_mark_is_not_resurrected() -> None:
    f = Feed()
    f.pair("a", {"x": 1})
    mark = f.store.mark()
    assert names(f("leave", "a")) == [(LEAVE, "a", {"x": 1})]
    # Kraken broadcasts the leave before unregistering: the list still holds "a"
    assert f.listed(entry("a", {"x": 1}), mark=mark) == []
    assert f.view("a") is None


def test_leave_after_mark_of_an_unknown_actor_is_not_resurrected() -> None:
    f = Feed()
    mark = f.store.mark()
    assert f("leave", "a") == []
    assert f.listed(entry("a", {"x": 1}), entry("b", {}), mark=mark) == [
        PublicEvent(JOIN, f.view("b"), ROOM)  # type: ignore[arg-type]
    ]
    assert f.view("a") is None


def test_leave_after_mark_may_lower_but_not_raise_the_count() -> None:
    f = Feed()
    f.pair("a", {"x": 1})
    f.pair("a", {"x": 1})
    mark = f.store.mark()
    assert f("leave", "a") == []
    stale = entry("a", {"x": 1})
    assert f.listed(stale, stale, mark=mark) == []
    assert f.view("a").connections == 1  # type: ignore[union-attr]
    assert names(f("leave", "a")) == [(LEAVE, "a", {"x": 1})]


def test_join_after_mark_survives_a_list_without_it() -> None:
    f = Feed()
    mark = f.store.mark()
    f.pair("a", {"x": 2})
    assert f.listed(mark=mark) == []  # the list was computed before "a" registered
    assert f.view("a") is not None
    assert names(f("leave", "a")) == [(LEAVE, "a", {"x": 2})]


def test_update_after_mark_keeps_its_data() -> None:
    f = Feed()
    f.pair("a", {"x": 1})
    mark = f.store.mark()
    f("update", "a", {"x": 2})
    assert f.listed(entry("a", {"x": 1}), mark=mark) == []
    assert f.view("a").presence == {"x": 2}  # type: ignore[union-attr]
    # a later list (requested after the update) is believed again
    assert names(f.listed(entry("a", {"x": 3}))) == [(UPDATE, "a", {"x": 3})]


def test_list_learned_socket_late_join_is_not_double_counted() -> None:
    f = Feed(join_grace=2.0)
    assert names(f.listed(entry("a", {"x": 1}))) == [(JOIN, "a", {"x": 1})]
    f.now += 0.5
    assert f.pair("a", {"x": 1}) == []  # Kraken registered, we listed, then it broadcast
    assert f.view("a").connections == 1  # type: ignore[union-attr]
    assert names(f("leave", "a")) == [(LEAVE, "a", {"x": 1})]  # no ghost


def test_late_join_after_the_window_is_a_new_socket() -> None:
    f = Feed(join_grace=2.0)
    f.listed(entry("a", {"x": 1}))
    f.now += 2.5
    f.pair("a", {"x": 1})
    assert f.view("a").connections == 2  # type: ignore[union-attr]


def test_late_join_with_other_data_is_a_new_socket() -> None:
    f = Feed()
    f.listed(entry("a", {"x": 1}))
    assert names(f.pair("a", {"x": 2})) == [(UPDATE, "a", {"x": 2})]
    assert f.view("a").connections == 2  # type: ignore[union-attr]


def test_credit_only_for_sockets_the_cache_did_not_count() -> None:
    f = Feed()
    f.pair("a", {"x": 1})
    f.listed(entry("a", {"x": 1}), entry("a", {"x": 1}))  # one socket the cache missed
    f.pair("a", {"x": 1})  # its late join: absorbed
    assert f.view("a").connections == 2  # type: ignore[union-attr]
    f.pair("a", {"x": 1})  # a third socket: counted
    assert f.view("a").connections == 3  # type: ignore[union-attr]


def test_list_removed_socket_late_leave_is_not_double_counted() -> None:
    f = Feed(join_grace=2.0)
    f.pair("a", {"x": 1})
    f.pair("a", {"x": 1})
    f.pair("a", {"x": 1})
    # one socket closed; the list (after unregister) arrives before its leave broadcast
    assert f.listed(entry("a", {"x": 1}), entry("a", {"x": 1})) == []
    assert f.view("a").connections == 2  # type: ignore[union-attr]
    assert f("leave", "a") == []  # that socket's late leave: already accounted for
    assert f.view("a").connections == 2  # type: ignore[union-attr]
    f.now += 3
    assert f("leave", "a") == []
    assert names(f("leave", "a")) == [(LEAVE, "a", {"x": 1})]


def test_a_second_list_keeps_awaiting_a_late_join() -> None:
    f = Feed(join_grace=2.0)
    f.listed(entry("a", {"x": 1}))  # its join is still in flight...
    f.listed(entry("a", {"x": 1}))  # ...when a second list arrives
    f.now += 0.5
    assert f.pair("a", {"x": 1}) == []
    assert f.view("a").connections == 1  # type: ignore[union-attr]
    assert names(f("leave", "a")) == [(LEAVE, "a", {"x": 1})]


def test_a_second_list_keeps_awaiting_a_late_leave() -> None:
    f = Feed()
    f.pair("a", {})
    f.pair("a", {})
    f.listed(entry("a", {}))  # one socket closed, its leave in flight
    f.listed(entry("a", {}))
    assert f("leave", "a") == []
    assert f.view("a").connections == 1  # type: ignore[union-attr]


def test_late_join_may_match_any_of_the_actors_entries() -> None:
    f = Feed()
    f.pair("a", {"d": "laptop"})
    # the list shows the known socket and a newer one, in any order
    f.listed(entry("a", {"d": "phone"}, 9), entry("a", {"d": "laptop"}, 5))
    # the phone's late join: not a third socket (its data, the newest event's, shows)
    assert names(f.pair("a", {"d": "phone"})) == [(UPDATE, "a", {"d": "phone"})]
    assert f.view("a").connections == 2  # type: ignore[union-attr]


def test_list_room_argument_wins_over_the_reply_room() -> None:
    store = PresenceStore()
    mark = store.mark()
    store.apply_list(plist(entry("a", {}), room=None), "general", mark, 0.0)
    assert store.rooms() == ("general",)


def test_list_in_an_empty_room_removes_everyone() -> None:
    f = Feed()
    f.pair("a", {})
    f.pair("b", {})
    assert [e.name for e in f.listed()] == [LEAVE, LEAVE]
    assert f.store.rooms() == ()


def test_stale_lists_are_ignored() -> None:
    f = Feed()
    old = f.store.mark()
    f.pair("a", {})
    newer = f.store.mark()
    f.listed(entry("a", {}), entry("b", {}), mark=newer)
    assert f.listed(entry("c", {}), mark=old) == []  # requested before the applied one
    assert f.view("c") is None and f.view("b") is not None
    assert f.listed(entry("b", {}), entry("c", {}), mark=newer) != []  # same mark: fine


def test_list_requested_before_drop_or_reset_is_ignored() -> None:
    f = Feed()
    mark = f.store.mark()
    f.store.drop_room(ROOM)
    assert f.listed(entry("a", {}), mark=mark) == []
    mark = f.store.mark()
    f.store.reset()
    assert f.listed(entry("a", {}), mark=mark) == []
    assert f.store.snapshot() == ()
    assert names(f.listed(entry("a", {}))) == [(JOIN, "a", {})]


def test_connection_lists_are_exact() -> None:
    f = Feed()
    f.pair("a", {"d": "phone"}, cid="c1")
    f.pair("b", {}, cid="b1")
    events = f.listed(
        entry("a", {"d": "phone"}, 10, cid="c1"),
        entry("a", {"d": "laptop"}, 12, cid="c2"),
    )
    # b left unseen; a's new connection is its newest change
    assert names(events) == [(LEAVE, "b", {}), (UPDATE, "a", {"d": "laptop"})]
    assert f.view("a").connections == 2  # type: ignore[union-attr]
    assert f.pair("a", {"d": "laptop"}, cid="c2") == []  # its late join: a known connection
    assert f("leave", "b", cid="b1") == []  # the late leave of a connection the list removed
    assert names(f("leave", "a", cid="c2")) == [(UPDATE, "a", {"d": "phone"})]
    assert f.view("a").joined_at == WALL  # type: ignore[union-attr]  # set once, by its join


def test_connection_left_after_mark_is_not_resurrected() -> None:
    f = Feed()
    f.pair("a", {}, cid="c1")
    f.pair("a", {}, cid="c2")
    mark = f.store.mark()
    f("leave", "a", cid="c2")
    assert f.listed(entry("a", {}, cid="c1"), entry("a", {}, cid="c2"), mark=mark) == []
    assert f.view("a").connections == 1  # type: ignore[union-attr]
    f("leave", "a", cid="c1")
    assert f.listed(entry("a", {}, cid="c1"), mark=mark) == []
    assert f.view("a") is None


def test_connection_changed_after_mark_keeps_its_state() -> None:
    f = Feed()
    mark = f.store.mark()
    f.pair("a", {"v": 2}, cid="c1")
    assert f.listed(entry("a", {"v": 1}, cid="c1"), mark=mark) == []
    assert f.view("a").presence == {"v": 2}  # type: ignore[union-attr]


def test_list_without_connection_ids_for_tracked_connections() -> None:
    # e.g. a REST answer (no connectionId) reconciling connections learned from events
    f = Feed()
    f.pair("a", {"d": "phone"}, cid="c1")
    f.pair("a", {"d": "laptop"}, cid="c2")
    f.pair("a", {"d": "tablet"}, cid="c3")
    assert f.listed(entry("a", {"d": "phone"}), entry("a", {"d": "tablet"})) == []
    assert f.view("a").connections == 2  # type: ignore[union-attr]
    assert f("leave", "a", cid="c2") == []  # the one the list dropped
    assert names(f("leave", "a", cid="c3")) == [(UPDATE, "a", {"d": "phone"})]
    assert names(f("leave", "a", cid="c1")) == [(LEAVE, "a", {"d": "phone"})]


def test_connection_join_claims_a_list_learned_anonymous_socket() -> None:
    f = Feed()
    f.listed(entry("a", {"x": 1}))  # no connection id known yet
    assert f.pair("a", {"x": 1}, cid="c1") == []
    assert f.view("a").connections == 1  # type: ignore[union-attr]
    assert names(f("leave", "a", cid="c1")) == [(LEAVE, "a", {"x": 1})]


def test_connection_leave_for_an_anonymous_socket() -> None:
    f = Feed()
    f.listed(entry("a", {"x": 1}), entry("a", {"x": 1}))
    f.now += 10  # no late joins expected any more
    assert f("leave", "a", cid="c1") == []
    assert names(f("leave", "a", cid="c2")) == [(LEAVE, "a", {"x": 1})]


def test_tombstones_are_bounded_and_the_newest_are_kept() -> None:
    f = Feed(max_tombstones=2)
    for actor in "abcde":
        f.pair(actor, {})
    mark = f.store.mark()
    for actor in "abcdb":  # b leaves, comes back in between, and leaves again: newest
        if actor == "b" and f.store.get("b") is None:
            f.pair("b", {})
        f("leave", actor)
    f("leave", "e")  # the fifth tombstone: over twice the bound, the newest two stay
    events = f.listed(*(entry(actor, {}) for actor in "abcde"), mark=mark)
    # documented: memory of leaves is bounded, and the newest max_tombstones survive
    assert sorted(names(events)) == [(JOIN, "a", {}), (JOIN, "c", {}), (JOIN, "d", {})]


def test_no_tombstones_at_all() -> None:
    f = Feed(max_tombstones=0)
    f.pair("a", {})
    mark = f.store.mark()
    f("leave", "a")
    assert names(f.listed(entry("a", {}), mark=mark)) == [(JOIN, "a", {})]


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        PresenceStore(join_grace=-1)
    with pytest.raises(ValueError):
        PresenceStore(join_grace=math.inf)
    with pytest.raises(TypeError):
        PresenceStore(join_grace=True)
    with pytest.raises(TypeError):
        PresenceStore(max_tombstones=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PresenceStore(max_tombstones=-1)
    assert PresenceStore(join_grace=3).join_grace == 3.0


def test_unknown_event_kind_is_ignored() -> None:
    f = Feed()
    assert f("wave", "a", {}) == []
    assert f.store.snapshot() == ()


# ---------------------------------------------------------------- 4. rooms


def test_rooms_are_separate_memberships() -> None:
    f = Feed()
    f.pair("a", {"where": "g"}, room="general")
    f.pair("a", {"where": "r"}, room="random")
    f.pair("a", {"where": "p"}, room=None)
    f.pair("b", {}, room="random")
    assert f.store.count() == 2
    assert f.store.count("random") == 2
    assert f.store.count("general") == 1
    assert f.store.count(None, all_rooms=False) == 1
    assert f.store.count("nowhere") == 0
    assert f.store.rooms() == ("general", "random", None)
    everything = f.store.snapshot()
    assert [(p.actor_token_id, p.room) for p in everything] == [
        ("a", "general"),
        ("a", "random"),
        ("b", "random"),
        ("a", None),
    ]
    assert [p.presence["where"] for p in f.store.snapshot(None, all_rooms=False)] == ["p"]
    assert f.store.get("a", "random").presence == {"where": "r"}  # type: ignore[union-attr]
    assert f.store.get("a", None, all_rooms=False).room is None  # type: ignore[union-attr]
    assert f.store.get("b", "general") is None
    assert f.store.get("nobody") is None
    # leaving one room leaves the others alone
    assert names(f("leave", "a", room="general")) == [(LEAVE, "a", {"where": "g"})]
    assert f.store.rooms() == ("random", None)
    assert f.store.count() == 2


def test_get_without_room_is_the_most_recently_changed_membership() -> None:
    f = Feed()
    f.pair("a", {"v": 1}, room="r1")
    f.pair("a", {"v": 2}, room="r2")
    assert f.store.get("a").room == "r2"  # type: ignore[union-attr]
    f("update", "a", {"v": 3}, room="r1")
    assert f.store.get("a").room == "r1"  # type: ignore[union-attr]
    f("update", "a", {"v": 2}, room="r2")  # silent: not a change
    assert f.store.get("a").room == "r1"  # type: ignore[union-attr]


def test_event_room_and_actor_room_match() -> None:
    f = Feed()
    for event in f.pair("a", {}, room=None) + f("leave", "a", room=None):
        assert event.room is None and event.actor.room is None


def test_drop_room_emits_leaves_for_that_room_only() -> None:
    f = Feed()
    f.pair("a", {}, room="r1")
    f.pair("b", {}, room="r1")
    f.pair("a", {}, room="r2")
    events = f.store.drop_room("r1")
    assert [(e.name, e.actor.actor_token_id, e.room) for e in events] == [
        (LEAVE, "a", "r1"),
        (LEAVE, "b", "r1"),
    ]
    assert f.store.rooms() == ("r2",)
    assert f.store.drop_room("r1") == []
    assert f.store.drop_room("never") == []


def test_reset_forgets_everything_with_leaves() -> None:
    f = Feed()
    f.pair("a", {}, room="r1")
    f.pair("a", {}, room=None)
    version = f.store.version
    events = f.store.reset()
    assert sorted((e.name, e.room or "") for e in events) == [(LEAVE, ""), (LEAVE, "r1")]
    assert f.store.snapshot() == () and f.store.count() == 0 and f.store.rooms() == ()
    assert f.store.version > version
    assert f.store.reset() == []


# ---------------------------------------------------------------- 5. snapshots


def test_snapshots_are_cached_until_something_changes() -> None:
    f = Feed()
    f.pair("a", {"x": 1}, room="r1")
    f.pair("b", {"x": 1}, room="r2")
    all1, r1 = f.store.snapshot(), f.store.snapshot("r1")
    assert f.store.snapshot() is all1 and f.store.snapshot("r1") is r1
    f("update", "a", {"x": 1}, room="r1")  # no change
    assert f.store.snapshot() is all1 and f.store.snapshot("r1") is r1
    r2 = f.store.snapshot("r2")
    f("update", "a", {"x": 2}, room="r1")
    assert f.store.snapshot() is not all1 and f.store.snapshot("r1") is not r1
    assert f.store.snapshot("r2") is r2  # another room's cache survives
    assert r1[0].presence == {"x": 1}  # the old snapshot did not move
    assert f.store.snapshot("r1")[0].presence == {"x": 2}


def test_snapshots_are_immutable() -> None:
    f = Feed()
    f.pair("a", {"x": [1, {"y": 2}]})
    snap = f.store.snapshot()
    assert isinstance(snap, tuple)
    actor = snap[0]
    with pytest.raises(TypeError):
        actor.presence["x"] = 2
    with pytest.raises(TypeError):
        actor.presence["x"][1]["y"] = 3
    with pytest.raises(AttributeError):
        actor.connections = 5  # type: ignore[misc]
    assert actor.presence["x"] == (1, FrozenDict({"y": 2}))


def test_an_actor_presence_record_freezes_its_data_however_it_is_made() -> None:
    """The constructor, _replace and unpickling all go through the freezing __new__."""
    data = {"tags": ["a", {"b": 1}]}
    made = ActorPresence("a", data, "user", 1.5, "r", 2)
    data["tags"].append("c")  # the caller's data is not the record's
    changed = made._replace(presence={"tags": [1]}, connections=3)
    unpickled = pickle.loads(pickle.dumps(made))
    remade = ActorPresence._make(["a", {"tags": ["x"]}, None, None, None, 1])
    for record in (made, changed, unpickled, remade):
        assert type(record) is ActorPresence
        assert type(record.presence) is FrozenDict
        assert type(record.presence["tags"]) is tuple
        with pytest.raises(AttributeError):
            record.presence = {}  # type: ignore[misc]
        hash(record)
    assert made.presence["tags"] == ("a", FrozenDict({"b": 1}))
    assert unpickled == made and (changed.connections, changed.room) == (3, "r")
    assert made.to_dict() == {
        "actorTokenId": "a",
        "actorType": "user",
        "presence": {"tags": ["a", {"b": 1}]},
        "joinedAt": 1.5,
        "roomId": "r",
        "connections": 2,
    }
    assert ActorPresence("x") == ActorPresence("x", {}, None, None, None, 1)
    assert repr(ActorPresence("x")).startswith("ActorPresence(actor_token_id='x', presence=")


def test_views_built_on_the_fast_path_equal_the_public_constructor() -> None:
    """Flat wire data takes a shortcut (tuple.__new__, no freezing): the result must
    be indistinguishable from ActorPresence(...), frozen, and its data a copy."""
    f = Feed()
    wire = {"n": 1, "name": "Ann", "ok": True, "gone": None}
    (join,) = f("join", "a", wire)
    (update,) = f("update", "a", {**wire, "n": 2})
    for event, n in ((join, 1), (update, 2)):
        expected = ActorPresence("a", {**wire, "n": n}, None, WALL, ROOM, 1)
        assert event.actor == expected and hash(event.actor) == hash(expected)
        assert repr(event.actor) == repr(expected)
        assert type(event.actor.presence) is FrozenDict
        with pytest.raises(AttributeError):
            event.actor.room = "x"  # type: ignore[misc]
    wire["n"] = 99  # the caller's dict is not the cache's
    assert f.store.get("a").presence["n"] == 2  # type: ignore[union-attr]
    assert update.previous == join.actor and update.name == UPDATE


def test_version_counts_visible_changes_only() -> None:
    f = Feed()
    v0 = f.store.version
    f.pair("a", {"x": 1})
    v1 = f.store.version
    assert v1 > v0
    f("update", "a", {"x": 1})
    f("leave", "nobody")
    assert f.store.version == v1
    f("join", "a", {"x": 1})  # a second socket: connections changed, no event
    assert f.store.version > v1


def test_snapshot_reuses_views_of_unchanged_members() -> None:
    f = Feed()
    f.pair("a", {})
    f.pair("b", {})
    a_view = f.store.snapshot()[0]
    f("update", "b", {"x": 1})
    assert f.store.snapshot()[0] is a_view


# ---------------------------------------------------------------- 7. lobbies


def lobby_ev(kind: str, room: str, actor: str, data: Any = None) -> LobbyPresence:
    return LobbyPresence(
        kind=kind, lobby_id="lobby-main", room=room, actor_token_id=actor, presence=data
    )


def lobby_snap(rooms: dict[str, dict[str, Any]], initial: bool = False) -> LobbySnapshot:
    return LobbySnapshot(
        lobby_id="main",
        rooms={
            room: {a: entry(a, data, 100.0) for a, data in actors.items()}
            for room, actors in rooms.items()
        },
        initial=initial,
    )


def test_lobby_events_are_quiet_and_counted() -> None:
    lobby = LobbyStore()
    events = lobby.apply_event(lobby_ev("join", "general", "y", {"n": "Y"}))
    events += lobby.apply_event(lobby_ev("update", "general", "y", {"n": "Y"}))
    assert names(events) == [(JOIN, "y", {"n": "Y"})]
    assert events[0].room == "general" and events[0].actor.room == "general"
    assert names(lobby.apply_event(lobby_ev("update", "general", "y", {"n": "Z"}))) == [
        (UPDATE, "y", {"n": "Z"})
    ]
    lobby.apply_event(lobby_ev("join", "general", "y", {"n": "Z"}))  # second socket
    assert lobby.apply_event(lobby_ev("leave", "general", "y", {})) == []
    assert names(lobby.apply_event(lobby_ev("leave", "general", "y", {}))) == [
        (LEAVE, "y", {"n": "Z"})
    ]
    assert lobby.apply_event(lobby_ev("leave", "general", "y", {})) == []
    assert names(lobby.apply_event(lobby_ev("update", "random", "y", "junk"))) == [(JOIN, "y", {})]
    assert lobby.apply_event(lobby_ev("wave", "random", "y")) == []


def test_lobby_snapshot_reconciles() -> None:
    lobby = LobbyStore(wall=lambda: WALL)
    lobby.apply_event(lobby_ev("join", "general", "gone", {}))
    lobby.apply_event(lobby_ev("join", "general", "same", {"v": 1}))
    lobby.apply_event(lobby_ev("join", "random", "changed", {"v": 1}))
    events = lobby.apply_snapshot(
        lobby_snap({"general": {"same": {"v": 1}, "new": {}}, "random": {"changed": {"v": 2}}})
    )
    assert [(e.name, e.room, e.actor.actor_token_id) for e in events] == [
        (LEAVE, "general", "gone"),
        (JOIN, "general", "new"),
        (UPDATE, "random", "changed"),
    ]
    snap = lobby.snapshot()
    assert set(snap) == {"general", "random"}
    assert snap["general"]["same"].joined_at == WALL  # dated by its join event, kept
    assert snap["general"]["new"].joined_at == 100.0  # the snapshot's joinedAt
    assert lobby.snapshot() is snap
    with pytest.raises(TypeError):
        snap["general"]["x"] = snap["general"]["same"]  # type: ignore[index]
    assert lobby.get("changed").room == "random"  # type: ignore[union-attr]
    assert lobby.get("changed", "general") is None
    assert lobby.get("nobody") is None
    assert lobby.rooms() == ("general", "random")
    # a socket count learned from events survives a snapshot (one entry per actor)
    lobby.apply_event(lobby_ev("join", "general", "same", {"v": 1}))
    lobby.apply_snapshot(lobby_snap({"general": {"same": {"v": 1}, "new": {}}}))
    assert lobby.get("same").connections == 2  # type: ignore[union-attr]
    assert lobby.rooms() == ("general",)


def test_lobby_members_are_one_tuple_by_room_then_arrival_and_cached() -> None:
    lobby = LobbyStore()
    lobby.apply_event(lobby_ev("join", "random", "z", {}))
    lobby.apply_event(lobby_ev("join", "general", "y", {}))
    lobby.apply_event(lobby_ev("join", "general", "x", {}))
    everyone = lobby.members()
    assert isinstance(everyone, tuple)
    assert [(a.room, a.actor_token_id) for a in everyone] == [
        ("general", "y"),  # rooms by slug, then the order members appeared
        ("general", "x"),
        ("random", "z"),
    ]
    general = lobby.members("general")
    assert [a.actor_token_id for a in general] == ["y", "x"]
    assert lobby.members() is everyone and lobby.members("general") is general
    assert lobby.members("nosuch") == () and "nosuch" not in lobby._flat  # never cached
    lobby.apply_event(lobby_ev("update", "random", "z", {"v": 1}))
    assert lobby.members() is not everyone and lobby.members("general") is not general
    assert lobby.members() == tuple(
        a for r in ("general", "random") for a in lobby.snapshot()[r].values()
    )


def test_lobby_empty_initial_snapshot_is_not_trusted() -> None:
    lobby = LobbyStore()
    lobby.apply_event(lobby_ev("join", "general", "x", {}))
    version = lobby.version
    assert lobby.apply_snapshot(lobby_snap({}, initial=True)) == []
    assert lobby.apply_snapshot(lobby_snap({"general": {}}, initial=True)) == []
    assert lobby.version == version
    assert [e.name for e in lobby.apply_snapshot(lobby_snap({"general": {}}))] == [LEAVE]
    assert lobby.version > version


def test_lobby_reset() -> None:
    lobby = LobbyStore()
    lobby.apply_snapshot(lobby_snap({"general": {"a": {}}, "random": {"b": {}}}))
    assert sorted(e.actor.actor_token_id for e in lobby.reset()) == ["a", "b"]
    assert lobby.snapshot() == {} and lobby.reset() == []


def test_merge_sockets_groups_by_actor_in_first_seen_order_and_picks_the_newest() -> None:
    from nolag.presence import merge_sockets

    entries = [("bob", 1, "b1"), ("ann", 5, "a1"), ("bob", 3, "b2"), ("ann", 2, "a2")]
    merged = merge_sockets(entries, actor=lambda e: e[0], order=lambda e: e[1])
    assert [(actor, newest[2], len(group)) for actor, newest, group in merged] == [
        ("bob", "b2", 2),
        ("ann", "a1", 2),
    ]


def test_guesses_about_late_broadcasts_are_reported_once_per_room() -> None:
    """A join or leave taken for a listed change's late broadcast is a guess (a new socket
    with the same data looks the same): `take_unsure` names the room, once."""
    f = Feed()
    f.listed(entry("a", {"d": 1}), entry("a", {"d": 1}))  # two sockets, joins not seen
    assert f.store.take_unsure() == set()
    f("join", "a", {"d": 1})  # within the window: a listed socket's late join
    assert f.store.take_unsure() == {ROOM} and f.store.take_unsure() == set()
    f.pair("b", {})
    f.pair("b", {})
    f.listed(entry("a", {"d": 1}), entry("a", {"d": 1}), entry("b", {}))  # b: one socket fewer
    f("leave", "b")  # its late leave: not counted again
    assert f.view("b").connections == 1  # type: ignore[union-attr]
    assert f.store.take_unsure() == {ROOM}
    f.now += 10  # outside every window: events are counted, no guess
    f("join", "a", {"d": 1})
    assert f.view("a").connections == 3 and f.store.take_unsure() == set()  # type: ignore[union-attr]
    f.listed(entry("a", {"d": 1}))
    f("leave", "a")
    f.store.drop_room(ROOM)
    assert f.store.take_unsure() == set()

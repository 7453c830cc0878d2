"""Test helpers and a pytest plugin for apps that use nolag: a real local broker per test.

Installed with nolag-sync, the plugin (entry point ``pytest11``) gives every test suite:

- ``nolag_broker``: a fresh local broker on a free loopback port (needs the ``broker``
  extra), with one token per test actor: ``nolag_broker.token("alice")``;
- ``nolag_client``: a factory of connected clients on that broker,
  ``nolag_client("alice", room="general", presence={...})``, all disconnected at teardown;
- ``nolag_tokens``: the token document the broker loads; override it in a conftest.py to
  declare your own actors and rooms (see `token_document`);
- ``nolag_broker_compat``: the broker's compat mode, ``"local"`` (default) or
  ``"kraken"`` (frames exactly as the real broker Kraken sends them, its lobby quirks
  included). Choose it for a whole run with ``--nolag-broker-compat kraken`` or the ini
  option ``nolag_broker_compat = kraken``, or per test with
  ``@pytest.mark.parametrize("nolag_broker_compat", ["local", "kraken"], indirect=True)``.

Outside pytest, `start_broker` and `wait_until` do the same jobs by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TypedDict, TypeVar

import attrs
import pytest

from nolag.client import NoLag

if TYPE_CHECKING:  # the broker extra (aiohttp) is imported only when a broker starts
    from nolag.broker import EmbeddedBroker

__all__ = [
    "COMPAT_MODES",
    "DEFAULT_ACTORS",
    "DEFAULT_ROOMS",
    "ClientFactory",
    "LobbyEntry",
    "LobbyGrant",
    "LocalBroker",
    "TokenDocument",
    "TokenEntry",
    "TopicEntry",
    "nolag_broker",
    "nolag_broker_compat",
    "nolag_client",
    "nolag_tokens",
    "start_broker",
    "token_document",
    "wait_until",
]

#: test actors (name → actor type); the actor id of each is its name
DEFAULT_ACTORS: Mapping[str, str] = {
    "alice": "user",
    "bob": "user",
    "carol": "user",
    "dave": "user",
    "server": "server",
    "sensor": "device",
}
#: rooms every default actor may use, and the lobby "main" spans
DEFAULT_ROOMS = ("general", "random")
TOKEN_PREFIX = "test-token-"
#: the broker compat modes (nolag.broker.config.COMPAT_MODES, without importing aiohttp)
COMPAT_MODES = ("local", "kraken")
COMPAT_OPTION = "--nolag-broker-compat"
COMPAT_INI = "nolag_broker_compat"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``--nolag-broker-compat`` flag and the ``nolag_broker_compat`` ini option."""
    help_text = (
        "compat mode of the nolag_broker fixture: 'local' (default) or 'kraken' "
        "(frames exactly as the real broker Kraken sends them)"
    )
    group = parser.getgroup("nolag")
    group.addoption(COMPAT_OPTION, choices=COMPAT_MODES, default=None, help=help_text)
    parser.addini(COMPAT_INI, help=help_text, default="local")


T = TypeVar("T")


class TopicEntry(TypedDict):
    """One room a token may use (the real broker's ``allowedTopics`` entry)."""

    pattern: str
    topic: str
    permission: str
    room_id: str
    room_slug: str
    app_id: str
    app_name: str


class LobbyGrant(TypedDict):
    """One lobby a token may observe (an ``allowedLobbies`` entry)."""

    lobby_slug: str
    lobby_id: str


class TokenEntry(TypedDict):
    """What one token grants (the token file's camelCase keys): actor, project, rate, rooms."""

    actorTokenId: str
    projectId: str
    organizationId: str
    actorType: str
    rateLimit: float
    allowedTopics: list[TopicEntry]
    allowedLobbies: list[LobbyGrant]


class LobbyEntry(TypedDict):
    """A lobby of the document: its slug and the internal ids of its rooms."""

    slug: str
    rooms: list[str]


class TokenDocument(TypedDict):
    """A token file's content: ``tokens`` (token → `TokenEntry`), ``lobbies`` (id → entry)."""

    tokens: dict[str, TokenEntry]
    lobbies: dict[str, LobbyEntry]


def token_document(
    actors: Mapping[str, str] = DEFAULT_ACTORS,
    rooms: Iterable[str] = DEFAULT_ROOMS,
    *,
    project: str = "test-project",
    lobbies: Optional[Mapping[str, Iterable[str]]] = None,
    rate_limit: float = 0,
) -> TokenDocument:
    """A token document (the broker's token-file format) with one token per actor.

    Each actor ``name`` gets token ``test-token-<name>``, actor id ``name``, every room in
    `rooms`, and every lobby (default: ``{"main": rooms}``). `rate_limit` 0 is unlimited.
    """
    rooms = list(rooms)
    lobbies = {"main": rooms} if lobbies is None else lobbies
    topics: list[TopicEntry] = [
        {
            "pattern": f"app/{room}/#",
            "topic": f"app-{room}",
            "permission": "pubSub",
            "room_id": f"room-{room}",
            "room_slug": room,
            "app_id": "app",
            "app_name": "app",
        }
        for room in rooms
    ]
    allowed_lobbies: list[LobbyGrant] = [
        {"lobby_slug": slug, "lobby_id": f"lobby-{slug}"} for slug in lobbies
    ]
    tokens: dict[str, TokenEntry] = {
        f"{TOKEN_PREFIX}{name}": {
            "actorTokenId": name,
            "projectId": project,
            "organizationId": f"{project}-org",
            "actorType": actor_type,
            "rateLimit": rate_limit,
            "allowedTopics": topics,
            "allowedLobbies": allowed_lobbies,
        }
        for name, actor_type in actors.items()
    }
    lobby_map: dict[str, LobbyEntry] = {
        f"lobby-{slug}": {"slug": slug, "rooms": [f"room-{r}" for r in lobby_rooms]}
        for slug, lobby_rooms in lobbies.items()
    }
    return {"tokens": tokens, "lobbies": lobby_map}


@attrs.frozen(slots=True)
class LocalBroker:
    """A running local broker and the tokens it accepts (actor name → token)."""

    broker: EmbeddedBroker
    tokens: Mapping[str, str]

    @property
    def url(self) -> str:
        """The WebSocket URL to give clients (ws://127.0.0.1:<port>/ws)."""
        return self.broker.url

    @property
    def http_url(self) -> str:
        """The base URL of the REST endpoint (http://127.0.0.1:<port>)."""
        return self.broker.http_url

    def token(self, actor: str) -> str:
        """The token of a declared actor; KeyError names the actors there are."""
        try:
            return self.tokens[actor]
        except KeyError:
            raise KeyError(
                f"no test actor {actor!r}; declared: {', '.join(sorted(self.tokens))}"
            ) from None

    def stop(self) -> None:
        """Stop the broker (its clients lose their connection and start reconnecting)."""
        self.broker.stop()

    def start(self) -> None:
        """Start a stopped broker again on the same port."""
        self.broker.start()


def start_broker(document: Optional[Mapping[str, Any]] = None, **config: Any) -> LocalBroker:
    """Start a local broker on a free loopback port with `document`'s tokens (default actors).

    `config` are BrokerConfig fields (idle_timeout, compat="kraken", ...). Stop it with
    ``.stop()``.
    """
    try:
        from nolag.broker import EmbeddedBroker
        from nolag.broker.tokens import parse_tokens
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            f"the local broker needs the broker extra ({exc}): pip install 'nolag-sync[broker]'"
        ) from exc
    document = token_document() if document is None else document
    store = parse_tokens(dict(document))
    embedded = EmbeddedBroker(tokens=store, **config).start()
    names = {
        str(entry["actorTokenId"]): token
        for token, entry in dict(document.get("tokens", {})).items()
    }
    return LocalBroker(broker=embedded, tokens=names)


def wait_until(
    predicate: Callable[[], Optional[T]], timeout: float = 5.0, interval: float = 0.01
) -> T:
    """Poll `predicate` until truthy and return its value; AssertionError after `timeout` s.

    The value keeps its type without ``None``: ``wait_until(lambda: client.get_presence("bob"))``
    is an ``ActorPresence``. Presence travels through a broker, so tests wait for what they
    expect instead of sleeping. `interval` is the pause between two calls, in seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate!r}")
        time.sleep(interval)


class ClientFactory(Protocol):
    """The type of the ``nolag_client`` fixture."""

    def __call__(
        self,
        actor: str = "alice",
        *,
        room: Optional[str] = None,
        presence: Optional[Mapping[str, Any]] = None,
        connect: bool = True,
        **options: Any,
    ) -> NoLag: ...


@pytest.fixture
def nolag_tokens() -> TokenDocument:
    """The token document `nolag_broker` loads; override it to declare your own actors."""
    return token_document()


@pytest.fixture
def nolag_broker_compat(request: pytest.FixtureRequest) -> str:
    """The compat mode of `nolag_broker`: an indirect parameter, else the command-line
    flag, else the ini option (default ``"local"``)."""
    value = getattr(request, "param", None)
    source = "the nolag_broker_compat parameter"
    if value is None:
        value = request.config.getoption(COMPAT_OPTION)
        source = COMPAT_OPTION
    if value is None:
        value = request.config.getini(COMPAT_INI) or "local"
        source = f"the ini option {COMPAT_INI}"
    value = str(value).strip()
    if value not in COMPAT_MODES:
        pytest.fail(f"{source} must be one of {', '.join(COMPAT_MODES)}, not {value!r}")
    return value


@pytest.fixture
def nolag_broker(
    nolag_tokens: Mapping[str, Any], nolag_broker_compat: str
) -> Iterator[LocalBroker]:
    """A fresh local broker on a free loopback port for one test, stopped afterwards."""
    try:
        broker = start_broker(nolag_tokens, compat=nolag_broker_compat)
    except ImportError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def nolag_client(nolag_broker: LocalBroker) -> Iterator[ClientFactory]:
    """A factory of clients on `nolag_broker`: ``nolag_client("bob", room="general")``.

    `actor` is a declared actor's name (or any other string, used as the token as is);
    `room` becomes the client's default room; with `presence`, the client announces it
    (in `room`) as soon as it connects; `connect=False` returns it unconnected. `options`
    are NoLagOptions fields. Every client is disconnected at teardown.
    """
    clients: list[NoLag] = []

    def make(
        actor: str = "alice",
        *,
        room: Optional[str] = None,
        presence: Optional[Mapping[str, Any]] = None,
        connect: bool = True,
        **options: Any,
    ) -> NoLag:
        token = nolag_broker.tokens.get(actor, actor)
        options.setdefault("connect_timeout", 5.0)
        if room is not None:
            options.setdefault("default_room", room)
        client = NoLag(token, url=nolag_broker.url, **options)
        clients.append(client)
        if presence is not None:
            client.set_presence(presence, room=room)
        if connect:
            client.connect()
        return client

    yield make
    for client in clients:
        client.disconnect()

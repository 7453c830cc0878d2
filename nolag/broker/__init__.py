"""The local NoLag-compatible broker (``nolag-sync[broker]``), built on aiohttp.

It speaks the real broker's wire protocol on ``/ws`` (without its defects, plus the
compatible extensions in PROTOCOL.md; or, with ``compat="kraken"``, exactly as the real
broker Kraken does: docs/brokers.md), serves ``GET /v1/presence`` and ``/health``, and
can run in a background thread (:class:`EmbeddedBroker`) or from the command line
(:func:`main`).
"""

from __future__ import annotations

from .cli import main
from .config import BrokerConfig
from .embedded import EmbeddedBroker
from .tokens import Identity, RoomAccess, TokenFileError, TokenStore, load_tokens

__all__ = [
    "BrokerConfig",
    "EmbeddedBroker",
    "Identity",
    "RoomAccess",
    "TokenFileError",
    "TokenStore",
    "load_tokens",
    "main",
]

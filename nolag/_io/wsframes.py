"""Server-to-client WebSocket frame parsing, sans-IO and batched (RFC 6455, section 5).

websocket-client opens the connection and sends; receiving one frame at a time through
it costs several Python calls and small socket reads per frame. `FrameReader` instead
takes whatever a large ``sock.recv()`` returned and yields every complete message in it,
keeping a partial frame for the next read. It is complete for the direction it serves:
fragmented messages, control frames between fragments, the close frame, size limits,
and frames split at any byte. A peer that breaks the protocol gets `WebSocketViolation`,
with the close code the RFC asks for.
"""

from __future__ import annotations

from typing import Union

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Close",
    "FrameReader",
    "Message",
    "Ping",
    "Pong",
    "WebSocketViolation",
]

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


class WebSocketViolation(Exception):
    """The server broke the framing rules; `code` is the close code to answer with."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Message:
    """A complete text message (its fragments joined); binary messages come as bytes."""

    __slots__ = ("opcode", "payload")

    def __init__(self, opcode: int, payload: bytes) -> None:
        self.opcode = opcode
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and (self.opcode, self.payload) == (
            other.opcode,
            other.payload,
        )

    def __repr__(self) -> str:
        more = "..." if len(self.payload) > 32 else ""
        return f"Message({self.opcode}, {self.payload[:32]!r}{more})"


class Ping:
    """A ping: answer it with a pong carrying the same payload."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ping) and self.payload == other.payload

    def __repr__(self) -> str:
        return f"Ping({self.payload!r})"


class Pong:
    """A pong (an answer to our ping, or unsolicited): only proof of life."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pong) and self.payload == other.payload

    def __repr__(self) -> str:
        return f"Pong({self.payload!r})"


class Close:
    """The server's close frame: code (None if it gave none) and reason."""

    __slots__ = ("code", "reason")

    def __init__(self, code: Union[int, None], reason: str) -> None:
        self.code = code
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Close) and (self.code, self.reason) == (other.code, other.reason)

    def __repr__(self) -> str:
        return f"Close({self.code}, {self.reason!r})"


#: what feed() returns: a binary message is just its bytes (the common case, kept cheap)
Event = Union[bytes, Message, Ping, Pong, Close]

_VALID_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def _message(opcode: int, payload: bytes) -> Union[bytes, Message]:
    """A complete message: a binary one as its bytes, a text one (valid UTF-8, RFC 6455
    8.1) as a Message."""
    if opcode == OP_BINARY:
        return payload
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketViolation("text message is not UTF-8", CLOSE_INVALID_DATA) from None
    return Message(opcode, payload)


def _close_payload(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise WebSocketViolation("close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
        raise WebSocketViolation(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketViolation("close reason is not UTF-8", CLOSE_INVALID_DATA) from None
    return Close(code, reason)


class FrameReader:
    """Feed it bytes from the socket; it returns the complete messages and control frames.

    A binary message comes back as its bytes, a text message as a `Message`.

    `max_message` bounds a message (all its fragments) in bytes and `max_fragments` in
    frames, so a hostile server cannot make the client buffer without limit, neither with
    a huge message nor with millions of empty continuation frames (each costs a list slot
    and a bytes object although it carries nothing). After a violation or a close the
    reader is spent.
    """

    __slots__ = (
        "_buf",
        "_frag_opcode",
        "_frag_size",
        "_fragments",
        "closed",
        "max_fragments",
        "max_message",
        "only_binary",
    )

    def __init__(self, max_message: int = 16 * 1024 * 1024, max_fragments: int = 1024) -> None:
        self._buf = b""
        self._fragments: list[bytes] = []
        self._frag_opcode = 0  # opcode of the message being reassembled, 0 when none
        self._frag_size = 0
        self.max_message = max_message
        self.max_fragments = max_fragments
        self.closed = False
        #: True when the last feed() returned binary messages (bytes) and nothing else
        self.only_binary = True

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes of the stream; return every event they complete, in order."""
        if self.closed:
            if not data:
                return []
            raise WebSocketViolation("data after the close frame")
        buf = self._buf + data if self._buf else data
        end = len(buf)
        pos = 0
        events: list[Event] = []
        append = events.append
        self.only_binary = True
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 == 0x82 and b1 < 126 and b1 <= self.max_message and not self._frag_opcode:
                # the hot path: a whole, short, unmasked binary message
                stop = pos + 2 + b1
                if stop > end:
                    break
                append(buf[pos + 2 : stop])
                pos = stop
                continue
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if length < 126:
                    raise WebSocketViolation("non-minimal 16-bit frame length")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                if length >> 63:
                    raise WebSocketViolation("64-bit frame length with the top bit set")
                if length < 65536:
                    raise WebSocketViolation("non-minimal 64-bit frame length")
                head = 10
            if b1 & 0x80:
                raise WebSocketViolation("the server masked a frame")
            if b0 & 0x70:
                raise WebSocketViolation("reserved bits set without an extension")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= 0x8:
                if length > 125:
                    raise WebSocketViolation("control frame longer than 125 bytes")
                if not fin:
                    raise WebSocketViolation("fragmented control frame")
            elif length > self.max_message - self._frag_size:
                raise WebSocketViolation(
                    f"message over the {self.max_message}-byte limit", CLOSE_TOO_BIG
                )
            stop = pos + head + length
            if stop > end:
                break
            payload = buf[pos + head : stop]
            pos = stop
            if opcode != OP_BINARY and (opcode != OP_CONT or self._frag_opcode != OP_BINARY):
                self.only_binary = False  # maybe a control frame or a text message
            if opcode in (OP_BINARY, OP_TEXT):
                if self._frag_opcode:
                    raise WebSocketViolation("a new message before the last one was finished")
                if fin:
                    append(_message(opcode, payload))
                else:
                    self._frag_opcode = opcode
                    self._fragments = [payload]
                    self._frag_size = length
            elif opcode == OP_CONT:
                if not self._frag_opcode:
                    raise WebSocketViolation("continuation frame without a message to continue")
                if len(self._fragments) >= self.max_fragments:
                    raise WebSocketViolation(
                        f"message in over {self.max_fragments} fragments", CLOSE_TOO_BIG
                    )
                self._fragments.append(payload)
                self._frag_size += length
                if fin:
                    append(_message(self._frag_opcode, b"".join(self._fragments)))
                    self._frag_opcode = 0
                    self._fragments = []
                    self._frag_size = 0
            elif opcode == OP_PING:
                append(Ping(payload))
            elif opcode == OP_PONG:
                append(Pong(payload))
            elif opcode == OP_CLOSE:
                append(_close_payload(payload))
                self.closed = True
                self._buf = b""
                return events
            else:
                raise WebSocketViolation(f"unknown opcode {opcode:#x}")
        self._buf = buf[pos:] if pos < end else b""
        return events

"""Everything with sockets, threads or clocks: the transport, the loop, REST, per-process state.

Nothing outside this package opens a socket, starts a loop thread or arms a timer; the
rest of the SDK is pure (session, protocol, store) or the thin facade that wires them.
"""

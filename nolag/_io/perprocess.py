"""One shared object per process: built on first use, dropped in a forked child.

The read loop and the timer scheduler each own a thread and locks; a forked child has
neither the thread nor a usable lock, so it must build its own object, not reuse the
parent's.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Generic, Optional, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A lazily built, process-wide `T`; a forked child gets a fresh one on its first use.

    `abandon`, if given, is called in the child with the parent's object (without its
    thread) to release what the child inherited, such as descriptors.
    """

    def __init__(self, build: Callable[[], T], abandon: Optional[Callable[[T], None]] = None):
        self._build = build
        self._abandon = abandon
        self._value: Optional[T] = None
        self._pid = 0
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def get(self) -> T:
        """This process's object, built now if there is none yet."""
        value = self._value
        if value is not None and self._pid == os.getpid():
            return value
        with self._lock:
            if self._value is None or self._pid != os.getpid():
                self._value = self._build()
                self._pid = os.getpid()
            return self._value

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it while forking
        value, self._value = self._value, None
        if value is not None and self._abandon is not None:
            self._abandon(value)

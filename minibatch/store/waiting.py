"""The wake-up side of the store contract: a :class:`Waiter` blocks until a stream may have new messages.

Stores that can push wake-ups subclass it (SQLite: the database file
changed; MongoDB: a change stream); the default only sleeps.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minibatch.store.base import Store


class Waiter:
    """Blocks until a stream may have new messages.

    The default implementation only sleeps: it is what a store without push
    wake-ups gives. ``wait()`` returning True means "something changed, look
    now"; False means the timeout passed. A spurious True is allowed, a missed
    change is not (callers poll on timeout anyway).

    The two capability attributes are read by the consumer loop to choose how
    long it may wait between looks at the store. A waiter may clear them on
    itself once it finds the server cannot push after all.
    """
    supported: bool = False
    """The waiter does push wake-ups: ``wait()`` returns soon after a message is
    appended, so a consumer may wait long between polls."""
    sees_all_changes: bool = False
    """It wakes on every change that can make messages available (inserts, and
    updates such as retries and requeues), not only on appends, so no
    follow-up polls are needed after a wake-up."""

    def __init__(self, store: Store, stream: str) -> None:
        self.store = store
        self.stream = stream

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if the stream may have changed, False on timeout."""
        time.sleep(timeout)
        return False

    def close(self) -> None:
        """Stop watching (threads, cursors). Idempotent; ``wait()`` must not be called afterwards."""

"""Wake-ups of the embedded store: watching the database files, never querying the database."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from minibatch.store.base import Waiter

if TYPE_CHECKING:
    from minibatch.store.sqlite import SQLiteStore


class FileWaiter(Waiter):
    """Wakes when the database files change; polls file metadata every few ms, never the database.

    Any commit by any process changes the -wal file (and the wal-index header
    in -shm, whose change counter moves even when a rewritten WAL keeps its size
    within one mtime tick). Writes to other streams wake it too: spurious
    wake-ups are allowed, missed ones are not.
    """
    poll = 0.005
    # every commit is seen, so a consumer may wait long between checks of the store
    supported = True
    sees_all_changes = True
    store: SQLiteStore

    def __init__(self, store: SQLiteStore, stream: str) -> None:
        super().__init__(store, stream)
        self._seen = self._signature()

    def _signature(self) -> list[object]:
        path = self.store.path
        signature: list[object] = []
        for suffix in ('', '-wal'):
            try:
                st = os.stat(path + suffix)
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                signature.append(None)
        try:
            with open(path + '-shm', 'rb') as shm:
                signature.append(shm.read(48))  # the wal-index header (its first copy)
        except OSError:
            signature.append(None)
        return signature

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            signature = self._signature()
            if signature != self._seen:
                self._seen = signature
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(self.poll, remaining))

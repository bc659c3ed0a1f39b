"""The second half of the storage contract: windows, consumers, inspection and retention.

:class:`~minibatch.store.base.Store` inherits it; the first half (streams and the
message life cycle) and the module's overview are in :mod:`minibatch.store.base`.
A store implements the abstract methods of both.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from minibatch.errors import NotSupportedByStore
from minibatch.store.records import Message, RecordId, WindowRecord


class StoreUpkeep(abc.ABC):
    """Windows, consumer records, inspection and retention: part of every store's contract."""

    if TYPE_CHECKING:
        def describe(self) -> str: ...  # declared and documented by Store

    # -- windows ----------------------------------------------------------
    @abc.abstractmethod
    def save_window(self, name: str, data: list[Any], query: list[Any] | None = None,
                    token: str | None = None) -> RecordId:
        """Record an emitted window (``processed`` False); ``commit(window_id=...)`` marks it processed.

        ``token`` is the claim its messages are held under: once no message is
        held under it any more (the consumer died and :meth:`expire_leases`
        gave them back), ``expire_leases`` removes the record if it is still
        unprocessed, so a dead consumer leaves no stale window behind.
        One write; returns its id. Data the store cannot keep raises InvalidMessage.
        """

    @abc.abstractmethod
    def windows(self, name: str, processed: bool | None = None) -> list[WindowRecord]:
        """Return the :class:`WindowRecord` list of ``name``, oldest first, optionally by ``processed``.

        Read-only; [] when there are none.
        """

    # -- consumers --------------------------------------------------------
    @abc.abstractmethod
    def heartbeat(self, name: str, consumer: str, info: Mapping[str, Any]) -> None:
        """Record that ``consumer`` (an id unique per consumer) of stream ``name`` is alive.

        ``info`` is a dict of plain values (host, pid, counters, rate); the
        record is replaced as a whole (last call wins) and stamped with ``seen``
        (now, naive UTC). One write, atomic. Info the store cannot keep raises
        InvalidMessage. Returns None.
        """

    @abc.abstractmethod
    def consumers(self, name: str) -> list[dict[str, Any]]:
        """Return the consumer records of ``name``: dicts of their ``info`` plus ``id`` and ``seen``.

        Read-only; ordered by id; [] when no consumer ever reported. Records
        stay after a consumer stopped or died (``seen`` tells), until
        ``forget_consumers`` removes them.
        """

    @abc.abstractmethod
    def forget_consumers(self, name: str, older_than: float) -> int:
        """Remove consumer records of ``name`` not seen for ``older_than`` seconds.

        Removes data; returns the count (0 when none is that old).
        """

    # -- inspection and housekeeping --------------------------------------
    @abc.abstractmethod
    def messages(self, name: str, state: str | None = None, limit: int | None = None) -> list[Message]:
        """Return messages of ``name`` in any (or the given) state, oldest first, at most ``limit``.

        Read-only; [] when there are none.
        """

    @abc.abstractmethod
    def counts(self, name: str) -> dict[str, int]:
        """Return a dict with the number of messages per state (every key of STATES), ``windows`` and ``expired``.

        ``expired`` is the running total of messages the retention limit
        (``max_age``, :meth:`housekeep`) removed before they were processed.
        Read-only; all zeros for an empty or unknown stream.
        """

    @abc.abstractmethod
    def housekeep(self, name: str, max_age: float) -> tuple[int, int]:
        """Apply the retention limit: remove what stream ``name`` holds that was created over ``max_age`` s ago.

        Removes data, processed or not: messages waiting (available, due for
        a retry) and done, and processed window records. Claimed messages are
        left to the consumer holding them (a later round removes them if they
        come back), and dead letters stay until purged: they are kept to be
        inspected. The number of messages removed before they were processed
        is added to the stream's ``expired`` total (see :meth:`counts`), in
        the same transaction where the store has them (SQLite; MongoDB adds
        it right after the delete). Returns ``(removed, expired)``: records
        removed in all, and how many of them were never processed; ``(0, 0)``
        when nothing is that old.
        """

    def queryset(self, document: type) -> Any:
        """A mongoengine queryset of ``document`` (Buffer, Window, Stream) over this store's data.

        Only where ``querysets`` is true; the default raises
        :class:`~minibatch.errors.NotSupportedByStore`. Read-only until the caller writes through it.
        """
        raise NotSupportedByStore(f'mongoengine querysets need the MongoDB store, not {self.describe()}')

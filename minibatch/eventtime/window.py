"""What an event-time window function receives: :class:`EventWindow`."""
from __future__ import annotations

import datetime
from typing import Any

from minibatch.store.base import utcnow


class EventWindow:
    """One (key, window) of events, handed to the function (and pickled to worker processes).

    :ivar key: the key of its events (as read from the messages; JSON values, so a tuple key reads as a list)
    :ivar start: the window's start, a naive UTC datetime (inclusive); None for count windows per key
    :ivar end: its end, a naive UTC datetime (exclusive); None for count windows per key
    :ivar data: the key's events in ``[start, end)``, in event-time order (ties in append order)
    :ivar late: True for a window of late events (``on_late='window'`` or a callable), else False
    :ivar stream: the stream name
    :ivar processed: True once committed
    """

    def __init__(self, stream: str, data: list[Any], key: Any, start: datetime.datetime | None,
                 end: datetime.datetime | None,
                 late: bool = False, id: Any = None) -> None:
        self.stream, self.data, self.key, self.start, self.end, self.late = stream, data, key, start, end, late
        self.id = id
        self.processed = False
        self.created = utcnow()
        self.query: list[Any] = []

    def __repr__(self) -> str:
        late = ', late' if self.late else ''
        span = '' if self.start is None or self.end is None else \
            f' [{self.start.isoformat()}, {self.end.isoformat()}),'
        return f'EventWindow({self.stream!r}, key={self.key!r},{span} {len(self.data)} events{late})'

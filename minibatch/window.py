"""The window strategies minibatch ships: :class:`CountWindow`, :class:`RelaxedTimeWindow`, :class:`FixedTimeWindow`.

Each is a :class:`~minibatch.emitter.WindowEmitter` (importable from here too, as
in minibatch 0.6) that decides when a window is ready and which messages go
into it; docs/windows.rst describes them, and how to write your own.
"""
import datetime
import time

from minibatch.emitter import WindowEmitter, validate_emitter_class  # noqa: F401 (0.6's import path)
from minibatch.errors import InvalidWindowSpec
from minibatch.store.base import utcnow

__all__ = ['WindowEmitter', 'CountWindow', 'RelaxedTimeWindow', 'FixedTimeWindow', 'validate_emitter_class']


class CountWindow(WindowEmitter):
    """Emit windows of exactly ``size`` messages, oldest first.

    ``CountWindow(stream, size=None, interval=None)`` as in minibatch 0.6:
    ``size`` is the count (default 1; given only ``interval``, that is the
    count); ``interval`` was, in 0.6, the pause between looks (default
    0.01 s). It is kept as an attribute, but an idle consumer here is woken
    by the store when messages arrive and otherwise polls with a backoff
    (see docs/compatibility.rst), so it no longer sets the pace.

    Waits until ``size`` messages are available (fresh messages: as in 0.6),
    with one exception: a message that failed and is due for a retry
    (``attempts > 0``) does not wait for company. A window is also ready when
    fewer than ``size`` messages are available and one of them is a retry;
    it then holds what is available, so a failed message is tried again
    about its backoff later, and dead-lettered after ``max_attempts``, even
    on a quiet stream. With competing consumers, a consumer that could claim
    only part of a window of fresh messages gives it back and retries.
    """

    strict_options = True
    #: windows' worth of messages read per query: one read serves several windows
    #: (messages never change once appended, and claims settle who gets them)
    LOOKAHEAD = 5
    #: ... but never more messages than this per read
    MAX_LOOKAHEAD = 2000

    def __init__(self, stream_name, size=None, interval=None, **kwargs):
        count = size if size is not None else (interval if interval is not None else 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidWindowSpec(f'CountWindow needs size >= 1 (an integer), got {count!r}')
        look = interval if interval is not None else 0.01
        if isinstance(look, bool) or not isinstance(look, (int, float)) or look <= 0:
            raise InvalidWindowSpec(f'CountWindow interval is seconds between looks (> 0), got {interval!r}')
        super().__init__(stream_name, interval=look, size=count, **kwargs)
        self._ahead = []  # available messages read ahead, oldest first

    def window_ready(self):
        if len(self._ahead) < self.size:
            limit = max(self.size, min(self.size * self.LOOKAHEAD, self.MAX_LOOKAHEAD))
            self._ahead = self.buffer(limit=limit)
        candidates = self._ahead[:self.size]
        return len(candidates) >= self.size or _has_retry(candidates), (candidates,)

    def query(self, candidates=()):
        return list(candidates)

    def process(self, qs):
        claimed = self.claim(qs)
        # whether we got them or another consumer did, these are gone; competing
        # consumers then move on to the next window read ahead instead of all
        # racing again for the oldest one (only a short read-ahead is read anew)
        ahead = self._ahead
        if qs and len(ahead) >= len(qs) and all(a is m for a, m in zip(ahead, qs)):
            self._ahead = ahead[len(qs):]  # the usual case: the window was the head of the read-ahead
        else:
            tried = {getattr(m, 'id', m) for m in qs}
            self._ahead = [m for m in ahead if m.id not in tried]
        for _ in range(3):  # others took some: top up from the next available messages
            if len(claimed) >= self.size or not claimed:
                break
            more = self.buffer(limit=self.size - len(claimed))
            if not more:
                break
            extra = self.store.claim(self.stream_name, more, claimed[0].token, self.lease)
            for message in extra:
                message.token = claimed[0].token
            claimed += extra
        if claimed and len(claimed) < self.size and not _has_retry(claimed):
            self.store.unclaim(self.stream_name, claimed[0].token, [m.id for m in claimed])
            return []
        if len(claimed) > self.size:
            # offered more than a window (a custom query()): the rest waits for the next one, untouched
            extra = claimed[self.size:]
            self.store.unclaim(self.stream_name, extra[0].token, [m.id for m in extra])
            claimed = claimed[:self.size]
        # a full window is claimed; processfn then chooses what of it is emitted
        return self.select(claimed)


def _has_retry(messages):
    """True when one of ``messages`` is delivered again after a failure: it may go in a short window."""
    return any(getattr(m, 'attempts', 0) for m in messages)


class _TimeWindow(WindowEmitter):
    def __init__(self, stream_name, interval=None, **kwargs):
        super().__init__(stream_name, interval=interval, **kwargs)
        interval = self.interval  # as in 0.6: 1 second when not given
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise InvalidWindowSpec(f'{type(self).__name__} needs interval > 0 (seconds), got {interval!r}')
        self.interval = float(interval)
        #: most messages in one time window; the rest go to the next one (bounded memory)
        self.max_window = int(self.kwargs.pop('max_window', 100_000))

    def query(self, since=None, until=None):
        return self.buffer(limit=self.max_window, until=until)


class RelaxedTimeWindow(_TimeWindow):
    """Every ``interval`` seconds, emit all messages that arrived since the last window.

    Messages are not guaranteed to belong to a given time slot (use
    :class:`FixedTimeWindow` for that).
    """
    strict_options = True

    def __init__(self, stream_name, interval=None, **kwargs):
        super().__init__(stream_name, interval=interval, **kwargs)
        self._next = time.monotonic() + self.interval

    def window_ready(self):
        if time.monotonic() < self._next:
            return False, ()
        self._next = time.monotonic() + self.interval
        return True, (None, utcnow())

    def timestamp(self, *args):
        now = super().timestamp()
        self.store.update_stream(self.stream_name, last_read=now)
        return now

    def due_in(self):
        return max(0.0, self._next - time.monotonic())


class FixedTimeWindow(_TimeWindow):
    """Emit the messages of consecutive, fixed slots of ``interval`` seconds.

    The slots follow the stream's ``last_read``; each slot is handed to exactly
    one consumer by an atomic compare-and-set of ``last_read``. A window holds
    the messages created before the slot's end that were not yet delivered
    (messages of an earlier slot that failed and are retried join the next one).

    When the slots are more than ``MAX_CATCH_UP`` behind the clock (no
    consumer ran for a while), the missed slots are merged into one window
    that ends at the last full slot, rather than cut one by one.
    """
    strict_options = True
    MAX_CATCH_UP = 10

    def __init__(self, stream_name, interval=None, **kwargs):
        super().__init__(stream_name, interval=interval, **kwargs)
        self._last_read = None

    def window_ready(self):
        if self._last_read is None:
            info = self.store.get_stream(self.stream_name)
            self._last_read = info.last_read
        now = utcnow()
        slots = int((now - self._last_read).total_seconds() // self.interval)
        if slots < 1:
            return False, ()
        start = self._last_read
        slot_end = start + datetime.timedelta(seconds=self.interval * (slots if slots > self.MAX_CATCH_UP else 1))
        won = self.store.compare_and_set_last_read(self.stream_name, start, slot_end)
        # winner or not, the next slot starts where the store says it does
        self._last_read = slot_end if won else None
        return won, (start, slot_end)

    def due_in(self):
        if self._last_read is None:
            return 0.0
        slot_end = self._last_read + datetime.timedelta(seconds=self.interval)
        return max(0.0, (slot_end - utcnow()).total_seconds())

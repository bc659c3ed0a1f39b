"""``minibatch tail -f``: print new messages of a stream as they arrive, without taking any.

The store contract has no "messages after id X" query, so each look reads
the stream's messages and prints those not seen before (ids are compared as
a set: MongoDB ObjectIds of several producers are not strictly ordered).
Looks happen when the store's waiter signals a change, at least once a
second, and at most every ``MIN_GAP`` seconds, so a busy stream is not read
continuously. Cost per look grows with the stream: a tool for watching, not
a consumer.
"""
import time

from minibatch.store.base import DEAD

#: shortest pause between two reads of the stream while following
MIN_GAP = 0.1
#: longest pause: stores without push wake-ups are looked at this often anyway
MAX_GAP = 1.0


def shown(messages):
    """The messages ``tail`` prints: all but dead letters (``minibatch dead-letters list`` shows those)."""
    return [m for m in messages if m.state != DEAD]


def follow_messages(store, name, waiter, current, emit, timeout=None):
    """Call ``emit(message)`` for each message of ``name`` not in ``current``, until ``timeout``.

    Blocking; read-only. ``current`` is the last full read (every state, so
    a dead letter that is requeued later is not printed twice). Returns when
    ``timeout`` seconds have passed (never when None; Ctrl-C raises
    KeyboardInterrupt to the caller).
    """
    seen = {m.id for m in current}
    deadline = None if timeout is None else time.monotonic() + timeout
    last_read = time.monotonic()
    while True:
        remaining = MAX_GAP if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return
        waiter.wait(min(MAX_GAP, remaining))
        gap = MIN_GAP - (time.monotonic() - last_read)
        if gap > 0:
            time.sleep(gap)
        current = store.messages(name)
        last_read = time.monotonic()
        for message in shown(current):
            if message.id not in seen:
                emit(message)
        seen = {m.id for m in current}

"""An idle consumer does not spin on the store, yet wakes up for new messages."""
import threading
import time

import minibatch as mb
from minibatch.store import get_store
from tests.helpers import wait_until

#: store operations that reach the database
OPERATIONS = ('find_available', 'claim', 'expire_leases', 'renew', 'get_stream', 'compare_and_set_last_read',
              'update_stream', 'counts', 'save_window', 'commit', 'housekeep')


def count_operations(store, monkeypatch):
    calls = []
    lock = threading.Lock()
    for name in OPERATIONS:
        original = getattr(store, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            with lock:
                calls.append((time.monotonic(), _name))
            return _original(*args, **kwargs)
        monkeypatch.setattr(store, name, counted)
    return calls


#: store operations over IDLE_WINDOW seconds that only a spinning consumer reaches: one that
#: polls without backing off makes hundreds. How few an idle consumer really makes is a
#: measurement, not a test: `bash benchmarks/run` reports it (scenario "idle"), as it does
#: the latency from an append to the function (scenario "latency_*").
SPINNING = 40
IDLE_WINDOW = 2.0


def operations_while_idle(calls, settle=1.0, window=IDLE_WINDOW, ignore=()):
    """Store operations in ``window`` seconds, after ``settle`` seconds for the poll interval to back off."""
    time.sleep(settle)
    start = time.monotonic()
    time.sleep(window)
    return [name for t, name in calls if start <= t < start + window and name not in ignore]


def test_idle_consumer_does_not_spin_and_still_wakes(store_url, monkeypatch):
    stream = mb.stream('idle', url=store_url)
    calls = count_operations(get_store(store_url), monkeypatch)
    seen = []
    em = mb.streaming('idle', size=1, url=store_url, executor='inline', blocking=False)(
        lambda window: seen.extend(window.data))
    try:
        idle_calls = operations_while_idle(calls)
        assert len(idle_calls) < SPINNING, f'an idle consumer spins: {len(idle_calls)} store operations'
        stream.append({'x': 1})
        wait_until(lambda: seen, timeout=10, message='the idle consumer to wake for an append')
    finally:
        em.stop()
        em.thread.join(timeout=30)
    assert seen == [{'x': 1}]


def test_a_long_window_does_not_make_the_consumer_spin(store_url, monkeypatch):
    stream = mb.stream('busy', url=store_url)
    stream.append({'x': 1})
    calls = count_operations(get_store(store_url), monkeypatch)
    started, release = threading.Event(), threading.Event()

    def slow(window):
        started.set()
        release.wait(30)

    # two workers: one runs the long window, the other is free and waits for messages
    em = mb.streaming('busy', size=1, url=store_url, executor='thread', workers=2, blocking=False)(slow)
    try:
        assert started.wait(30)
        busy_calls = operations_while_idle(calls, ignore=('renew',))
        assert len(busy_calls) < SPINNING, f'a consumer waiting on its window spins: {len(busy_calls)} operations'
    finally:
        release.set()
        em.stop()
        em.thread.join(timeout=30)
    wait_until(lambda: stream.stats()['available'] == 0, timeout=10, message='the long window committed')

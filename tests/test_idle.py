"""An idle consumer must not hammer the store, yet must wake up for new messages."""
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


def test_idle_consumer_issues_few_operations_and_still_wakes(store_url, monkeypatch):
    stream = mb.stream('idle', url=store_url)
    calls = count_operations(get_store(store_url), monkeypatch)
    seen = []
    em = mb.streaming('idle', size=1, url=store_url, executor='inline', blocking=False)(
        lambda window: seen.extend(window.data))
    try:
        time.sleep(1.0)  # let the poll interval back off to its idle maximum
        start = time.monotonic()
        time.sleep(4.0)  # the measured idle period
        idle_calls = [name for t, name in calls if start <= t < start + 4.0]
        assert len(idle_calls) <= 4 * 3, f'{len(idle_calls)} store operations in 4 s idle: {idle_calls}'
        stream.append({'x': 1})
        wait_until(lambda: seen, timeout=10)
    finally:
        em.stop()
        em.thread.join(timeout=30)
    assert seen == [{'x': 1}]


def test_a_long_window_does_not_make_the_consumer_poll(store_url, monkeypatch):
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
        time.sleep(1.0)  # let the poll interval back off
        start = time.monotonic()
        time.sleep(3.0)
        busy_calls = [name for t, name in calls if start <= t < start + 3.0 and name != 'renew']
        assert len(busy_calls) <= 3 * 3, f'{len(busy_calls)} store operations in 3 s: {busy_calls}'
    finally:
        release.set()
        em.stop()
        em.thread.join(timeout=30)
    assert stream.stats()['available'] == 0

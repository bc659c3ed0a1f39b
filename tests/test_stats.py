"""stream.stats(): one set of figures, from store counts and the reports of running consumers."""
import datetime
import threading

import minibatch as mb
from minibatch.status import is_alive, stream_stats
from minibatch.store.base import utcnow
from minibatch.window import CountWindow

from tests.helpers import wait_until


def test_stats_of_empty_stream_are_zero(store_url):
    stream = mb.stream('empty', url=store_url)
    stats = stream.stats()
    assert {k: stats[k] for k in ('backlog', 'in_flight', 'processed', 'failed', 'dead_lettered', 'rate',
                                  'consumers_alive')} == dict(backlog=0, in_flight=0, processed=0, failed=0,
                                                              dead_lettered=0, rate=0, consumers_alive=0)
    assert stats['consumers'] == []


def test_running_consumer_reports_processed_failed_and_stops(store_url, monkeypatch):
    monkeypatch.setattr(CountWindow, 'HEARTBEAT', 0.2)
    stream = mb.stream('figures', url=store_url)
    stream.append([{'i': i} for i in range(10)])
    stream.append({'i': 'poison'})

    def fn(window):
        if any(m['i'] == 'poison' for m in window.data):
            raise ValueError('poison')

    emitter = mb.make_emitter('figures', fn, size=1, url=store_url, executor='inline', max_attempts=2,
                              retry_backoff=0)
    thread = threading.Thread(target=emitter.run)
    thread.start()
    try:
        # processed and failed come from the consumer's reports, dead letters from the store
        stats = wait_until(lambda: (lambda s: s if (s['processed'], s['failed'], s['dead_lettered']) == (10, 2, 1)
                                    else None)(stream.stats()), timeout=20,
                           message='10 processed, 2 failed attempts and 1 dead letter reported')
        assert stats['consumers_alive'] == 1
        assert stats['backlog'] == 0 and stats['in_flight'] == 0
        (record,) = stats['consumers']
        assert record['id'] == emitter.consumer_id and record['alive'] and record['state'] == 'running'
        assert record['rate'] >= 0
    finally:
        emitter.stop()
        thread.join(30)
    stats = stream.stats()
    assert stats['consumers_alive'] == 0 and stats['consumers'][0]['state'] == 'stopped'
    assert stats['processed'] == 10  # figures outlive the consumer's run


def test_backlog_and_in_flight_come_from_the_store(store_url):
    stream = mb.stream('counts', url=store_url)
    stream.append([{'i': i} for i in range(5)])
    store = stream.store
    store.claim('counts', [m.id for m in store.find_available('counts', limit=2)], 'tok', 30)
    stats = stream.stats()
    assert (stats['backlog'], stats['in_flight'], stats['available'], stats['claimed']) == (3, 2, 3, 2)


def test_a_silent_consumer_is_not_alive(store_url):
    stream = mb.stream('silent', url=store_url)
    stream.store.heartbeat('silent', 'c1', {'state': 'running', 'heartbeat': 1.0, 'processed': 4, 'rate': 2.5})
    assert stream.stats()['consumers_alive'] == 1 and stream.stats()['rate'] == 2.5
    later = utcnow() + datetime.timedelta(seconds=10)
    stats = stream_stats(stream.store, 'silent', now=later)
    assert stats['consumers_alive'] == 0 and stats['rate'] == 0 and stats['processed'] == 4
    assert not is_alive(stats['consumers'][0], later)
    assert stream.forget_consumers(older_than=3600) == 0


def test_consumer_reports_how_long_its_windows_ran(store_url):
    # the histogram behind the dashboard's minibatch_window_duration_seconds
    import time
    from minibatch.report import BOUNDS
    stream = mb.stream('durations', url=store_url)

    def slowish(window):
        time.sleep(0.03)

    em = mb.streaming('durations', size=2, url=store_url, executor='inline', blocking=False)(slowish)
    try:
        stream.append([{'i': i} for i in range(6)])
        wait_until(lambda: em.stats['committed'] == 3, timeout=30, message='3 windows committed')
    finally:
        em.stop()
        em.thread.join(30)
    [report] = [c for c in stream.store.consumers('durations') if c['id'] == em.consumer_id]
    hist = report['window_seconds']
    assert hist['le'] == list(BOUNDS) and len(hist['counts']) == len(BOUNDS) + 1
    assert sum(hist['counts']) == 3
    assert sum(hist['counts'][:BOUNDS.index(0.025) + 1]) == 0, 'each window slept 0.03 s'
    assert 0.09 <= hist['sum'] < 30

"""timeout= per window, and a stopping consumer that exits even when a function never returns (issue 12, item 7).

A window past its timeout is a failed attempt (retried, then dead-lettered with
"timed out after N s"); what runs it is stopped as far as its executor allows:
a process pool is killed and replaced, a thread abandoned, an async task
cancelled, an inline function interrupted by SIGALRM in the main thread.
"""
import asyncio
import math
import os
import signal
import threading
import time

import pytest

import minibatch as mb
from minibatch.errors import ConfigurationError, InvalidWindowSpec
from tests.helpers import ListSink, settled, wait_until
from tests.test_reliability import events, start_consumer, stop_all

#: set at the end of each test: a thread-executor function stuck on it returns, so no thread outlives its test
RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def release_stuck_threads():
    RELEASE.clear()
    yield
    RELEASE.set()


@pytest.mark.parametrize('option, value', [
    ('timeout', 0), ('timeout', -1), ('timeout', '5'), ('timeout', True), ('timeout', math.nan),
    ('timeout', math.inf), ('stop_grace', -0.5), ('stop_grace', math.nan), ('stop_grace', 'soon'),
])
def test_bad_timeouts_are_refused_where_written(option, value):
    with pytest.raises(ConfigurationError, match=f'{option} must be'):
        mb.streaming('bad', url='sqlite:///:memory:', **{option: value})


@pytest.mark.parametrize('option, value', [('lease', math.nan), ('lease', math.inf), ('retry_backoff', math.nan),
                                           ('lease', 10 ** 400)])
def test_nan_and_infinite_leases_are_refused(option, value):
    # NaN passed `lease <= 0` unnoticed: a lease that never expires, or always has
    with pytest.raises(InvalidWindowSpec, match=f'{option} must be'):
        mb.streaming('bad', url='sqlite:///:memory:', **{option: value})


def test_good_timeouts_are_kept_as_floats(store_url):
    em = mb.streaming('good', url=store_url, timeout=2, stop_grace=0).make(None)
    assert (em.timeout, em.stop_grace) == (2.0, 0.0)
    em = mb.streaming('good', url=store_url).make(None)
    assert (em.timeout, em.stop_grace) == (None, em.STOP_GRACE)


def consume_until(url, name, fn, dead, processed, **options):
    """Run a background consumer of stream ``name`` until ``dead`` messages are dead-lettered and its sink got
    ``processed`` windows; stop it, check it ended cleanly, and return it and its sink."""
    stream = mb.stream(name, url=url)
    sink = ListSink()
    em = mb.streaming(name, url=url, sink=sink, blocking=False, **{'size': 1, **options})(fn)
    try:
        wait_until(lambda: stream.stats()['dead'] == dead and len(sink.items) == processed, timeout=60,
                   message=f'{dead} dead-lettered and {processed} windows processed')
    finally:
        em.stop()
        em.thread.join(30)
    assert not em.thread.is_alive() and em.error is None, em.error
    return em, sink


def stuck_unless_told(window):
    """Never returns for a message with ``stuck``: spins in a process, waits for RELEASE in a thread."""
    if any(message.get('stuck') for message in window.data):
        if threading.current_thread() is threading.main_thread():  # a pool worker process: killed at the timeout
            while True:
                pass
        RELEASE.wait(60)
        window.data[0]['returned late'] = True
    return window.data


@pytest.mark.parametrize('executor', ['process', 'thread'])
def test_a_stuck_window_times_out_is_retried_and_dead_lettered(store_url, executor):
    name = f'stuck-{executor}'
    stream = mb.stream(name, url=store_url)
    stream.append([{'stuck': True}] + [{'i': i} for i in range(4)])
    sink = ListSink()
    started = time.monotonic()
    em = mb.streaming(name, size=1, url=store_url, executor=executor, workers=2, timeout=0.5, max_attempts=2,
                      retry_backoff=0.05, sink=sink, blocking=False)(stuck_unless_told)
    try:
        wait_until(lambda: stream.stats()['dead'] == 1 and len(sink.items) == 4, timeout=30,
                   message='the stuck window dead-lettered and the others processed')
        took = time.monotonic() - started
        [dead] = stream.dead_letters()
        assert dead.data == {'stuck': True} and dead.attempts == 2, 'each timeout counted one attempt'
        assert 'timed out after 0.5 s' in dead.error
        assert em.stats['failed'] == 2 and em.stats['dead'] == 1
        assert took < 15, f'two timeouts of 0.5 s took {took:.1f}s'
        # a window after the timeouts still runs: the pool (or thread) was replaced, not lost
        stream.append({'i': 4})
        wait_until(lambda: len(sink.items) == 5, timeout=30, message='a later window processed')
        if executor == 'thread':
            RELEASE.set()  # the abandoned threads return now: what they return is ignored
            wait_until(lambda: settled(stream), timeout=10, message='all settled')
    finally:
        em.stop()
        em.thread.join(30)
    assert not em.thread.is_alive() and em.error is None, em.error
    assert sorted(item[0]['i'] for item in sink.items) == [0, 1, 2, 3, 4]
    assert stream.stats()['dead'] == 1 and em.stats['committed'] == 5


def test_isolate_splits_a_timed_out_window_down_to_the_stuck_message(store_url):
    stream = mb.stream('isolate-stuck', url=store_url)
    stream.append([{'i': 0}, {'stuck': True}, {'i': 1}, {'i': 2}])
    em, sink = consume_until(store_url, 'isolate-stuck', stuck_unless_told, dead=1, processed=2, size=4,
                             isolate=True, executor='thread', workers=4, timeout=0.3, max_attempts=1)
    assert [m.data for m in stream.dead_letters()] == [{'stuck': True}]
    assert sorted(m['i'] for window in sink.items for m in window) == [0, 1, 2], 'the others committed'


def sleeps_on_first_delivery(window):
    """The stuck message spins for ever; another sleeps long the first time only (a marker file tells)."""
    message = window.data[0]
    if message.get('stuck'):
        while True:
            pass
    if not os.path.exists(message['marker']):
        open(message['marker'], 'w').close()
        time.sleep(30)  # interrupted when the pool is killed for the stuck window
    return window.data


def test_other_windows_of_a_pool_killed_for_a_timeout_are_given_back_uncounted(tmp_path):
    url = 'sqlite:///' + str(tmp_path / 'store.db')
    marker = str(tmp_path / 'first-delivery')
    stream = mb.stream('killed-pool', url=url)
    # the stuck window is cut first, so it times out while the other still runs in the same pool
    stream.append([{'stuck': True}, {'marker': marker}])
    em, sink = consume_until(url, 'killed-pool', sleeps_on_first_delivery, dead=1, processed=1, executor='process',
                             workers=2, timeout=2, max_attempts=1)
    assert os.path.exists(marker), 'the other window had started in the killed pool'
    assert [m.data for m in stream.dead_letters()] == [{'stuck': True}], \
        'with max_attempts=1 the interrupted window would be dead too, had it counted an attempt'
    assert sink.items == [[{'marker': marker}]]
    assert em.stats['failed'] == 1


def test_an_abandoned_thread_is_replaced_and_never_waited_for():
    from minibatch.executors import ThreadExecutor
    pool = ThreadExecutor(max_workers=1)
    stuck = pool.submit(RELEASE.wait, 60)
    queued = pool.submit(lambda: 'queued')
    wait_until(lambda: stuck.running(), timeout=5, message='the stuck call running')
    assert pool.abandon(stuck), 'a running call is abandoned'
    assert queued.result(timeout=5) == 'queued', 'a new thread took over the queue'
    pool.shutdown(wait=True)  # returns at once: abandoned threads are not joined
    assert stuck.running(), 'still running: a thread cannot be killed'
    assert not pool.abandon(queued), 'a finished call cannot be abandoned'
    RELEASE.set()
    assert stuck.result(timeout=5) is True, 'what an abandoned call returns still reaches its future'
    with pytest.raises(RuntimeError, match='after shutdown'):
        pool.submit(print)


CANCELLED = []


async def awaits_for_ever_when_stuck(window):
    if window.data[0].get('stuck'):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            CANCELLED.append(window.data[0])
            raise
    return window.data


def test_an_async_window_is_cancelled_at_its_timeout(store_url):
    CANCELLED.clear()
    stream = mb.stream('async-stuck', url=store_url)
    stream.append([{'stuck': True}, {'i': 0}, {'i': 1}])
    consume_until(store_url, 'async-stuck', awaits_for_ever_when_stuck, dead=1, processed=2, timeout=0.3,
                  max_attempts=2, retry_backoff=0.05)
    wait_until(lambda: len(CANCELLED) == 2, timeout=5, message='both attempts cancelled inside the coroutine')
    [dead] = stream.dead_letters()
    assert dead.attempts == 2 and 'timed out after 0.3 s' in dead.error and 'cancelled' in dead.error


async def blocks_the_loop(window):
    RELEASE.wait(60)  # a blocking call in a coroutine: no await, so nothing can cancel it


def test_a_stopped_async_consumer_ends_even_if_a_coroutine_blocks_its_loop(store_url, monkeypatch):
    from minibatch.asyncio_executor import AsyncioExecutor
    monkeypatch.setattr(AsyncioExecutor, 'STOP_JOIN', 0.5)
    stream = mb.stream('async-blocked', url=store_url)
    stream.append({'i': 0})
    em = mb.streaming('async-blocked', url=store_url, stop_grace=0.2, blocking=False)(blocks_the_loop)
    wait_until(lambda: stream.stats()['claimed'] == 1, timeout=30, message='the window running')
    em.stop()
    em.thread.join(10)
    assert not em.thread.is_alive(), 'the consumer ended, its loop still blocked'
    assert [(m.data, m.attempts) for m in stream.store.find_available('async-blocked')] == [({'i': 0}, 0)]


def spins(window):
    while True:
        pass


def swallows_the_timeout(window):
    try:
        time.sleep(10)
    except BaseException:
        return window.data  # pretends all went well


@pytest.mark.parametrize('fn', [spins, swallows_the_timeout])
def test_an_inline_function_is_interrupted_in_the_main_thread(store_url, fn):
    assert threading.current_thread() is threading.main_thread()
    stream = mb.stream('inline-stuck', url=store_url)
    stream.append({'i': 0})
    sink = ListSink()
    em = mb.streaming('inline-stuck', size=1, url=store_url, executor='inline', timeout=0.3, sink=sink,
                      retry_backoff=10).make(fn)
    previous = signal.getsignal(signal.SIGALRM)
    other_timer = signal.getitimer(signal.ITIMER_REAL)[0]  # pytest-timeout's, if it runs with signals
    started = time.monotonic()
    try:
        em.run(blocking=False)
    finally:
        em.close()
    assert time.monotonic() - started < 5
    assert sink.items == [] and em.stats['failed'] == 1
    stats = stream.stats()
    assert stats['retry'] == 1 and stats['claimed'] == 0, 'released for a retry, an attempt counted'
    assert signal.getsignal(signal.SIGALRM) is previous, 'the SIGALRM handler is restored'
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    assert (0 < left <= other_timer) if other_timer else left == 0, 'an interval timer set before is put back'


@pytest.mark.parametrize('executor', ['process', 'thread'])
def test_a_stopped_consumer_exits_after_its_grace_even_if_a_function_never_returns(tmp_path, executor):
    url = 'sqlite:///' + str(tmp_path / 'store.db')
    stream = mb.stream('never-returns', url=url)
    stream.append([{'i': 0}, {'i': 1}])
    proc = start_consumer(url, 'never-returns', tmp_path, size=1, executor=executor, workers=2, slow=3600,
                          stop_grace=0.5)
    try:
        wait_until(lambda: len(events(tmp_path, 'start')) == 2, timeout=60, message='both windows running',
                   alive=[proc])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, 'the consumer exits 0.5 s after SIGTERM, its functions still running'
    finally:
        stop_all([proc])
    waiting = stream.store.find_available('never-returns')
    assert sorted((m.data['i'], m.attempts) for m in waiting) == [(0, 0), (1, 0)], \
        'given back untouched: available at once, no attempt counted'
    assert not [pid for pid, _ in events(tmp_path, 'start') if pid != proc.pid and process_alive(pid)], \
        'no worker process outlives its consumer'


def process_alive(pid):
    """True if ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not count)."""
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

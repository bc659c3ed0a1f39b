"""Reliability shown, not claimed: competing consumers, kill -9, poison, stops.

Consumers run as real processes (tests/consumer_process.py) against every store.
"""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import minibatch as mb
from tests.helpers import ListSink, complete_records, default_sigint, settled, wait_until

HERE = os.path.dirname(__file__)
CONSUMER = os.path.join(HERE, 'consumer_process.py')


def start_consumer(url, stream, outdir, **options):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get('PYTHONPATH', '')]))
    # SIGINT as Ctrl-C gives it, even when the suite itself runs with SIGINT ignored
    return subprocess.Popen([sys.executable, CONSUMER, url, stream, str(outdir), json.dumps(options)], env=env,
                            preexec_fn=default_sigint)


def events(outdir, event):
    """All logged windows of kind ``event`` as (pid, ids) pairs."""
    found = []
    for path in glob.glob(os.path.join(str(outdir), '*.jsonl')):
        found += [(record['pid'], record['ids']) for record in complete_records(path) if record['event'] == event]
    return found


def delivered(outdir):
    return [i for _, ids in events(outdir, 'done') for i in ids]


def stop_all(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_competing_consumers_process_each_message_exactly_once(store_url, tmp_path):
    n = 3000
    stream = mb.stream('competing', url=store_url)
    # slow=0.02: each window takes a little time, so that no consumer can take
    # every window before the others are up (the sharing assertion below)
    procs = [start_consumer(store_url, 'competing', tmp_path, size=100, executor='inline', lease=30, slow=0.02)
             for _ in range(3)]
    try:
        wait_until(lambda: len(glob.glob(os.path.join(str(tmp_path), 'ready-*'))) == 3, timeout=60,
                   message='consumers started', alive=procs)
        stream.append([{'i': i} for i in range(n)])
        wait_until(lambda: len(delivered(tmp_path)) >= n, timeout=240, message=f'{n} messages delivered', alive=procs)
    finally:
        stop_all(procs)
    got = delivered(tmp_path)
    assert sorted(got) == list(range(n)), 'every message exactly once'
    assert len({pid for pid, _ in events(tmp_path, 'done')}) >= 2, 'the work was shared between consumers'
    assert all(len(ids) == 100 for _, ids in events(tmp_path, 'done'))
    assert settled(stream)
    assert all(proc.returncode == 0 for proc in procs), 'SIGTERM stops a consumer cleanly'


def test_competing_consumers_with_process_pools(store_url, tmp_path):
    n = 600
    stream = mb.stream('pooled', url=store_url)
    stream.append([{'i': i} for i in range(n)])
    procs = [start_consumer(store_url, 'pooled', tmp_path, size=20, executor='process', workers=2, lease=30)
             for _ in range(2)]
    try:
        wait_until(lambda: len(delivered(tmp_path)) >= n, timeout=180, message=f'{n} messages delivered', alive=procs)
        wait_until(lambda: settled(stream), timeout=30, message='all windows committed')
    finally:
        stop_all(procs)
    assert sorted(delivered(tmp_path)) == list(range(n))


def test_sigkill_mid_window_loses_nothing(store_url, tmp_path):
    n = 30
    stream = mb.stream('killed', url=store_url)
    stream.append([{'i': i} for i in range(n)])
    victim = start_consumer(store_url, 'killed', tmp_path, size=10, executor='inline', lease=1.5, slow=30)
    try:
        wait_until(lambda: events(tmp_path, 'start'), timeout=60, message='the first window to start', alive=[victim])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        cut_short = events(tmp_path, 'start')[0][1]
        assert not events(tmp_path, 'done'), 'the killed window never finished'
        successor = start_consumer(store_url, 'killed', tmp_path, size=10, executor='inline', lease=1.5)
        try:
            wait_until(lambda: len(set(delivered(tmp_path))) >= n, timeout=120, message='redelivery', alive=[successor])
            wait_until(lambda: settled(stream), timeout=30, message='all windows committed')
        finally:
            stop_all([successor])
    finally:
        stop_all([victim])
    assert sorted(delivered(tmp_path)) == list(range(n)), 'each message delivered (once by the successor)'
    assert set(cut_short) <= set(delivered(tmp_path))
    assert stream.dead_letters() == []


def test_poison_message_is_dead_lettered_while_others_flow(store_url, tmp_path):
    stream = mb.stream('poisoned', url=store_url)
    stream.append([{'i': i, 'poison': i == 7} for i in range(20)])
    proc = start_consumer(store_url, 'poisoned', tmp_path, size=1, executor='inline', max_attempts=3,
                          retry_backoff=0.05, poison=True)
    try:
        wait_until(lambda: len(delivered(tmp_path)) >= 19, timeout=120, message='the good messages', alive=[proc])
        wait_until(lambda: stream.dead_letters(), timeout=60, message='a dead letter')
    finally:
        stop_all([proc])
    assert sorted(delivered(tmp_path)) == [i for i in range(20) if i != 7]
    attempts = [ids for _, ids in events(tmp_path, 'start') if ids == [7]]
    assert len(attempts) == 3, 'tried exactly max_attempts times'
    dead = stream.dead_letters()
    assert [m.data['i'] for m in dead] == [7]
    assert dead[0].attempts == 3
    assert 'ValueError: poison message' in dead[0].error
    assert settled(stream)
    # inspected and fixed: put it back, it is available again with a fresh attempt count
    assert stream.requeue() == 1
    assert stream.dead_letters() == []
    waiting = stream.store.find_available('poisoned')
    assert [(m.data['i'], m.attempts) for m in waiting] == [(7, 0)]


def test_sigterm_finishes_the_running_window(store_url, tmp_path):
    stream = mb.stream('graceful', url=store_url)
    stream.append([{'i': i} for i in range(4)])
    proc = start_consumer(store_url, 'graceful', tmp_path, size=4, executor='inline', slow=1.5)
    try:
        wait_until(lambda: events(tmp_path, 'start'), timeout=60, message='the window to start')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        stop_all([proc])
    assert sorted(delivered(tmp_path)) == [0, 1, 2, 3], 'the running window completed'
    assert settled(stream), 'and was committed, not left for redelivery'


def test_long_window_renews_its_lease(store_url, tmp_path):
    stream = mb.stream('renewed', url=store_url)
    stream.append([{'i': i} for i in range(5)])
    slow = start_consumer(store_url, 'renewed', tmp_path, size=5, executor='thread', workers=1, lease=1.0,
                          slow=4)
    try:
        wait_until(lambda: events(tmp_path, 'start'), timeout=60, message='the slow window to start')
        rival = start_consumer(store_url, 'renewed', tmp_path, size=5, executor='inline', lease=1.0)
        try:
            wait_until(lambda: delivered(tmp_path), timeout=60, message='the slow window to finish')
            wait_until(lambda: settled(stream), timeout=30, message='commit')
        finally:
            stop_all([rival])
    finally:
        stop_all([slow])
    assert len(events(tmp_path, 'start')) == 1, 'nobody else got the messages while the lease was renewed'
    assert sorted(delivered(tmp_path)) == list(range(5))


def test_in_flight_windows_are_bounded_by_workers(store_url):
    import threading
    stream = mb.stream('bounded', url=store_url)
    stream.append([{'i': i} for i in range(40)])
    lock = threading.Lock()
    running = {'now': 0, 'max': 0, 'seen': []}
    observed_claims = []

    def work(window):
        with lock:
            running['now'] += 1
            running['max'] = max(running['max'], running['now'])
        observed_claims.append(stream.stats()['claimed'])
        time.sleep(0.05)
        with lock:
            running['now'] -= 1
            running['seen'].extend(m['i'] for m in window.data)

    em = mb.streaming('bounded', size=2, url=store_url, executor='thread', workers=2, blocking=False)(work)
    try:
        wait_until(lambda: len(running['seen']) >= 40, timeout=120, message='all windows')
    finally:
        em.stop()
        em.thread.join(timeout=30)
    assert sorted(running['seen']) == list(range(40))
    assert running['max'] <= 2
    assert max(observed_claims) <= 4, 'never more than workers x size messages claimed'


def test_fixed_time_slots_are_handed_out_once(store_url, tmp_path):
    stream = mb.stream('slots', url=store_url)
    procs = [start_consumer(store_url, 'slots', tmp_path, interval=0.3, relaxed=False, executor='inline')
             for _ in range(2)]
    try:
        wait_until(lambda: len(glob.glob(os.path.join(str(tmp_path), 'ready-*'))) == 2, timeout=60,
                   message='consumers started')
        for i in range(30):
            stream.append({'i': i})
            time.sleep(0.03)  # spread the messages over several slots
        wait_until(lambda: len(delivered(tmp_path)) >= 30, timeout=120, message='all messages', alive=procs)
    finally:
        stop_all(procs)
    assert sorted(delivered(tmp_path)) == list(range(30))
    assert len(events(tmp_path, 'done')) >= 2, 'the messages were spread over several slots'


def test_ctrl_c_lets_pool_windows_finish(store_url, tmp_path):
    stream = mb.stream('interrupted', url=store_url)
    stream.append([{'i': i} for i in range(4)])
    proc = start_consumer(store_url, 'interrupted', tmp_path, size=4, executor='process', workers=1, slow=1.5)
    try:
        wait_until(lambda: events(tmp_path, 'start'), timeout=60, message='the window to start', alive=[proc])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        stop_all([proc])
    assert sorted(delivered(tmp_path)) == [0, 1, 2, 3], 'the worker was not interrupted'
    assert settled(stream), 'the finished window was committed'


def test_ctrl_c_in_an_inline_function_gives_the_window_back(store_url, tmp_path):
    stream = mb.stream('interrupted-inline', url=store_url)
    stream.append([{'i': i} for i in range(4)])
    proc = start_consumer(store_url, 'interrupted-inline', tmp_path, size=4, executor='inline', slow=30)
    try:
        wait_until(lambda: events(tmp_path, 'start'), timeout=60, message='the window to start', alive=[proc])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        stop_all([proc])
    assert delivered(tmp_path) == []
    waiting = stream.store.find_available('interrupted-inline')
    assert [(m.data['i'], m.attempts) for m in waiting] == [(0, 0), (1, 0), (2, 0), (3, 0)], \
        'available again at once, no attempt counted'


def test_worker_killed_by_a_message_is_replaced_and_the_message_dead_lettered(store_url, tmp_path):
    stream = mb.stream('crashing', url=store_url)
    stream.append([{'i': i, 'crash': i == 3} for i in range(10)])
    proc = start_consumer(store_url, 'crashing', tmp_path, size=1, executor='process', workers=2, max_attempts=2,
                          retry_backoff=0.05, crash=True)
    try:
        wait_until(lambda: len(delivered(tmp_path)) >= 9, timeout=120, message='the other messages', alive=[proc])
        wait_until(lambda: stream.dead_letters(), timeout=60, message='the crashing message dead-lettered',
                   alive=[proc])
        wait_until(lambda: settled(stream), timeout=30, message='all settled', alive=[proc])
    finally:
        stop_all([proc])
    assert set(delivered(tmp_path)) == set(range(10)) - {3}
    dead = stream.dead_letters()
    assert [m.data['i'] for m in dead] == [3]
    assert 'worker process died' in dead[0].error
    assert dead[0].attempts == 2


def test_one_round_keeps_the_lease_of_a_long_window(store_url):
    """run(blocking=False) waits for its window; meanwhile nobody else may take the messages."""
    import threading
    stream = mb.stream('one-long-round', url=store_url)
    stream.append([{'i': i} for i in range(3)])
    calls = []

    def slow(window):
        calls.append([m['i'] for m in window.data])
        time.sleep(2.5)  # several leases long

    em = mb.streaming('one-long-round', size=3, url=store_url, executor='thread', workers=1, lease=0.6).make(slow)
    rival_saw = []
    rival = mb.streaming('one-long-round', size=3, url=store_url, executor='inline', lease=0.6).make(
        lambda window: rival_saw.append(window.data))
    runner = threading.Thread(target=em.run, kwargs={'blocking': False})
    runner.start()
    try:
        wait_until(lambda: calls, timeout=30, message='the long window to start')
        while runner.is_alive():
            rival.run(blocking=False)  # would take the messages if the lease had lapsed
            time.sleep(0.1)
    finally:
        runner.join(timeout=30)
        em.close()
    assert calls == [[0, 1, 2]] and rival_saw == []
    assert settled(stream)


@pytest.mark.parametrize('executor', ['inline', 'thread', 'process'])
def test_sys_exit_in_the_function_is_a_failed_attempt_and_the_consumer_goes_on(store_url, executor):
    name = f'exit-{executor}'
    stream = mb.stream(name, url=store_url)
    stream.append([{'exit': True}, {'exit': False}, {'exit': False}])
    sink = ListSink()
    em = mb.streaming(name, size=1, url=store_url, executor=executor, workers=1, sink=sink, max_attempts=2,
                      retry_backoff=0.05, blocking=False)(exits_when_told)
    try:
        wait_until(lambda: stream.stats()['dead'] == 1 and len(sink.items) == 2, timeout=60,
                   message='the exiting window dead-lettered and the others processed')
    finally:
        em.stop()
        em.thread.join(30)
    assert em.error is None, em.error
    [dead] = stream.dead_letters()
    assert dead.data == {'exit': True} and dead.attempts == 2 and 'SystemExit' in dead.error
    assert sorted(map(str, sink.items)) == [str([{'exit': False}])] * 2


def exits_when_told(window):
    import sys
    if window.data[0]['exit']:
        sys.exit(3)
    return window.data


def test_isolate_in_a_running_consumer_dead_letters_only_the_poison(store_url):
    name = 'isolate-live'
    stream = mb.stream(name, url=store_url)
    sink = ListSink()
    em = mb.streaming(name, size=8, url=store_url, executor='inline', sink=sink, max_attempts=2,
                      retry_backoff=0.05, isolate=True, blocking=False)(fails_on_poison)
    try:
        stream.append([{'i': i, 'poison': i == 2} for i in range(8)])
        wait_until(lambda: sum(map(len, sink.items)) == 7, timeout=60, message='the 7 good messages')
        # alone, the poison is retried after its backoff without waiting for 7 fresh messages
        # (CountWindow: a window holding a retry runs with what is there), and then dead-lettered
        wait_until(lambda: stream.stats()['dead'] == 1, timeout=60, message='the poison dead-lettered')
        assert [(m.data['i'], m.attempts) for m in stream.dead_letters()] == [(2, 2)]
        stream.append([{'i': i, 'poison': False} for i in range(8, 15)])  # 7: no full window yet
        stream.append({'i': 15, 'poison': False})
        wait_until(lambda: sum(map(len, sink.items)) == 15, timeout=60, message='the next 8 good ones processed')
    finally:
        em.stop()
        em.thread.join(30)
    assert em.error is None, em.error
    assert [m.data['i'] for m in stream.dead_letters()] == [2]
    assert sorted(m['i'] for items in sink.items for m in items) == [i for i in range(16) if i != 2]
    assert settled(stream)


def fails_on_poison(window):
    if any(m['poison'] for m in window.data):
        raise ValueError('poison message')
    return window.data

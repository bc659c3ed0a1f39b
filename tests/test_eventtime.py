"""Keyed event-time windows (issue 13): windows by event time per key, grace, the watermark, late events,
closing by the clock, hopping and session windows; on both stores (the store_url fixture)."""
import datetime
import threading
import time

import pytest

import minibatch as mb
from minibatch.consumer import make_emitter
from minibatch.eventtime import EventTimeWindow, hopping, session, tumbling

from tests.helpers import ListSink, wait_until

T0 = datetime.datetime(1970, 1, 1)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


class Collect:
    """The window function (inline executor): records (key, start s, end s, values, late)."""

    def __init__(self, fail_keys=()):
        self.windows = []
        self.fail_keys = set(fail_keys)

    def __call__(self, window):
        if window.key in self.fail_keys:
            raise ValueError(f'fails for {window.key}')
        self.windows.append((window.key, (window.start - T0).total_seconds(), (window.end - T0).total_seconds(),
                             [d['v'] for d in window.data], window.late))


def consumer(store_url, name, fn, **options):
    options.setdefault('window', tumbling(10))
    options.setdefault('key', 'k')
    options.setdefault('time', 'ts')
    options.setdefault('close_by_clock', False)
    return make_emitter(name, fn, url=store_url, executor='inline', **options)


def rounds(em, n=10):
    for _ in range(n):
        em.run(blocking=False)


def events(*specs):
    return [{'k': k, 'ts': ts, 'v': v} for k, ts, v in specs]


def test_out_of_order_within_grace_lands_in_its_window_per_key(store_url):
    stream = mb.stream('readings', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'readings', fn, grace=5)
    stream.append(events(('a', 3, 1), ('b', 4, 2), ('a', 12, 3), ('a', 1, 4), ('a', 14, 5)))
    rounds(em)
    assert fn.windows == []  # watermark 14 - 5 = 9 < 10: the first windows are still open
    stream.append(events(('a', 8, 6), ('b', 14, 7)))  # 8: out of order by 6 s, within the grace
    rounds(em)
    assert fn.windows == []
    stream.append(events(('c', 15, 8)))  # watermark 15 - 5 = 10: windows [0, 10) close
    rounds(em)
    assert sorted(fn.windows) == [('a', 0, 10, [4, 1, 6], False), ('b', 0, 10, [2], False)]
    assert stream.store.counts('readings')['available'] == 4  # the open windows' events wait in the stream
    assert em.stats['late'] == 0


def test_window_bounds_are_naive_utc_datetimes_aligned_to_the_epoch(store_url):
    stream = mb.stream('bounds', url=store_url)
    got = []
    em = consumer(store_url, 'bounds', got.append, window=tumbling(datetime.timedelta(minutes=1)), key=None)
    stream.append([{'ts': '2026-03-01T10:00:59+02:00', 'v': 1}, {'ts': datetime.datetime(2026, 3, 1, 8, 0, 1), 'v': 2},
                   {'ts': '2026-03-01T08:02:00', 'v': 3}])
    rounds(em)
    (window,) = got
    assert window.key is None and window.late is False
    assert (window.start, window.end) == (datetime.datetime(2026, 3, 1, 8, 0), datetime.datetime(2026, 3, 1, 8, 1))
    assert window.start.tzinfo is None
    assert [d['v'] for d in window.data] == [2, 1]  # event-time order, not append order


def test_late_event_is_dead_lettered_naming_key_and_window(store_url):
    stream = mb.stream('late', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'late', fn, grace=2)
    stream.append(events(('a', 1, 1), ('a', 13, 2)))
    rounds(em)
    assert fn.windows == [('a', 0, 10, [1], False)]
    stream.append(events(('a', 9, 3), ('a', 12, 4)))  # 9 is late: [0, 10) was emitted; 12 is on time
    rounds(em)
    (dead,) = stream.store.dead_letters('late')
    assert dead.data['v'] == 3
    assert 'late' in dead.error and '"a"' in dead.error
    assert '[1970-01-01T00:00:00, 1970-01-01T00:00:10)' in dead.error
    assert em.stats['late'] == 1
    assert stream.store.counts('late')['available'] == 2  # 13 and 12 wait for [10, 20)


def test_event_behind_the_watermark_is_late_even_if_its_window_was_never_opened(store_url):
    stream = mb.stream('behind', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'behind', fn, grace=1)
    stream.append(events(('a', 30, 1), ('b', 5, 2)))  # b's window [0, 10) ended before watermark 29
    rounds(em)
    assert fn.windows == []
    assert [m.data['v'] for m in stream.store.dead_letters('behind')] == [2]


def after_a_closed_window(store_url, name, *late, **options):
    """A consumer that emitted a's [0, 10) (11 is waiting in [10, 20)), then gets ``late`` events of it."""
    stream = mb.stream(name, url=store_url)
    fn = Collect()
    em = consumer(store_url, name, fn, **options)
    stream.append(events(('a', 1, 1), ('a', 11, 2)))
    rounds(em)
    stream.append(events(*late))
    rounds(em)
    return stream, fn, em


def test_on_late_window_delivers_late_events_as_a_late_window(store_url):
    stream, fn, em = after_a_closed_window(store_url, 'latewin', ('a', 2, 3), ('a', 3, 4), on_late='window')
    assert fn.windows == [('a', 0, 10, [1], False), ('a', 0, 10, [3, 4], True)]
    assert stream.store.counts('latewin')['dead'] == 0
    assert em.stats['late'] == 2


def test_on_late_drop_counts_and_removes(store_url):
    stream, fn, em = after_a_closed_window(store_url, 'latedrop', ('a', 2, 3), on_late='drop')
    counts = stream.store.counts('latedrop')
    assert (counts['dead'], counts['available']) == (0, 1)  # only 11 is left, waiting for [10, 20)
    assert stream.stats()['late'] == 1


def test_on_late_callable_gets_a_late_window_and_a_failure_dead_letters(store_url):
    stream = mb.stream('latefn', url=store_url)
    seen = []

    def on_late(window):
        seen.append((window.key, [d['v'] for d in window.data], window.late))
        if window.key == 'b':
            raise RuntimeError('cannot handle b')

    em = consumer(store_url, 'latefn', Collect(), on_late=on_late)
    stream.append(events(('a', 1, 1), ('b', 1, 2), ('a', 11, 3)))
    rounds(em)
    stream.append(events(('a', 2, 4), ('b', 2, 5)))
    rounds(em)
    assert sorted(seen) == [('a', [4], True), ('b', [5], True)]
    (dead,) = stream.store.dead_letters('latefn')
    assert dead.data['v'] == 5 and 'cannot handle b' in dead.error


def test_unreadable_time_is_dead_lettered_with_the_reason_and_the_rest_flows(store_url):
    stream = mb.stream('badtime', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'badtime', fn)
    stream.append([{'k': 'a', 'ts': 1, 'v': 1}, {'k': 'a', 'v': 2}, {'k': 'a', 'ts': 'noon', 'v': 3},
                   {'ts': 2, 'v': 4}, {'k': 'a', 'ts': 15, 'v': 5}])
    rounds(em)
    assert fn.windows == [('a', 0, 10, [1], False)]
    errors = {m.data['v']: m.error for m in stream.store.dead_letters('badtime')}
    assert set(errors) == {2, 3, 4}
    assert "no field 'ts'" in errors[2] and 'not an ISO 8601 time' in errors[3] and "no field 'k'" in errors[4]


def test_a_failing_window_is_retried_then_dead_lettered_per_key_and_window(store_url):
    stream = mb.stream('retry', url=store_url)
    fn = Collect(fail_keys={'bad'})
    em = consumer(store_url, 'retry', fn, max_attempts=2, retry_backoff=0)
    stream.append(events(('bad', 1, 1), ('bad', 2, 2), ('ok', 3, 3), ('x', 25, 4)))
    rounds(em, 8)
    assert fn.windows == [('ok', 0, 10, [3], False)]
    assert sorted(m.data['v'] for m in stream.store.dead_letters('retry')) == [1, 2]
    assert em.stats['failed'] == 2
    assert stream.stats()['open_windows'] == 1  # x's [20, 30)


def test_hopping_event_is_in_every_window_that_covers_it(store_url):
    stream = mb.stream('hop', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'hop', fn, window=hopping(10, 5))
    stream.append(events(('a', 1, 1), ('a', 6, 2), ('a', 12, 3), ('a', 40, 4)))
    rounds(em, 12)
    assert sorted(fn.windows) == [('a', -5, 5, [1], False), ('a', 0, 10, [1, 2], False),
                                  ('a', 5, 15, [2, 3], False), ('a', 10, 20, [3], False)]
    assert stream.store.counts('hop')['available'] == 1  # each event deleted after its last window; 40 waits


def test_sessions_split_and_merge_as_events_arrive(store_url):
    stream = mb.stream('sess', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'sess', fn, window=session(5), grace=10)
    stream.append(events(('a', 0, 1), ('b', 1, 4), ('a', 3, 2), ('a', 20, 3)))
    rounds(em)
    assert sorted(fn.windows) == [('a', 0, 8, [1, 2], False), ('b', 1, 6, [4], False)]
    stream.append(events(('a', 28, 4), ('a', 24, 5)))  # 24 bridges the sessions at 20 and 28
    rounds(em)
    assert len(fn.windows) == 2  # watermark 28 - 10: the session [20, 33) is open
    stream.append(events(('a', 50, 6)))
    rounds(em)
    assert fn.windows[2:] == [('a', 20, 33, [3, 5, 4], False)]
    assert stream.stats()['open_windows'] == 1  # a's session at 50


def test_idle_stream_closes_its_windows_by_the_clock(store_url):
    stream = mb.stream('idle', url=store_url)
    got = []
    em = make_emitter('idle', got.append, url=store_url, executor='inline', window=tumbling(1), key='k',
                      time='ts', grace=0.5)
    now = time.time()
    stream.append([{'k': 'a', 'ts': now, 'v': 1}])
    end = (now // 1 + 1)
    thread = threading.Thread(target=em.run)
    thread.start()
    try:
        wait_until(lambda: got, timeout=10, message='the window closed by the clock')
        closed_after = time.time() - (end + 0.5)
        assert -0.05 <= closed_after <= 1.5, closed_after  # within about a second of end + grace
        assert got[0].data == [{'k': 'a', 'ts': now, 'v': 1}]
    finally:
        em.stop()
        thread.join(10)


def test_replaying_history_without_the_clock_waits_for_the_watermark(store_url):
    stream = mb.stream('replay', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'replay', fn, close_by_clock=False)
    stream.append(events(('a', 1, 1)))
    rounds(em, 3)
    assert fn.windows == []  # an event of 1970 would close at once by the clock
    clock = consumer(store_url, 'replay', fn, close_by_clock=True)
    rounds(clock, 3)
    assert fn.windows == [('a', 0, 10, [1], False)]


def test_state_is_in_the_store_a_new_consumer_carries_on(store_url):
    stream = mb.stream('carry', url=store_url)
    first, second = Collect(), Collect()
    stream.append(events(('a', 1, 1), ('a', 5, 2)))
    rounds(consumer(store_url, 'carry', first))  # indexed, watermark 5; nothing closes
    stream.append(events(('a', 12, 3)))
    rounds(consumer(store_url, 'carry', second))  # another process: same spec, same state
    assert first.windows == [] and second.windows == [('a', 0, 10, [1, 2], False)]


def test_stats_show_watermark_open_windows_and_late(store_url):
    stream = mb.stream('figs', url=store_url)
    assert {k: stream.stats().get(k) for k in ('watermark', 'open_windows', 'late')} == \
        {'watermark': None, 'open_windows': 0, 'late': 0}
    em = consumer(store_url, 'figs', Collect(), grace=2, on_late='drop')
    stream.append(events(('a', 1, 1), ('b', 2, 2), ('a', 22, 3), ('a', 3, 4)))
    rounds(em)
    stats = stream.stats()
    assert stats['watermark'] == at(20)
    assert stats['open_windows'] == 1 and stats['late'] == 1
    # clear() and delete() take the event-time state with the messages: a fresh start, not the old watermark
    stream.clear()
    assert {k: stream.stats().get(k) for k in ('watermark', 'open_windows', 'late')} == \
        {'watermark': None, 'open_windows': 0, 'late': 0}


@pytest.mark.parametrize('options, error, words', [
    (dict(window=tumbling(1), max_attemps=3), mb.ConfigurationError, 'max_attempts'),
    (dict(key='k'), mb.ConfigurationError, 'window='),
    (dict(window=tumbling(1), size=10), mb.InvalidWindowSpec, 'size='),
    (dict(window=tumbling(1), grace=-1), mb.InvalidWindowSpec, 'grace'),
    (dict(window=tumbling(1), on_late='ignore'), mb.ConfigurationError, 'on_late'),
    (dict(window=tumbling(1), key=3), mb.ConfigurationError, 'key='),
    (dict(window=tumbling(1), isolate=True), mb.ConfigurationError, 'isolate'),
    (dict(window=60), mb.InvalidWindowSpec, 'tumbling(size)'),
])
def test_bad_options_are_refused_where_written(tmp_path, options, error, words):
    with pytest.raises(error, match=words.replace('(', r'\(').replace(')', r'\)')):
        mb.streaming('s', url=f'sqlite:///{tmp_path}/x.db', **options)


@pytest.mark.parametrize('call, words', [
    (lambda: tumbling(0), 'tumbling'), (lambda: hopping(5, 10), 'step must not exceed size'),
    (lambda: session(-1), 'session'), (lambda: tumbling(True), 'tumbling'),
])
def test_bad_window_specs(call, words):
    with pytest.raises(mb.InvalidWindowSpec, match=words):
        call()


def test_the_strategy_is_a_window_emitter():
    assert issubclass(EventTimeWindow, mb.WindowEmitter)


def test_the_watermark_example_of_the_docs(store_url):
    """docs/windows.rst, "Watermark, grace and closing": the table, event by event."""
    stream = mb.stream('docs', url=store_url)
    got = []
    em = consumer(store_url, 'docs', got.append, window=tumbling(60), key=None, grace=10)
    for ts in (5, 30, 58, 62, 50, 71, 12):
        stream.append([{'ts': ts, 'v': ts}])
        rounds(em, 2)
    (w0,) = got
    assert (w0.start, w0.end, [d['ts'] for d in w0.data]) == (at(0), at(60), [5, 30, 50, 58])
    (late,) = stream.store.dead_letters('docs')
    assert late.data['ts'] == 12 and 'late' in late.error
    assert stream.stats()['watermark'] == at(61)


def test_the_sensor_minutes_example_runs_and_ends_by_itself(tmp_path):
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.getcwd(), TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, 'examples/sensor_minutes.py'], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('replayed: 12 windows') and 'late 1' in lines[0]
    assert sum(' readings ' in line for line in lines) == 15  # 3 sensors x 5 minutes
    assert 'open windows 0' in done.stdout and 'late event: key "north"' in done.stdout


def test_count_windows_per_key(store_url):
    stream = mb.stream('counted', url=store_url)
    got = []
    em = make_emitter('counted', got.append, url=store_url, executor='inline', size=3, key='k')
    stream.append([{'k': k, 'v': i} for i, k in enumerate('abaabbcab')])
    rounds(em, 6)
    assert sorted((w.key, [d['v'] for d in w.data]) for w in got) == [('a', [0, 2, 3]), ('b', [1, 4, 5])]
    assert got[0].start is None and got[0].late is False
    stream.append([{'k': 'c', 'v': 9}, {'k': 'a', 'v': 10}, {'k': 'c', 'v': 11}])
    rounds(em, 6)
    assert [(w.key, [d['v'] for d in w.data]) for w in got[2:]] == [('c', [6, 9, 11])]
    assert stream.store.counts('counted')['available'] == 3  # a: 7, 10 and b: 8 wait for their third
    assert stream.stats()['watermark'] is None


def test_count_windows_per_key_refuse_event_time_options(tmp_path):
    with pytest.raises(mb.ConfigurationError, match='count windows per key'):
        mb.streaming('s', url=f'sqlite:///{tmp_path}/x.db', size=3, key='k', time='ts')


def test_keep_true_keeps_the_events_done_and_records_the_windows(store_url):
    stream = mb.stream('kept', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'kept', fn, keep=True)
    stream.append(events(('a', 1, 1), ('a', 2, 2), ('b', 3, 3), ('a', 25, 4)))
    rounds(em)
    assert sorted(fn.windows) == [('a', 0, 10, [1, 2], False), ('b', 0, 10, [3], False)]
    counts = stream.store.counts('kept')
    assert (counts['done'], counts['available']) == (3, 1)
    records = stream.store.windows('kept', processed=True)
    assert sorted(len(r.data) for r in records) == [1, 2]
    rounds(em)
    assert len(fn.windows) == 2  # kept messages are not emitted again


def key_and_size(window):
    return [window.key, (window.end - window.start).total_seconds(), len(window.data)]


def test_windows_run_in_a_process_pool(tmp_path):
    url = f'sqlite:///{tmp_path}/pool.db'
    stream = mb.stream('pool', url=url)
    sink = ListSink()
    em = make_emitter('pool', key_and_size, url=url, window=tumbling(10), key='k', time='ts',
                      close_by_clock=False, executor='process', workers=2, sink=sink)
    stream.append(events(*[(k, t, t) for k in 'abcd' for t in (1, 2, 3)], ('z', 50, 0)))
    try:
        wait_until(lambda: (em.run(blocking=False), len(sink.items) >= 4)[1], timeout=60,
                   message='four windows from the pool')
    finally:
        em.close()
    assert sorted(sink.items) == [['a', 10.0, 3], ['b', 10.0, 3], ['c', 10.0, 3], ['d', 10.0, 3]]


def test_minibatch_status_json_shows_the_event_time_figures(store_url):
    import json

    from click.testing import CliRunner

    from minibatch.cli import cli
    stream = mb.stream('shown', url=store_url)
    em = consumer(store_url, 'shown', Collect(), on_late='drop')
    stream.append(events(('a', 1, 1), ('a', 31, 2), ('a', 2, 3)))
    rounds(em)
    result = CliRunner().invoke(cli, ['--url', store_url, 'status', '--json', 'shown'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.splitlines()[-1])['streams']['shown']
    assert (figures['watermark'], figures['open_windows'], figures['late']) == ('1970-01-01T00:00:31+00:00', 1, 1)
    table = CliRunner().invoke(cli, ['--url', store_url, 'status', 'shown'], catch_exceptions=False).output
    header, row = [line.split() for line in table.splitlines()[-2:]]
    assert header[-3:] == ['open', 'late', 'watermark'] and row[-4:] == ['1', '1', '1970-01-01', '00:00:31']


def test_a_stream_deleted_and_made_again_starts_with_a_fresh_watermark(store_url):
    stream = mb.stream('again', url=store_url)
    stream.append(events(('a', 100, 1)))
    rounds(consumer(store_url, 'again', Collect()), 2)
    assert stream.stats()['watermark'] == at(100)
    stream.delete()
    stream = mb.stream('again', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'again', fn)
    stream.append(events(('a', 1, 2), ('a', 12, 3)))
    rounds(em)
    assert fn.windows == [('a', 0, 10, [2], False)]  # not late against the old stream's watermark


def test_a_dead_letter_requeued_after_its_window_comes_back_as_a_late_event(store_url, monkeypatch):
    # SQLite finds messages that came back below its cursor every RESCAN seconds: here, every round
    monkeypatch.setattr('minibatch.store.eventtime_sqlite.RESCAN', 0.0)
    stream = mb.stream('requeued', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'requeued', fn, on_late='window')
    ids = stream.store.append('requeued', events(('a', 1, 1), ('a', 2, 2)))
    rounds(em, 2)  # indexed; the window is open
    store = stream.store
    store.claim('requeued', [ids[0]], 'tok', 30)
    store.release('requeued', 'tok', [ids[0]], error='poison', max_attempts=1)  # one event dead-lettered
    stream.append(events(('a', 15, 3)))
    rounds(em)
    assert fn.windows == [('a', 0, 10, [2], False)]
    assert store.requeue('requeued') == 1
    rounds(em)
    assert fn.windows[1:] == [('a', 0, 10, [1], True)]  # its window was emitted: it is late now


def test_tumbling_windows_closed_together_are_committed_in_batches_each_once(store_url, monkeypatch):
    monkeypatch.setattr(EventTimeWindow, 'COMMIT_BATCH', 3)  # 10 windows: batches of 3, 3, 3 and 1
    monkeypatch.setattr(EventTimeWindow, 'COMMIT_WAIT', 30.0)  # however slow the store, the batches fill
    stream = mb.stream('batched', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'batched', fn, lease=600)
    stream.append(events(*[(f'k{i % 10}', i % 10, i) for i in range(30)]) + events(('z', 100, -1)))
    committed = []
    original = em.state.commit_many

    def spy(commits):
        committed.append(len(commits))
        return original(commits)
    em.state.commit_many = spy
    thread = threading.Thread(target=em.run, daemon=True)  # blocking: a round that runs a window does not flush
    thread.start()
    try:
        wait_until(lambda: em.stats['committed'] == 10, timeout=60, message='10 windows committed')
    finally:
        em.stop()
        thread.join(30)
    assert sorted(key for key, *_ in fn.windows) == [f'k{i}' for i in range(10)]  # each once
    assert sorted(committed, reverse=True) == [3, 3, 3, 1]
    assert em.stats['committed'] == 10 and em.stats['processed'] == 30
    assert stream.store.counts('batched')['available'] == 1  # z's window is still open; nothing else is left
    assert stream.stats()['claimed'] == 0


def test_a_running_consumer_commits_its_last_tumbling_window_without_waiting_for_more(store_url):
    stream = mb.stream('last', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'last', fn)
    thread = threading.Thread(target=em.run, daemon=True)
    thread.start()
    try:
        stream.append(events(('a', 1, 1), ('a', 2, 2), ('b', 15, 3)))  # the watermark closes a's [0, 10)
        wait_until(lambda: fn.windows, timeout=30, message="a's window ran")
        wait_until(lambda: stream.stats()['claimed'] == 0 and stream.store.counts('last')['available'] == 1,
                   timeout=10, message='its commit written')
        assert thread.is_alive() and em.stats['committed'] == 1
    finally:
        em.stop()
        thread.join(30)

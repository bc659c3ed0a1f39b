"""Consumer groups end to end (docs/groups.rst), every consumer and producer a process of its own.

Every group sees every message, the consumers of one group share them;
retention waits for the slowest group; replay concerns one group; a stream
sink of the same store is written by the window's commit, exactly once, also
when the consumer is killed with SIGKILL again and again.

Group consumers run tests/consumer_process.py (a log line per window, by pid).
This file is also a program, for what that one cannot do:

    python tests/test_groups.py pipeline URL OUTDIR OPTIONS_JSON   # a consumer with sink=<stream>
    python tests/test_groups.py produce URL STREAM FIRST COUNT     # a producer appending one by one
"""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONSUMER = os.path.join(HERE, 'consumer_process.py')


# -- the programs (run as `python tests/test_groups.py ...`) ---------------------------------------------------------
def pipeline(url, outdir, options):
    """``@streaming('orders', sink=mb.stream(SINK))``: each window's result is one doc with the ids of its messages.

    The function first appends the ids to OUTDIR/<pid>.ids (one ``write``, O_APPEND: whole lines only),
    then sleeps a random part of ``pause`` so that a kill lands inside windows too.
    """
    import minibatch as mb
    pause = options.pop('pause', 0)
    sink = mb.stream(options.pop('sink'), url=url)
    log = os.open(os.path.join(outdir, f'{os.getpid()}.ids'), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rng = random.Random(os.getpid())

    def process(window):
        ids = [message['i'] for message in window.data]
        os.write(log, (' '.join(str(i) for i in ids) + '\n').encode())
        if pause:
            time.sleep(rng.uniform(pause / 3, pause))
        return {'ids': ids, 'pid': os.getpid()}

    with open(os.path.join(outdir, f'ready-{os.getpid()}'), 'w'):
        pass
    mb.streaming('orders', url=url, sink=sink, executor='inline', **options)(process)


def produce(url, stream, first, count):
    """Append ``{'i': first}`` .. ``{'i': first + count - 1}`` one by one (one write each)."""
    import minibatch as mb
    target = mb.stream(stream, url=url)
    for i in range(first, first + count):
        target.append({'i': i})


if __name__ == '__main__':
    if sys.argv[1] == 'pipeline':
        pipeline(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif sys.argv[1] == 'produce':
        produce(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(f'unknown program {sys.argv[1]!r}')
    sys.exit(0)


# -- the tests ---------------------------------------------------------------------------------------------------------
import pytest  # noqa: E402

import minibatch as mb  # noqa: E402
from minibatch.errors import ConfigurationError  # noqa: E402
from minibatch.store.base import utcnow  # noqa: E402
from tests.helpers import default_sigint, settled, wait_until  # noqa: E402
from tests.test_reliability import delivered, stop_all  # noqa: E402


def spawn(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    return subprocess.Popen([sys.executable, *[str(a) for a in args]], env=env, preexec_fn=default_sigint)


def start_consumer(url, outdir, **options):
    """A consumer of ``orders`` (tests/consumer_process.py) logging to ``outdir``; ``group=`` etc. as @streaming's."""
    os.makedirs(str(outdir), exist_ok=True)
    return spawn(CONSUMER, url, 'orders', outdir, json.dumps(options))


def start_pipeline(url, outdir, **options):
    return spawn(__file__, 'pipeline', url, outdir, json.dumps(options))


def registered(stream, *groups):
    return lambda: set(groups) <= set(stream.groups())


def remaining(stream):
    """The ``i`` of the messages of ``stream`` still stored, whatever their state."""
    return {m.data['i'] for m in stream.store.messages(stream.name)}


def group_lag(stream, group):
    return stream.stats()['groups'][group]['lag']


def test_two_groups_of_two_consumers_each_process_every_message_once(store_url, tmp_path):
    n = 1000
    orders = mb.stream('orders', url=store_url)
    outdirs = {group: tmp_path / group for group in ('billing', 'analytics')}
    procs = [start_consumer(store_url, outdirs[group], group=group, size=200, executor='inline', lease=4)
             for group in outdirs for _ in range(2)]
    try:
        # both groups exist before the first message: neither can miss one to the other's retention
        wait_until(registered(orders, 'billing', 'analytics'), timeout=60, message='both groups registered',
                   alive=procs)
        for k in range(0, n, 100):
            orders.append([{'i': i} for i in range(k, k + 100)])
        for group, outdir in outdirs.items():
            wait_until(lambda: len(delivered(outdir)) >= n, timeout=120, message=f'{n} messages in {group}',
                       alive=procs)
        for group in outdirs:
            wait_until(lambda: group_lag(orders, group) == 0, timeout=60, message=f'{group} committed',
                       alive=procs)
        # committed by both: removed by the consumers' retention, the copies with them
        wait_until(lambda: not remaining(orders), timeout=60, message='retention of the committed messages',
                   alive=procs)
        wait_until(lambda: orders.store.messages('orders[billing]') == orders.store.messages('orders[analytics]')
                   == [], timeout=30, message='the copies removed', alive=procs)
        assert stats_of(orders, 'billing')['consumers_alive'] == 2
    finally:
        stop_all(procs)
    for group, outdir in outdirs.items():
        assert sorted(delivered(outdir)) == list(range(n)), f'{group}: every message exactly once'
    for group in outdirs:  # (the originals are not claimed by anyone: a named group claims its copies)
        assert settled(mb.stream(f'orders[{group}]', url=store_url))
    assert orders.dead_letters() == []
    assert all(proc.returncode == 0 for proc in procs)


def stats_of(stream, group):
    return stream.stats()['groups'][group]


def test_replay_of_one_group_reprocesses_from_there_and_nothing_for_the_other(store_url, tmp_path):
    orders = mb.stream('orders', url=store_url)
    billing, analytics = tmp_path / 'billing', tmp_path / 'analytics'
    # keep=True (analytics): every message stays retained, so that there is something to replay
    procs = [start_consumer(store_url, billing, group='billing', size=10, executor='inline', lease=2),
             start_consumer(store_url, analytics, group='analytics', size=10, executor='inline', lease=2, keep=True)]
    try:
        wait_until(registered(orders, 'billing', 'analytics'), timeout=60, message='both groups', alive=procs)
        orders.append([{'i': i} for i in range(60)])
        cut = utcnow()
        orders.append([{'i': i} for i in range(60, 100)])
        for outdir in (billing, analytics):
            wait_until(lambda: len(delivered(outdir)) >= 100, timeout=120, message='100 messages', alive=procs)
        wait_until(lambda: group_lag(orders, 'billing') == 0 == group_lag(orders, 'analytics'), timeout=60,
                   message='both groups committed', alive=procs)
        assert remaining(orders) == set(range(100)), 'kept (keep=True)'

        first_again = next(m.id for m in orders.store.messages('orders') if m.data['i'] == 60)
        assert orders.replay('billing', since=first_again) == 40
        wait_until(lambda: len(delivered(billing)) >= 140, timeout=120, message='billing replayed from i=60',
                   alive=procs)
        wait_until(lambda: group_lag(orders, 'billing') == 0, timeout=60, message='the replay committed',
                   alive=procs)
        # by time: the messages appended at or after it
        assert orders.replay('billing', since=cut) == 40
        wait_until(lambda: len(delivered(billing)) >= 180, timeout=120, message='billing replayed since cut',
                   alive=procs)
        wait_until(lambda: group_lag(orders, 'billing') == 0, timeout=60, message='the replay committed',
                   alive=procs)
        # the whole retained stream
        assert orders.replay('billing') == 100
        wait_until(lambda: len(delivered(billing)) >= 280, timeout=120, message='billing replayed all',
                   alive=procs)
        wait_until(lambda: group_lag(orders, 'billing') == 0, timeout=60, message='the replay committed',
                   alive=procs)
        assert group_lag(orders, 'analytics') == 0
    finally:
        stop_all(procs)
    assert sorted(delivered(billing)) == sorted(list(range(100)) * 2 + list(range(60, 100)) * 2)
    assert sorted(delivered(analytics)) == list(range(100)), 'the other group saw nothing again'
    with pytest.raises(ConfigurationError):
        orders.replay('nosuchgroup')


def test_replay_since_the_created_time_of_a_message_includes_that_message(store):
    store.register_group('orders', 'billing')
    missed = []
    for i in range(20):
        store.append('orders', [{'i': i}])
        newest = store.messages('orders')[-1]
        if store.replay('orders', 'billing', since=newest.created) != 1:
            missed.append(i)
    assert missed == [], 'replay(since=m.created) must include m'


def test_a_group_registered_while_the_default_group_runs_gets_every_later_message(store_url):
    orders = mb.stream('orders', url=store_url)
    seen = []
    em = mb.streaming('orders', url=store_url, size=1, executor='inline', lease=2, blocking=False)(
        lambda window: seen.extend(m['i'] for m in window.data))
    try:
        orders.append({'i': -1})
        wait_until(lambda: seen and orders.groups(), timeout=30, message='the default consumer running')
        orders.store.register_group('orders', 'late', 'earliest')
        orders.append([{'i': i} for i in range(10)])  # after the group was registered: it must see them
        wait_until(lambda: len(seen) >= 11, timeout=30, message='the default group done')
    finally:
        em.stop()
        em.thread.join(timeout=30)
    assert orders.store.pull('orders', 'late', 1000) == 10


def test_messages_are_removed_only_after_the_slowest_group_committed_them(store_url, tmp_path):
    n = 60
    orders = mb.stream('orders', url=store_url)
    fast, slow, default = tmp_path / 'fast', tmp_path / 'slow', tmp_path / 'default'
    # the slow group exists, no consumer yet: nothing may go before it had its turn
    orders.store.register_group('orders', 'slow')
    procs = [start_consumer(store_url, fast, group='fast', size=10, executor='inline', lease=1),
             start_consumer(store_url, default, size=10, executor='inline', lease=1)]
    try:
        wait_until(registered(orders, 'fast', 'default'), timeout=60, message='groups', alive=procs)
        orders.append([{'i': i} for i in range(n)])
        wait_until(lambda: len(delivered(fast)) >= n and len(delivered(default)) >= n, timeout=120,
                   message='the fast groups done', alive=procs)
        wait_until(lambda: group_lag(orders, 'fast') == 0 == group_lag(orders, 'default'), timeout=60,
                   message='the fast groups committed', alive=procs)
        # several rounds of the consumers' retention (every 2 s at most), and one of ours: nothing goes
        quiet = time.monotonic() + 2.5
        while time.monotonic() < quiet:  # an observation over time, not a synchronisation
            assert remaining(orders) == set(range(n))
            time.sleep(0.2)
        assert orders.store.retain('orders') == 0
        assert orders.stats()['groups']['slow']['lag'] == n

        procs.append(start_consumer(store_url, slow, group='slow', size=10, executor='inline', lease=1, slow=0.4))
        observed, deadline = 0, time.monotonic() + 120
        while not (len(delivered(slow)) >= n and not remaining(orders)):
            left = remaining(orders)  # read before the log: a window logged done may not be committed yet
            not_done = set(range(n)) - set(delivered(slow))
            assert not_done <= left, f'removed before the slow group committed them: {sorted(not_done - left)}'
            observed += 0 < len(left) < n
            assert all(proc.poll() is None for proc in procs), 'a consumer exited'
            assert time.monotonic() < deadline, f'the slow group did not finish: {len(delivered(slow))} done'
            time.sleep(0.05)
        assert observed, 'retention ran while the slow group was half way'
    finally:
        stop_all(procs)
    assert sorted(delivered(slow)) == list(range(n))
    assert orders.store.messages('orders') == []
    wait_until(lambda: not orders.store.messages('orders[fast]'), timeout=10, message='the copies removed too')


def test_latest_sees_only_later_messages_and_a_later_earliest_group_gets_every_retained_one(store_url, tmp_path):
    orders = mb.stream('orders', url=store_url)
    orders.append([{'i': i} for i in range(10)])
    latest, earliest = tmp_path / 'latest', tmp_path / 'earliest'
    # keep=True: the messages stay for a group that comes later
    procs = [start_consumer(store_url, latest, group='live', start='latest', size=5, executor='inline', lease=2,
                            keep=True)]
    try:
        wait_until(registered(orders, 'live'), timeout=60, message='the group registered', alive=procs)
        orders.append([{'i': i} for i in range(10, 20)])
        wait_until(lambda: len(delivered(latest)) >= 10, timeout=60, message='the later messages', alive=procs)
        wait_until(lambda: group_lag(orders, 'live') == 0, timeout=60, message='committed', alive=procs)
        assert orders.groups()['live']['start'] == 'latest' and orders.groups()['live']['keep'] is True

        procs.append(start_consumer(store_url, earliest, group='history', size=5, executor='inline', lease=2))
        wait_until(lambda: len(delivered(earliest)) >= 20, timeout=60, message='every retained message',
                   alive=procs)
        wait_until(lambda: group_lag(orders, 'history') == 0, timeout=60, message='committed', alive=procs)
    finally:
        stop_all(procs)
    assert sorted(delivered(latest)) == list(range(10, 20)), 'none of the messages before the group existed'
    assert sorted(delivered(earliest)) == list(range(20))
    assert remaining(orders) == set(range(20)), 'kept: a group keeps messages'
    assert orders.stats()['groups']['history']['start'] == 'earliest'


def test_a_poison_message_is_dead_lettered_in_its_group_only(store_url, tmp_path):
    orders = mb.stream('orders', url=store_url)
    billing, analytics = tmp_path / 'billing', tmp_path / 'analytics'
    procs = [start_consumer(store_url, billing, group='billing', size=1, executor='inline', max_attempts=2,
                            retry_backoff=0.05, lease=2, poison=True),
             start_consumer(store_url, analytics, group='analytics', size=1, executor='inline', lease=2)]
    try:
        wait_until(registered(orders, 'billing', 'analytics'), timeout=60, message='both groups', alive=procs)
        orders.append([{'i': i, 'poison': i == 7} for i in range(20)])
        wait_until(lambda: len(delivered(billing)) >= 19 and len(delivered(analytics)) >= 20, timeout=120,
                   message='the good messages', alive=procs)
        copies = mb.stream('orders[billing]', url=store_url)
        wait_until(copies.dead_letters, timeout=60, message='a dead letter in orders[billing]', alive=procs)
        wait_until(lambda: group_lag(orders, 'analytics') == 0 == group_lag(orders, 'billing'), timeout=60,
                   message='both groups committed', alive=procs)
        figures = orders.stats()['groups']
        assert figures['billing']['dead'] == 1 and figures['analytics']['dead'] == 0
        # retention: a dead copy counts as committed for its group
        wait_until(lambda: not remaining(orders), timeout=60, message='retention', alive=procs)
    finally:
        stop_all(procs)
    assert sorted(delivered(billing)) == [i for i in range(20) if i != 7]
    assert sorted(delivered(analytics)) == list(range(20)), 'the other group processed it normally'
    dead = copies.dead_letters()
    assert [m.data['i'] for m in dead] == [7] and dead[0].attempts == 2
    assert 'ValueError: poison message' in dead[0].error
    assert orders.dead_letters() == []
    assert mb.stream('orders[analytics]', url=store_url).dead_letters() == []


def test_concurrent_producers_skip_nothing_in_either_group(store_url, tmp_path):
    producers, each = 4, 150
    orders = mb.stream('orders', url=store_url)
    outdirs = {group: tmp_path / group for group in ('billing', 'analytics')}
    consumers = [start_consumer(store_url, outdirs[group], group=group, size=50, executor='inline', lease=2)
                 for group in outdirs for _ in range(2)]
    try:
        wait_until(registered(orders, *outdirs), timeout=60, message='both groups', alive=consumers)
        writers = [spawn(__file__, 'produce', store_url, 'orders', p * each, each) for p in range(producers)]
        try:
            for writer in writers:
                assert writer.wait(timeout=120) == 0
        finally:
            stop_all(writers)
        n = producers * each
        for group, outdir in outdirs.items():
            wait_until(lambda: len(delivered(outdir)) >= n, timeout=120, message=f'{n} messages in {group}',
                       alive=consumers)
            wait_until(lambda: group_lag(orders, group) == 0, timeout=60, message=f'{group} committed',
                       alive=consumers)
    finally:
        stop_all(consumers)
    for group, outdir in outdirs.items():
        assert sorted(delivered(outdir)) == list(range(n)), f'{group}: every message once, none skipped'


def totals(store_url):
    """The result docs appended to ``totals`` (what a reader of that stream sees)."""
    return [m.data for m in mb.stream('totals', url=store_url).store.find_available('totals')]


def attempts(outdir):
    """The windows the pipeline's function was given (lists of ids), also those cut short by a kill."""
    found = []
    for path in glob.glob(os.path.join(str(outdir), '*.ids')):
        with open(path) as log:
            found += [[int(i) for i in line.split()] for line in log if line.endswith('\n')]
    return found


def test_exactly_once_pipeline_survives_repeated_sigkill(store_url, tmp_path):
    n, size, kills = 1000, 20, 5
    orders = mb.stream('orders', url=store_url)
    mb.stream('totals', url=store_url)
    orders.append([{'i': i} for i in range(n)])
    rng = random.Random()
    # a restarted consumer takes the oldest window again, which a kill may cut again: a kill is an attempt,
    # and dead letters would rightly be missing from totals, so attempts are not what this test counts
    options = dict(group='billing', size=size, lease=1.5, sink='totals', pause=0.2, max_attempts=100)
    procs = [start_pipeline(store_url, tmp_path, **options)]
    try:
        for _ in range(kills):
            before = len(attempts(tmp_path))
            # a window started since the last restart; then SIGKILL at a random moment of its life (in the
            # function, in its commit, or after it, in the next claim)
            wait_until(lambda: len(attempts(tmp_path)) > before, timeout=90, message='a window started',
                       alive=procs[-1:])
            time.sleep(rng.uniform(0, 0.25))  # the random moment, not a synchronisation
            os.kill(procs[-1].pid, signal.SIGKILL)
            assert procs[-1].wait(timeout=10) == -signal.SIGKILL
            procs.append(start_pipeline(store_url, tmp_path, **options))
        assert len(totals(store_url)) * size < n, 'the kills all came before the end'
        wait_until(lambda: sum(len(doc['ids']) for doc in totals(store_url)) >= n, timeout=150,
                   message=f'{n} messages in totals', alive=procs[-1:])
        wait_until(lambda: group_lag(orders, 'billing') == 0, timeout=60, message='every window committed',
                   alive=procs[-1:])
    finally:
        stop_all(procs)
    outputs = totals(store_url)
    ids = [i for doc in outputs for i in doc['ids']]
    assert len(ids) == len(set(ids)), f'in two results: {sorted({i for i in ids if ids.count(i) > 1})[:20]}'
    assert sorted(ids) == list(range(n)), 'every input in exactly one result'
    committed = orders.store.windows('orders[billing]', processed=True)
    assert len(outputs) == len(committed), 'one result per committed window'
    tried = [i for window in attempts(tmp_path) for i in window]
    assert len(tried) > n, 'a kill cut windows short; they were done again and still written once'
    assert len({pid for pid in (doc['pid'] for doc in outputs)}) >= 2
    assert sum(proc.returncode == -signal.SIGKILL for proc in procs) == kills


def test_the_default_group_alone_is_unchanged(store_url, tmp_path):
    orders = mb.stream('orders', url=store_url)
    orders.append([{'i': i} for i in range(30)])
    proc = start_consumer(store_url, tmp_path, size=10, executor='inline', lease=2)
    try:
        wait_until(lambda: len(delivered(tmp_path)) >= 30, timeout=60, message='30 messages', alive=[proc])
        wait_until(lambda: not remaining(orders), timeout=30, message='removed on commit', alive=[proc])
        assert orders.groups().keys() == {'default'}
        assert orders.stats()['groups']['default']['lag'] == 0
    finally:
        stop_all([proc])
    assert sorted(delivered(tmp_path)) == list(range(30))
    assert orders.store.get_stream('orders[default]') is None


@pytest.mark.parametrize('options', [dict(group='a.b'), dict(group='x[y]'), dict(group=''), dict(group=' a'),
                                     dict(group=7), dict(start='middle'), dict(group='billing', start='oldest')])
def test_bad_group_or_start_is_refused(store_url, options):
    with pytest.raises(ConfigurationError):
        mb.streaming('orders', url=store_url, size=1, blocking=False, **options)(lambda window: None)


def test_the_two_groups_example_runs_and_ends_by_itself(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'examples', 'two_groups.py')], capture_output=True,
                          text=True, timeout=60, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == 'billing: 4 totals written to the stream "totals", 100 orders, amount 395'
    assert lines[1].startswith('analytics: 100 items counted')
    assert lines[2] == 'analytics: replayed 40 orders, 140 items counted in all; billing still has 4 totals'
    assert lines[-1] == 'done'
    assert os.listdir(str(tmp_path)) == [], 'its temporary folder removed'

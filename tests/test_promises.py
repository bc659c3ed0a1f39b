"""What the docs promise about retries, counting, partial claims and consumer reports, held by tests.

Each test here was checked to fail when the library line it guards is changed
(see scripts/mutate, which automates such checks).
"""
import datetime
import sqlite3
import threading
import time


import minibatch as mb
from minibatch.store.base import AVAILABLE, CLAIMED, RETRY
from minibatch.window import CountWindow

from tests.helpers import wait_until

#: clock differences between this process, the store's rounding and the server
EPSILON = 0.05


def recorded_due(store, message_id):
    """The retry-at time the store recorded for a message in ``retry``, as seconds since the epoch.

    Read from the store's own record (the ``lease`` field/column holds it while a
    message waits for its retry), because the contract API shows only the state.
    """
    if hasattr(store, 'path'):  # the SQLite store keeps epoch seconds
        with sqlite3.connect(store.path) as conn:
            (due,) = conn.execute('SELECT lease FROM buffer WHERE id = ?', (message_id,)).fetchone()
        return due
    doc = store._buffer().find_one({'_id': message_id})
    return doc['lease'].replace(tzinfo=datetime.timezone.utc).timestamp()


def state_of(store, name, message_id):
    return {m.id: m for m in store.messages(name)}[message_id]


def wait_available(store, name, timeout):
    """Run the stores' expiry like any consumer would until a message is available; return the time it was."""
    def available():
        store.expire_leases(name, max_attempts=100)
        return store.find_available(name)
    wait_until(available, timeout=timeout, interval=0.01, message='the retried message to be available')
    return time.time()


# -- retry backoff: retry_backoff * 2 ** attempts, at most 60 s ----------------
def test_retry_backoff_starts_at_retry_backoff_and_doubles(store_url):
    stream = mb.stream('backoff', url=store_url)
    (mid,) = stream.store.append(stream.name, [{'x': 1}])
    store = stream.store
    failures = []

    def fail(window):
        failures.append(time.time())
        raise ValueError('always fails')

    em = mb.make_emitter('backoff', fail, size=1, url=store_url, executor='inline', max_attempts=10,
                         retry_backoff=0.2)
    try:
        for k in range(1, 5):  # the k-th failure waits 0.2, 0.4, 0.8, 1.6 s
            expected = 0.2 * 2 ** (k - 1)
            before = time.time()
            em.run(blocking=False)
            after = time.time()
            assert len(failures) == k, 'the window ran and failed once per round'
            message = state_of(store, 'backoff', mid)
            assert (message.state, message.attempts) == (RETRY, k)
            due = recorded_due(store, mid)
            assert before + expected - EPSILON <= due <= after + expected + EPSILON, \
                f'failure {k}: retry recorded {due - before:.3f}s after the failure, expected {expected}s'
            # and the store keeps to it: not available before that time, available after it
            seen = wait_available(store, 'backoff', timeout=expected + 5)
            assert seen >= before + expected - EPSILON, f'failure {k}: available again too early'
    finally:
        em.close()


def test_retry_backoff_is_capped_at_60_seconds(store_url):
    stream = mb.stream('capped', url=store_url)
    stream.append([{'x': 1}, {'x': 2}])
    store = stream.store
    em = mb.make_emitter('capped', lambda w: None, size=2, url=store_url, executor='inline', max_attempts=20,
                         retry_backoff=0.2)
    try:
        held = em.process(store.find_available('capped'))
        assert len(held) == 2
        for message in held:
            message.attempts = 10  # 0.2 * 2 ** 10 = 204.8 s uncapped
        before = time.time()
        em.undo(held, None, 'failed again')
        after = time.time()
        for message in held:
            assert state_of(store, 'capped', message.id).state == RETRY
            due = recorded_due(store, message.id)
            assert before + 60 - EPSILON <= due <= after + 60 + EPSILON, \
                f'retry recorded {due - before:.1f}s ahead, expected the 60 s cap'
    finally:
        em.close()


def test_retry_backoff_zero_retries_at_once(store_url):
    stream = mb.stream('nobackoff', url=store_url)
    (mid,) = stream.store.append(stream.name, [{'x': 1}])
    em = mb.make_emitter('nobackoff', lambda w: 1 / 0, size=1, url=store_url, executor='inline', retry_backoff=0)
    try:
        em.run(blocking=False)
    finally:
        em.close()
    assert [(m.id, m.attempts) for m in stream.store.find_available('nobackoff')] == [(mid, 1)]


# -- processed counts what was committed, not what was claimed ----------------
def test_a_window_that_lost_its_lease_is_not_counted_as_processed(store_url, monkeypatch):
    monkeypatch.setattr(CountWindow, 'HEARTBEAT', 0.2)
    stream = mb.stream('lost', url=store_url)
    stream.append([{'i': i} for i in range(4)])
    store = stream.store
    calls = []

    def fn(window):
        calls.append([m['i'] for m in window.data])
        if len(calls) == 1:
            # the consumer hangs past its lease (inline: nothing renews it), and another
            # consumer's expiry takes the messages: this window can no longer commit them
            wait_until(lambda: store.expire_leases('lost'), timeout=10, interval=0.05,
                       message='the lease of the hung window to expire')

    em = mb.make_emitter('lost', fn, size=2, url=store_url, executor='inline', lease=0.3, retry_backoff=0)
    thread = threading.Thread(target=em.run)
    thread.start()
    try:
        wait_until(lambda: len(calls) >= 3 and stream.stats()['processed'] == 4, timeout=30,
                   message='the lost window delivered again and all four messages reported processed')
    finally:
        em.stop()
        thread.join(30)
    assert sorted(calls) == [[0, 1], [0, 1], [2, 3]], 'the lost window was delivered again'
    assert em.stats['messages'] == 6, 'six messages were emitted in windows'
    assert em.stats['processed'] == 4, 'but only four were committed: the lost window counts none'
    assert stream.stats()['processed'] == 4
    assert stream.stats()['available'] == stream.stats()['claimed'] == 0


# -- CountWindow never emits part of a window ---------------------------------
def test_count_window_gives_back_a_partial_claim(store_url):
    stream = mb.stream('partial', url=store_url)
    ids = stream.store.append('partial', [{'i': i} for i in range(4)])
    store = stream.store
    seen = []
    em = mb.make_emitter('partial', seen.append, size=4, url=store_url, executor='inline')
    try:
        ready, args = em.window_ready()
        assert ready, 'four messages are available'
        # a rival consumer claims one message of the window before we do
        assert [m.id for m in store.claim('partial', [ids[1]], 'rival-token', 30)] == [ids[1]]
        assert em.process(em.query(*args)) == [], 'three of four is not a window'
    finally:
        em.close()
    assert seen == []
    available = store.find_available('partial')
    assert [(m.id, m.attempts) for m in available] == [(ids[0], 0), (ids[2], 0), (ids[3], 0)], \
        'what it took is available again, with no attempt counted'
    assert state_of(store, 'partial', ids[1]).state == CLAIMED, "the rival's claim is untouched"
    # and once the rival gives its message back, the whole window goes out
    assert store.unclaim('partial', 'rival-token', [ids[1]]) == 1
    em = mb.make_emitter('partial', lambda w: seen.append([m['i'] for m in w.data]), size=4, url=store_url,
                         executor='inline')
    try:
        em.run(blocking=False)
    finally:
        em.close()
    assert seen == [[0, 1, 2, 3]]
    assert stream.stats()['available'] == 0


# -- a running consumer reports its rate --------------------------------------
def test_a_running_consumer_reports_a_positive_rate(store_url, monkeypatch):
    monkeypatch.setattr(CountWindow, 'HEARTBEAT', 0.2)
    stream = mb.stream('rated', url=store_url)
    stream.append([{'i': i} for i in range(60)])
    done = []

    def fn(window):
        time.sleep(0.03)  # a steady flow over a few heartbeats
        done.extend(window.data)

    em = mb.make_emitter('rated', fn, size=1, url=store_url, executor='inline')
    thread = threading.Thread(target=em.run)
    thread.start()
    try:
        stats = wait_until(lambda: (lambda s: s if s['rate'] > 0 else None)(stream.stats()), timeout=30,
                           interval=0.05, message='a positive rate reported while messages flow')
    finally:
        em.stop()
        thread.join(30)
    (record,) = stats['consumers']
    assert record['id'] == em.consumer_id and record['rate'] > 0
    assert stats['rate'] == record['rate']
    # and plausible: each message takes at least 0.03 s, so no more than ~33 per second
    assert record['rate'] <= 50


# -- processfn and emit_empty (docs/windows.rst) ------------------------------
def keep_even(messages):
    return [m for m in messages if m.data['i'] % 2 == 0]


def test_processfn_on_a_count_window_delivers_what_it_keeps_and_commits_the_rest(store_url):
    name = 'processfn-count'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(20)])
    seen = []
    em = mb.streaming(name, size=10, processfn=keep_even, url=store_url, executor='inline').make(
        lambda window: seen.append([d['i'] for d in window.data]))
    em.run(blocking=False)
    em.run(blocking=False)
    # each full window of 10 is claimed, then processfn chooses the 5 even ones for the function
    assert seen == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18]]
    stats = stream.stats()
    # the 10 dropped ones were committed (not left claimed, not delivered again), the 10 kept too
    assert (stats['available'], stats['claimed'], stats['retry'], stats['done']) == (0, 0, 0, 0)
    assert em.stats['processed'] == 20 and em.stats['messages'] == 10
    em.run(blocking=False)
    assert len(seen) == 2  # nothing is left to deliver


def test_processfn_with_keep_marks_the_dropped_done(store_url):
    name = 'processfn-keep'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(4)])
    seen = []
    em = mb.streaming(name, size=4, processfn=keep_even, keep=True, url=store_url, executor='inline').make(
        lambda window: seen.append([d['i'] for d in window.data]))
    em.run(blocking=False)
    assert seen == [[0, 2]]
    assert stream.stats()['done'] == 4


def test_processfn_dropping_everything_emits_nothing_and_loses_nothing(store_url):
    name = 'processfn-none'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': 1}, {'i': 3}])
    seen = []
    em = mb.streaming(name, size=2, processfn=keep_even, url=store_url, executor='inline').make(seen.append)
    em.run(blocking=False)
    assert seen == []
    stats = stream.stats()
    assert (stats['available'], stats['claimed']) == (0, 0)
    assert em.stats['processed'] == 2 and em.stats['windows'] == 0


def test_empty_time_windows_are_emitted_only_with_emit_empty(store_url):
    name = 'emit-empty'
    mb.stream(name, url=store_url)
    for emit_empty, expected in ((False, []), (True, [[]])):
        seen = []
        em = mb.streaming(name, interval=0.05, emit_empty=emit_empty, url=store_url, executor='inline').make(
            lambda window: seen.append(list(window.data)))
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:  # past the first interval: the slot is due
            time.sleep(0.01)
        em.run(blocking=False)
        assert seen == expected, emit_empty


# -- dead letters are counted (emitter.stats, stream.stats()) ----------------
def test_dead_lettered_messages_are_counted(store_url):
    name = 'counted-dead'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(3)])
    em = mb.make_emitter(name, lambda w: 1 / 0, size=3, url=store_url, executor='inline', max_attempts=2,
                         retry_backoff=0)
    try:
        em.run(blocking=False)  # first failure: retried
        assert (em.stats['failed'], em.stats['dead']) == (1, 0)
        em.run(blocking=False)  # second failure reaches max_attempts=2: dead-lettered
    finally:
        em.close()
    assert em.stats['failed'] == 2
    assert em.stats['dead'] == 3, 'the three messages of the window were dead-lettered'
    assert stream.stats()['dead'] == 3


# -- CountWindow tops up after a rival took some, and never emits more than size --
def test_count_window_tops_up_from_the_next_available_messages(store_url):
    name = 'topup'
    stream = mb.stream(name, url=store_url)
    ids = stream.store.append(name, [{'i': i} for i in range(5)])
    store = stream.store
    em = mb.make_emitter(name, lambda w: None, size=3, url=store_url, executor='inline')
    try:
        ready, args = em.window_ready()
        assert ready, 'five messages are available'
        # a rival consumer claims one message of the window before we do
        assert [m.id for m in store.claim(name, [ids[1]], 'rival-token', 30)] == [ids[1]]
        window = em.process(em.query(*args))
    finally:
        em.close()
    assert [m.id for m in window] == [ids[0], ids[2], ids[3]], \
        'a full window of 3: what was left of it, topped up with the next available message'
    assert len({m.token for m in window}) == 1, 'the window is held under one token'
    states = {m.id: m.state for m in store.messages(name)}
    assert [states[i] for i in ids] == [CLAIMED, CLAIMED, CLAIMED, CLAIMED, AVAILABLE]
    assert [m.id for m in store.find_available(name)] == [ids[4]]


def test_count_window_emits_exactly_size_even_when_offered_more(store_url):
    name = 'exact'
    stream = mb.stream(name, url=store_url)
    ids = stream.store.append(name, [{'i': i} for i in range(5)])
    em = mb.make_emitter(name, lambda w: None, size=2, url=store_url, executor='inline')
    try:
        # process() is given more candidates than a window holds (a custom query() may do that)
        window = em.process(stream.store.find_available(name))
    finally:
        em.close()
    assert [m.id for m in window] == ids[:2], 'a window of exactly size, the oldest ones'
    # the rest wait for the next window: given back at once, no attempt counted (docs/windows.rst)
    assert {m.id: (m.state, m.attempts) for m in stream.store.messages(name)} == {
        **{i: ('claimed', 0) for i in ids[:2]}, **{i: ('available', 0) for i in ids[2:]}}


# -- a long-running window keeps its lease: renewed every third of it ----------
def test_a_long_running_window_keeps_its_lease(store_url):
    name = 'renewed'
    lease = 1.2
    stream = mb.stream(name, url=store_url)
    (mid,) = stream.store.append(name, [{'x': 1}])
    store = stream.store
    started, release, calls = threading.Event(), threading.Event(), []

    def fn(window):
        calls.append(window.data)
        started.set()
        release.wait(30)

    em = mb.make_emitter(name, fn, size=1, url=store_url, executor='thread', workers=1, lease=lease,
                         retry_backoff=0)
    thread = threading.Thread(target=em.run)
    thread.start()
    try:
        assert started.wait(10), 'the window started'
        since = time.monotonic()
        # the function runs for more than two leases; a rival consumer's expiry must not take it
        while time.monotonic() - since < 2.2 * lease:
            store.expire_leases(name)
            message = state_of(store, name, mid)
            assert (message.state, message.attempts) == (CLAIMED, 0), \
                f'the running window lost its lease after {time.monotonic() - since:.2f}s (lease {lease}s)'
            time.sleep(0.05)
        release.set()
        wait_until(lambda: em.stats['processed'] == 1, timeout=10, message='the long window committed')
    finally:
        release.set()
        em.stop()
        thread.join(30)
    assert len(calls) == 1, 'delivered once'
    assert em.stats['committed'] == 1 and em.stats['failed'] == 0
    assert stream.stats()['claimed'] == stream.stats()['available'] == 0


# -- backpressure: never more windows in flight than workers ------------------
def test_a_consumer_holds_no_more_windows_than_workers(store_url, monkeypatch):
    monkeypatch.setattr(CountWindow, 'HEARTBEAT', 0.1)
    name = 'backpressure'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(6)])
    release, started = threading.Event(), []

    def fn(window):
        started.append(window.data)
        release.wait(30)

    em = mb.make_emitter(name, fn, size=1, url=store_url, executor='thread', workers=2)
    thread = threading.Thread(target=em.run)
    thread.start()
    try:
        wait_until(lambda: len(started) == 2, timeout=10, message='both workers busy')
        reported = {}  # heartbeat time -> windows in flight reported then

        def two_reports_while_full():
            for record in stream.stats()['consumers']:
                reported[record['seen']] = record['in_flight']
            return len([n for n in reported.values() if n >= 2]) >= 2
        # two reports written while both workers were busy: the consumer went round at least
        # once more after the second window, and would have claimed a third one by then
        wait_until(two_reports_while_full, timeout=10, interval=0.02,
                   message='two heartbeats while both workers are busy')
        assert max(reported.values()) == 2, f'windows in flight reported: {sorted(reported.values())}'
        stats = stream.stats()
        assert stats['claimed'] == 2 and stats['available'] == 4, \
            'the messages beyond what the workers run stay in the store for other consumers'
        assert len(started) == 2
        release.set()
        wait_until(lambda: em.stats['processed'] == 6, timeout=10, message='all six processed')
    finally:
        release.set()
        em.stop()
        thread.join(30)
    assert len(started) == 6


# -- a claim holds for the lease it was given (every store) -------------------
def test_a_claim_holds_for_the_lease_given(store):
    name = 'leased'
    lease = 1.0
    store.ensure_stream(name)
    (mid,) = store.append(name, [{'x': 1}])
    before = time.time()
    assert [m.id for m in store.claim(name, [mid], 'a-token', lease)] == [mid]
    # expiry, as every consumer runs it, gives the message back only when the lease is over
    seen = wait_available(store, name, timeout=lease + 10)
    assert seen >= before + lease - EPSILON, \
        f'available again {seen - before:.3f}s after a claim of {lease}s'
    assert (state_of(store, name, mid).state, state_of(store, name, mid).attempts) == (AVAILABLE, 1)


# -- window records: written with the commit when keep=False (issue 11, part 6) ----------------
def test_keep_false_delivers_each_message_once_and_records_each_window_at_its_commit(store_url):
    name = 'record-at-commit'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(10)])
    seen, ids_seen = [], []

    def fn(window):
        seen.extend(m['i'] for m in window.data)
        ids_seen.append(window.id)
    em = mb.streaming(name, size=2, url=store_url, executor='inline').make(fn)
    for _ in range(5):
        em.run(blocking=False)
    assert sorted(seen) == list(range(10))  # each exactly once
    records = list(stream.window())
    assert len(records) == 5 and all(w.processed for w in records)
    assert all(w.data == [] for w in records)  # the data is not stored a second time
    assert em.stats['windows'] == 5 and stream.stats()['windows'] == 5
    assert stream.stats()['available'] == 0 and list(stream.buffer()) == []
    assert not set(ids_seen) & {w.id for w in records}  # the record did not exist while the function ran


def test_keep_false_failed_window_leaves_no_record_and_is_delivered_again(store_url):
    name = 'record-at-commit-fails'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': 0}, {'i': 1}])
    calls = []

    def flaky(window):
        calls.append([m['i'] for m in window.data])
        if len(calls) == 1:
            raise ValueError('first attempt fails')
    em = mb.streaming(name, size=2, url=store_url, executor='inline', retry_backoff=0).make(flaky)
    em.run(blocking=False)
    assert list(stream.window()) == [] and stream.stats()['available'] == 2
    em.run(blocking=False)
    assert calls == [[0, 1], [0, 1]]
    assert [w.processed for w in stream.window()] == [True]
    assert stream.stats()['available'] == 0


def test_keep_true_still_records_the_window_with_its_data_when_emitted(store_url):
    name = 'record-at-emit'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': 0}, {'i': 1}])
    during = []
    em = mb.streaming(name, size=2, keep=True, url=store_url, executor='inline').make(
        lambda window: during.append([(w.data, w.processed) for w in stream.window()]))
    em.run(blocking=False)
    assert during == [[([{'i': 0}, {'i': 1}], False)]]
    assert [(w.data, w.processed) for w in stream.window()] == [([{'i': 0}, {'i': 1}], True)]


def test_on_sqlite_a_window_costs_two_write_transactions(tmp_path):
    url = f'sqlite:///{tmp_path}/two-writes.db'
    name = 'two-writes'
    stream = mb.stream(name, url=url)
    stream.append([{'i': i} for i in range(4)])
    # lease=600: the next look for expired leases (a write) is due 5 s after the first round's
    em = mb.streaming(name, size=2, url=url, executor='inline', lease=600).make(lambda window: None)
    em.run(blocking=False)  # the first round also expires leases: not counted
    statements = []
    em.store.db.conn().set_trace_callback(statements.append)  # the inline consumer's thread and connection
    em.run(blocking=False)
    assert sum(1 for sql in statements if sql.startswith('BEGIN')) == 2  # the claim, the commit with the record
    assert stream.stats()['available'] == 0
    assert [w.processed for w in stream.window()] == [True, True]


# -- isolate=True: a failing window is bisected, only what fails alone is dead-lettered --
def poisoned_by_flag(calls):
    def fn(window):
        calls.append([m['i'] for m in window.data])
        if any(m['poison'] for m in window.data):
            raise ValueError('poison message')
        return window.data
    return fn


def sunk_ids(sink):
    return sorted(m['i'] for items in sink.items for m in items)


def test_isolate_dead_letters_only_the_poison_message_of_a_window(store_url):
    from tests.helpers import ListSink, settled
    name = 'isolate-poison'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i, 'poison': i == 5} for i in range(8)])
    calls, sink = [], ListSink()
    em = mb.make_emitter(name, poisoned_by_flag(calls), size=8, url=store_url, executor='inline', sink=sink,
                         max_attempts=3, retry_backoff=0, isolate=True)
    try:
        em.run(blocking=False)  # 8 fail -> 4 + 4 -> 2 + 2 -> 1 + 1: only message 5 counts an attempt
        assert sunk_ids(sink) == [0, 1, 2, 3, 4, 6, 7], 'the 7 good ones delivered to the sink once each'
        assert len(calls) == 7 and [5] in calls, 'one call, then two per split: 1 + 3 * 2'
        assert [(m.data['i'], m.attempts) for m in stream.store.messages(name)] == [(5, 1)], \
            'the good ones are committed; only the poison counted an attempt and is back in the stream'
        assert stream.dead_letters() == [] and em.stats['dead'] == 0
        # a CountWindow cuts windows of size: the retried message joins the next 7 that arrive
        for attempt in (2, 3):
            stream.append([{'i': 100 * attempt + i, 'poison': False} for i in range(7)])
            em.run(blocking=False)
    finally:
        em.close()
    [dead] = stream.dead_letters()
    assert dead.data['i'] == 5 and dead.attempts == 3 and 'ValueError: poison message' in dead.error
    assert em.stats['dead'] == 1
    good = [0, 1, 2, 3, 4, 6, 7] + [100 * a + i for a in (2, 3) for i in range(7)]
    assert sunk_ids(sink) == sorted(good), 'every good message delivered and committed, none dead'
    assert calls.count([5]) == 3, 'the poison ran alone max_attempts times'
    assert len(calls) == 3 * 7, 'at most 2 * log2(size) extra calls per attempt'
    assert settled(stream) and stream.stats()['dead'] == 1


def test_without_isolate_a_poison_message_takes_its_whole_window_to_the_dead_letters(store_url):
    from tests.helpers import ListSink
    name = 'no-isolate-poison'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i, 'poison': i == 5} for i in range(8)])
    calls, sink = [], ListSink()
    em = mb.make_emitter(name, poisoned_by_flag(calls), size=8, url=store_url, executor='inline', sink=sink,
                         max_attempts=3, retry_backoff=0)
    assert em.isolate is False, 'isolation is opt-in'
    try:
        for _ in range(3):
            em.run(blocking=False)
    finally:
        em.close()
    assert calls == [list(range(8))] * 3, 'the window is retried whole, never split'
    assert sorted(m.data['i'] for m in stream.dead_letters()) == list(range(8))
    assert sink.items == [] and em.stats['dead'] == 8


def test_isolate_when_every_message_fails_alone_costs_a_bounded_number_of_calls(store_url):
    name = 'isolate-all-fail'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i, 'poison': True} for i in range(8)])
    calls = []
    em = mb.make_emitter(name, poisoned_by_flag(calls), size=8, url=store_url, executor='inline',
                         max_attempts=2, retry_backoff=0, isolate=True)
    try:
        em.run(blocking=False)
        assert len(calls) == 2 * 8 - 1, 'one attempt: windows of 8, 4, 4, 2 (x4) and 1 (x8), 15 calls'
        assert sorted(c[0] for c in calls if len(c) == 1) == list(range(8))
        em.run(blocking=False)  # all 8 came back (no backoff) as one window; the second attempt is the last
    finally:
        em.close()
    assert sorted(m.data['i'] for m in stream.dead_letters()) == list(range(8))
    assert all(m.attempts == 2 for m in stream.dead_letters())
    assert len(calls) == 2 * (2 * 8 - 1), 'max_attempts * (2 * size - 1) calls, no more'
    for i in range(8):
        assert calls.count([i]) == 2, f'message {i} ran alone once per attempt'
    assert em.stats['dead'] == 8


def test_isolate_is_validated():
    import pytest
    from minibatch.errors import ConfigurationError
    from minibatch.options import ConsumerOptions
    assert ConsumerOptions().isolate is False
    assert ConsumerOptions(isolate=True).isolate is True
    for bad in ('yes', 1, None):
        with pytest.raises(ConfigurationError, match='isolate must be True or False'):
            ConsumerOptions(isolate=bad)


# -- a running consumer looks for its own retry when the backoff ends ---------
def test_a_running_consumer_retries_when_the_backoff_ends_not_at_the_next_periodic_expiry(store_url):
    # with lease=60 the periodic search for expired leases runs every 5 s; a retry due after
    # 0.1 s must not wait for it (docs/reliability.rst: retried after a pause of retry_backoff)
    name = 'soon'
    stream = mb.stream(name, url=store_url)
    stream.append({'x': 1})
    calls = []

    def fails_once(window):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ValueError('first try fails')

    em = mb.streaming(name, size=1, url=store_url, executor='inline', lease=60, retry_backoff=0.1,
                      blocking=False)(fails_once)
    try:
        wait_until(lambda: len(calls) >= 1, timeout=10, message='the first try')
        wait_until(lambda: len(calls) >= 2, timeout=3.5, message='the retry, due 0.1 s after the failure')
    finally:
        em.stop()
        em.thread.join(10)
    assert stream.stats()['done'] + stream.stats()['available'] + stream.stats()['retry'] == 0

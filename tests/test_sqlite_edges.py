"""The embedded store at its edges: window records of dead consumers, read-only files, old files.

SQLite only (the store-independent contract is tests/test_store_contract.py), except the
CountWindow retry of a lone message, which runs on every store (``store_url``).
"""
import contextlib
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
import uuid

import pytest

import minibatch as mb
from minibatch.errors import ConfigurationError
from minibatch.store.sqlite import SQLiteStore
from tests.helpers import ListSink, settled, wait_until
from tests.test_reliability import delivered, events, start_consumer, stop_all


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / 'edges.db')


@pytest.fixture
def store(db_path):
    store = SQLiteStore('sqlite:///' + db_path)
    yield store
    store.close()


# -- the write lock -----------------------------------------------------------------
@contextlib.contextmanager
def write_lock_held_elsewhere(path, seconds):
    """Another connection takes the write lock of ``path`` and holds it ``seconds``; the block runs meanwhile."""
    held = threading.Event()

    def hold():
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute('BEGIN IMMEDIATE')
        held.set()
        time.sleep(seconds)
        conn.execute('COMMIT')
        conn.close()
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        yield
    finally:
        holder.join()


def test_a_write_waits_for_the_write_lock_another_connection_holds_and_reads_are_not_blocked(db_path):
    store = SQLiteStore(f'sqlite:///{db_path}?timeout=5')
    store.ensure_stream('s')
    with write_lock_held_elsewhere(db_path, 0.3):
        started = time.monotonic()
        store.append('s', [{'i': 1}])  # waits in short steps (Database._begin), not failing
        waited = time.monotonic() - started
    assert 0.25 <= waited < 4.0
    assert [m.data for m in store.find_available('s')] == [{'i': 1}]
    # the waits are the store's own, in short steps: SQLite's busy handler (1 ms and more per try) is off
    assert store.db.conn().execute('PRAGMA busy_timeout').fetchone()[0] == 0
    with write_lock_held_elsewhere(db_path, 0.3):
        started = time.monotonic()
        assert [m.data for m in store.find_available('s')] == [{'i': 1}]  # WAL: a reader does not wait
        assert time.monotonic() - started < 0.2


def test_a_write_gives_up_on_a_write_lock_held_past_the_busy_timeout(db_path):
    store = SQLiteStore(f'sqlite:///{db_path}?timeout=0.1')
    store.ensure_stream('s')
    with write_lock_held_elsewhere(db_path, 4.0):
        with pytest.raises(sqlite3.OperationalError, match='locked'):
            store.append('s', [{'i': 1}])
    assert store.find_available('s') == []  # nothing half-written


# -- a new file opened by many at once ----------------------------------------------
def _ensure_stream(store, errors):
    try:
        store.ensure_stream('s')
    except Exception as exc:
        errors.append(exc)


def _ensure_stream_in_child(url):
    errors = []
    _ensure_stream(SQLiteStore(url), errors)
    os._exit(1 if errors else 0)


def test_a_new_file_opened_by_many_threads_at_once_never_reports_locked(tmp_path):
    # switching a new file to WAL can fail with "locked" at once, without the busy timeout
    # (it did in about 1 in 50 fresh files with 8 threads before the schema was made in turns)
    errors = []
    for attempt in range(60):
        store = SQLiteStore(f'sqlite:///{tmp_path}/fresh{attempt}.db')
        threads = [threading.Thread(target=_ensure_stream, args=(store, errors)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store.close()
    assert errors == []


def test_a_new_file_opened_by_several_processes_at_once_never_reports_locked(tmp_path):
    context = multiprocessing.get_context('fork')
    for attempt in range(10):
        url = f'sqlite:///{tmp_path}/fresh{attempt}.db'
        processes = [context.Process(target=_ensure_stream_in_child, args=(url,)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [p.exitcode for p in processes] == [0] * 4, 'a process could not create the stream'


# -- read-only files (issue 12, item 12) -------------------------------------------
def as_non_root():
    if os.geteuid() == 0:
        pytest.skip('root may write any file: run as a user to test file permissions')


def fill(url, name='s', n=3):
    stream = mb.stream(name, url=url)
    stream.append([{'i': i} for i in range(n)])
    return stream


def test_a_read_only_store_reads_and_refuses_every_write(db_path):
    url = 'sqlite:///' + db_path
    writer = fill(url)
    before = os.stat(db_path).st_mtime_ns, writer.stats()
    reader = SQLiteStore(url + '?readonly=true')
    try:
        assert [m.data for m in reader.messages('s')] == [{'i': 0}, {'i': 1}, {'i': 2}]
        assert reader.counts('s')['available'] == 3 and [s.name for s in reader.list_streams()] == ['s']
        assert reader.ensure_stream('s').name == 's', 'an existing stream needs no write'
        for write in (lambda: reader.append('s', [{'i': 3}]), lambda: reader.ensure_stream('new'),
                      lambda: reader.expire_leases('s'), lambda: reader.heartbeat('s', 'c', {}),
                      lambda: reader.ensure_stream('s', interval=5.0)):
            with pytest.raises(ConfigurationError, match='read-only .opened with readonly=True.'):
                write()
        writer.append([{'i': 3}])  # a writer goes on meanwhile, and the reader sees it
        assert reader.counts('s')['available'] == 4
    finally:
        reader.close()
    assert writer.stats()['available'] == 4 and before[0] <= os.stat(db_path).st_mtime_ns


def test_a_read_only_stream_gives_its_stats(db_path):
    fill('sqlite:///' + db_path)
    stream = mb.stream('s', url=f'sqlite:///{db_path}?readonly=1')
    assert stream.stats()['available'] == 3
    with pytest.raises(ConfigurationError, match='read-only'):
        stream.append({'i': 9})
    assert stream.stats()['available'] == 3


def test_a_missing_file_opened_read_only_is_not_created_and_reads_as_empty(tmp_path):
    path = tmp_path / 'not' / 'yet.db'
    reader = SQLiteStore(f'sqlite:///{path}', readonly=True)
    try:
        assert reader.list_streams() == [] and reader.counts('s')['available'] == 0
        assert not (tmp_path / 'not').exists(), 'reading created nothing'
        with pytest.raises(ConfigurationError, match='read-only'):
            reader.append('s', [{'i': 1}])
        assert not (tmp_path / 'not').exists()
        fill(f'sqlite:///{path}', n=2)  # the file appears: the reader reads it
        assert reader.counts('s')['available'] == 2
    finally:
        reader.close()


def test_a_bad_readonly_option_is_refused(db_path):
    with pytest.raises(ConfigurationError, match='readonly must be true or false'):
        SQLiteStore(f'sqlite:///{db_path}?readonly=maybe')


@pytest.mark.parametrize('file_mode, folder_mode', [(0o400, 0o700), (0o600, 0o500), (0o400, 0o500)])
def test_a_file_this_user_may_only_read_opens_read_only(tmp_path, file_mode, folder_mode):
    as_non_root()
    folder = tmp_path / 'ro'
    path = folder / 'mb.db'
    fill(f'sqlite:///{path}')
    from minibatch.store import reset_stores
    reset_stores()  # the writer's connections closed: no -wal or -shm left behind
    os.chmod(path, file_mode)
    os.chmod(folder, folder_mode)
    try:
        store = SQLiteStore(f'sqlite:///{path}')  # no option: the permissions decide
        try:
            assert store.counts('s')['available'] == 3
            assert mb.stream('s', url=f'sqlite:///{path}').stats()['available'] == 3
            with pytest.raises(ConfigurationError, match='read-only .this user may not write'):
                store.append('s', [{'i': 3}])
        finally:
            store.close()
    finally:
        os.chmod(folder, 0o700)
        os.chmod(path, 0o600)


# -- window records of a dead consumer (issue 12, item 8) ------------------------
def test_expire_leases_removes_the_unprocessed_window_records_of_the_claims_it_expires(store):
    store.ensure_stream('s')
    ids = store.append('s', [{'i': i} for i in range(5)])
    dead, alive, done = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    store.claim('s', ids[:2], dead, lease=0.05)
    store.claim('s', ids[2:3], alive, lease=60)
    store.claim('s', ids[3:4], done, lease=0.05)
    orphan = store.save_window('s', [{'i': 0}, {'i': 1}], token=dead)
    running = store.save_window('s', [{'i': 2}], token=alive)
    committed = store.save_window('s', [{'i': 3}], token=done)
    store.commit('s', done, ids[3:4], keep=True, window_id=committed)
    untracked = store.save_window('s', [{'i': 9}])  # no token: an earlier version's record, left alone
    time.sleep(0.06)
    assert store.expire_leases('s') == 2
    kept = {w.id: w.processed for w in store.windows('s')}
    assert orphan not in kept
    assert kept == {running: False, committed: True, untracked: False}


def test_a_claim_topped_up_holds_all_its_messages_to_the_new_lease_and_keeps_its_window_record(store):
    # a CountWindow tops up a window under the same token: the claim, one row, takes the later lease
    store.ensure_stream('s')
    ids = store.append('s', [{'i': i} for i in range(2)])
    token = uuid.uuid4().hex
    store.claim('s', ids[:1], token, lease=0.05)
    store.claim('s', ids[1:], token, lease=60)
    window = store.save_window('s', [{'i': 0}, {'i': 1}], token=token)
    time.sleep(0.06)
    assert store.expire_leases('s') == 0
    assert [m.id for m in store.messages('s', state='claimed')] == ids
    assert [w.id for w in store.windows('s', processed=False)] == [window]
    assert store.commit('s', token, ids) == 2 and store.messages('s') == []


def test_a_file_of_an_earlier_version_gets_the_token_column(db_path):
    # the windows table as 0.x files have it: no token column
    conn = sqlite3.connect(db_path)
    conn.executescript("""
        CREATE TABLE windows (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, created REAL NOT NULL,
                              data TEXT NOT NULL, processed INTEGER NOT NULL DEFAULT 0,
                              query TEXT NOT NULL DEFAULT '[]');
        INSERT INTO windows (stream, created, data) VALUES ('s', 0, '[{"old": 1}]');
    """)
    conn.close()
    store = SQLiteStore('sqlite:///' + db_path)
    try:
        assert [(w.data, w.processed) for w in store.windows('s')] == [([{'old': 1}], False)]
        ids = store.append('s', [{'i': 1}])
        token = uuid.uuid4().hex
        store.claim('s', ids, token, lease=0.05)
        store.save_window('s', [{'i': 1}], token=token)
        time.sleep(0.06)
        assert store.expire_leases('s') == 1
        assert [w.data for w in store.windows('s')] == [[{'old': 1}]]  # the old record stays, the orphan went
    finally:
        store.close()


def test_a_killed_keep_consumer_leaves_no_unprocessed_window_record(db_path, tmp_path):
    url = 'sqlite:///' + db_path
    stream = mb.stream('orphans', url=url)
    stream.append([{'i': i} for i in range(3)])
    outdir = tmp_path / 'out'
    outdir.mkdir()
    victim = start_consumer(url, 'orphans', outdir, size=3, executor='inline', keep=True, lease=1.0, slow=30)
    try:
        wait_until(lambda: events(outdir, 'start'), timeout=60, message='the window to start', alive=[victim])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        stop_all([victim])
    store = stream.store
    assert [w.processed for w in store.windows('orphans')] == [False], 'the killed window left its record'
    wait_until(lambda: store.expire_leases('orphans'), timeout=10, message='the lease to expire')
    assert store.windows('orphans') == [], 'the expiry removed the dead window record'
    successor = start_consumer(url, 'orphans', outdir, size=3, executor='inline', keep=True, lease=1.0)
    try:
        wait_until(lambda: sorted(delivered(outdir)) == [0, 1, 2], timeout=60, message='redelivery',
                   alive=[successor])
        wait_until(lambda: settled(stream), timeout=30, message='the window committed')
    finally:
        stop_all([successor])
    assert [(w.data, w.processed) for w in store.windows('orphans')] == [([{'i': 0}, {'i': 1}, {'i': 2}], True)]


# -- a CountWindow retries a lone failed message (issue 12, both stores) ----------
def flaky_alone(fails_alone, calls):
    """A function failing any window with the poison in company, and ``fails_alone`` times with it alone."""
    def fn(window):
        ids = [m['i'] for m in window.data]
        calls.append(ids)
        if 0 in ids and (len(ids) > 1 or calls.count([0]) <= fails_alone):
            raise ValueError('poison message')
        return window.data
    return fn


@pytest.mark.parametrize('fails_alone', [1, 99], ids=['fails-once', 'always-fails'])
def test_a_lone_retry_runs_without_waiting_for_a_full_window(store_url, fails_alone):
    # isolate=True leaves the poison alone in the stream; size=10 fresh messages will never come
    name = 'lone-retry'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(10)])
    calls, sink = [], ListSink()
    em = mb.streaming(name, size=10, url=store_url, executor='inline', sink=sink, max_attempts=3,
                      retry_backoff=0.1, isolate=True, blocking=False)(flaky_alone(fails_alone, calls))
    try:
        if fails_alone == 1:
            wait_until(lambda: sum(map(len, sink.items)) == 10, timeout=10, message='all 10 processed')
        else:
            wait_until(lambda: stream.dead_letters(), timeout=10, message='the poison dead-lettered')
        wait_until(lambda: settled(stream), timeout=10, message='nothing waiting')
    finally:
        em.stop()
        em.thread.join(30)
    assert em.error is None, em.error
    alone = calls.count([0])
    if fails_alone == 1:
        assert alone == 2 and stream.dead_letters() == [], 'failed once alone, then succeeded'
    else:
        assert alone == 3, 'ran alone max_attempts times'
        assert [(m.data['i'], m.attempts) for m in stream.dead_letters()] == [(0, 3)]
    assert sorted(m['i'] for items in sink.items for m in items) == list(range(1 if fails_alone > 1 else 0, 10))


def test_fresh_messages_still_wait_for_a_full_window(store_url):
    # 0.6's behaviour: a count window of size N holds N fresh messages
    name = 'full-windows'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(9)])
    sink = ListSink()
    em = mb.make_emitter(name, lambda w: w.data, size=10, url=store_url, executor='inline', sink=sink)
    try:
        em.run(blocking=False)
        assert sink.items == [] and stream.stats()['available'] == 9
        stream.append([{'i': 9}])
        em.run(blocking=False)
    finally:
        em.close()
    assert [[m['i'] for m in items] for items in sink.items] == [list(range(10))]


# -- a lease is not shortened by waiting for the write lock (issue 12, item 13) -----
def test_a_claim_that_waited_for_the_write_lock_keeps_its_whole_lease(store, db_path):
    import threading
    store.ensure_stream('s')
    ids = store.append('s', [{'i': 1}])
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute('BEGIN IMMEDIATE')  # another process writing for a while
    got = []
    claimer = threading.Thread(target=lambda: got.append(store.claim('s', ids, uuid.uuid4().hex, lease=1.0)))
    claimer.start()
    time.sleep(1.2)  # longer than the lease: the claim waits for the lock all that time
    blocker.execute('COMMIT')
    blocker.close()
    claimer.join(10)
    assert [m.id for m in got[0]] == ids
    assert store.expire_leases('s') == 0, 'the lease runs from the claim, not from before the wait for the lock'
    assert store.counts('s')['claimed'] == 1


# -- a window that outlives its consumer's stop (issue 12, item 13) ----------------
def test_a_window_finishing_after_its_stream_was_deleted_forwards_nothing(store_url, caplog):
    # 0.6's test suites stop a consumer (em._stop = True) and drop the database for the next
    # test while its window is still running: the window's result reached the next test's sink
    import threading
    name = 'outlived'
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': 1}])
    started, finish, sink = threading.Event(), threading.Event(), ListSink()

    def slow(window):
        started.set()
        finish.wait(30)
        return window.data

    em = mb.streaming(name, url=store_url, executor='thread', sink=sink, blocking=False)(slow)
    try:
        assert started.wait(30), 'the window started'
        em.stop()
        stream.delete()
    finally:
        finish.set()
        em.thread.join(30)
    assert 'lease expired' not in caplog.text, 'no lease expired: the messages were deleted'
    assert 'no longer held' in caplog.text, 'the window was dropped, and the log says why'
    assert sink.items == [], 'the result of a window whose messages are gone is not forwarded'


# -- claims: one row per claim, a claimed message's own row untouched ------------------------
def _rows(db_path, sql, params=()):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_a_claim_of_100_messages_writes_one_claim_row_and_leaves_the_messages_rows_as_they_were(store, db_path):
    store.ensure_stream('s')
    ids = store.append('s', [{'i': i} for i in range(150)])
    before = _rows(db_path, 'SELECT id, state, processed, claim, lease, attempts FROM buffer ORDER BY id')
    token = uuid.uuid4().hex
    assert [m.id for m in store.claim('s', store.find_available('s', limit=100), token, lease=60)] == ids[:100]
    assert _rows(db_path, 'SELECT id, state, processed, claim, lease, attempts FROM buffer ORDER BY id') == before
    assert _rows(db_path, 'SELECT token, stream, json_array_length(ids) FROM claims') == [(token, 's', 100)]
    # ... and yet they are claimed everywhere it shows: not offered, counted, listed as claimed
    assert [m.id for m in store.find_available('s')] == ids[100:]
    assert store.counts('s')['claimed'] == 100 and store.counts('s')['available'] == 50
    assert [m.state for m in store.messages('s', limit=101)] == ['claimed'] * 100 + ['available']
    assert store.claim('s', ids[:100], uuid.uuid4().hex, lease=60) == []  # nobody else takes them
    assert store.commit('s', token, ids[:100]) == 100
    assert _rows(db_path, 'SELECT count(*) FROM claims') == [(0,)] and store.counts('s')['available'] == 50


def test_committing_part_of_a_claim_keeps_the_rest_held_under_it(store):
    store.ensure_stream('s')
    ids = store.append('s', [{'i': i} for i in range(4)])
    token = uuid.uuid4().hex
    store.claim('s', ids, token, lease=60)
    assert store.commit('s', token, ids[:1]) == 1
    assert store.unclaim('s', token, ids[1:2]) == 1
    assert [(m.id, m.state) for m in store.messages('s')] == [(ids[1], 'available'), (ids[2], 'claimed'),
                                                              (ids[3], 'claimed')]
    assert store.renew('s', token, lease=60) == 2
    assert store.release('s', token, ids[2:], error='boom', max_attempts=1) == (0, 2)
    assert store.renew('s', token, lease=60) == 0 and store.counts('s')['dead'] == 2


def test_a_claimed_message_is_not_aged_out_by_max_age_and_clear_drops_the_claims(store, db_path):
    store.ensure_stream('s')
    ids = store.append('s', [{'i': i} for i in range(3)])
    token = uuid.uuid4().hex
    store.claim('s', ids[:1], token, lease=60)
    time.sleep(0.02)
    assert store.housekeep('s', max_age=0.01) == (2, 2)  # the two unclaimed ones expired
    assert [(m.id, m.state) for m in store.messages('s')] == [(ids[0], 'claimed')]
    assert store.commit('s', token, ids[:1]) == 1
    store.claim('s', store.append('s', [{'i': 9}]), uuid.uuid4().hex, lease=60)
    store.clear('s')
    assert _rows(db_path, 'SELECT count(*) FROM claims') == [(0,)]


def test_claims_of_a_file_of_an_earlier_version_are_carried_over(db_path):
    # the claims as earlier versions kept them: in the messages' rows (state 'claimed', the token, the lease)
    store = SQLiteStore('sqlite:///' + db_path)
    store.ensure_stream('s')
    ids = store.append('s', [{'i': i} for i in range(4)])
    store.close()
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE buffer SET state = 'claimed', processed = 1, claim = 'old', lease = ? WHERE id IN (?, ?)",
                 (time.time() + 600, ids[0], ids[1]))
    conn.execute("UPDATE buffer SET state = 'claimed', processed = 1, claim = 'gone', lease = ? WHERE id = ?",
                 (time.time() - 1, ids[2]))
    conn.commit()
    conn.close()
    store = SQLiteStore('sqlite:///' + db_path)
    try:
        assert [m.state for m in store.messages('s')] == ['claimed', 'claimed', 'claimed', 'available']
        assert [m.id for m in store.find_available('s')] == ids[3:]
        assert store.expire_leases('s', max_attempts=3) == 1  # the lapsed one is given back, an attempt counted
        assert [(m.state, m.attempts) for m in store.messages('s')][2] == ('available', 1)
        assert store.commit('s', 'old', ids[:2]) == 2  # the live one is committed by its consumer as before
        assert [m.id for m in store.messages('s')] == ids[2:]
    finally:
        store.close()


def test_a_claim_that_leaves_out_a_disjoint_claim_still_refuses_what_other_claims_hold(store):
    # the event-time close passes the tokens of its windows awaiting their commit (sqlite_messages.claim)
    from minibatch.store import sqlite_messages as lifecycle
    from minibatch.store.sqlite_values import MESSAGE_COLUMNS
    store.ensure_stream('s')
    ids = store.append('s', [{'i': i} for i in range(6)])
    ours, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    store.claim('s', ids[:2], ours, lease=60)
    store.claim('s', ids[2:4], theirs, lease=60)
    got = store.db.write(lambda conn: lifecycle.claim(conn, 's', ids[2:], 'new', time.time() + 60, MESSAGE_COLUMNS,
                                                      disjoint=[ours]))
    assert [row[0] for row in got] == ids[4:]  # theirs are still checked; only ours were left out

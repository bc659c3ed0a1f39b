"""The embedded store at its edges: window records of dead consumers, read-only files, old files.

SQLite only (the store-independent contract is tests/test_store_contract.py).
"""
import os
import signal
import sqlite3
import time
import uuid

import pytest

import minibatch as mb
from minibatch.store.sqlite import SQLiteStore
from tests.helpers import settled, wait_until
from tests.test_reliability import delivered, events, start_consumer, stop_all


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / 'edges.db')


@pytest.fixture
def store(db_path):
    store = SQLiteStore('sqlite:///' + db_path)
    yield store
    store.close()


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
    assert {w.id: w.processed for w in store.windows('s')} == {running: False, committed: True, untracked: False}


def test_a_claim_that_still_holds_a_message_keeps_its_window_record(store):
    # a CountWindow tops up a window under the same token: those messages have a later lease
    store.ensure_stream('s')
    ids = store.append('s', [{'i': i} for i in range(2)])
    token = uuid.uuid4().hex
    store.claim('s', ids[:1], token, lease=0.05)
    store.claim('s', ids[1:], token, lease=60)
    window = store.save_window('s', [{'i': 0}, {'i': 1}], token=token)
    time.sleep(0.06)
    assert store.expire_leases('s') == 1
    assert [w.id for w in store.windows('s', processed=False)] == [window]


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

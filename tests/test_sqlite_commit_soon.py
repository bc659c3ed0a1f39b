"""A window's commit rides with this process's next write on the embedded store (Store.commit_soon).

SQLite only: the default of every other store commits at once (tests/test_store_contract.py).
"""
import logging
import os
import threading
import uuid

import pytest

import minibatch as mb
from minibatch.store.sqlite import SQLiteStore
from tests.helpers import ListSink, settled, wait_until


@pytest.fixture
def store(tmp_path):
    store = SQLiteStore(f'sqlite:///{tmp_path}/soon.db')
    yield store
    store.close()


def claimed(store, name, n):
    token = uuid.uuid4().hex
    return token, store.claim(name, store.find_available(name, limit=n), token, lease=60)


def test_a_queued_commit_is_not_written_until_the_next_write_which_carries_it(store):
    store.ensure_stream('s')
    store.append('s', [{'i': i} for i in range(4)])
    token, first = claimed(store, 's', 2)
    results = []
    store.commit_soon('s', token, [m.id for m in first], lambda n, wid: results.append((n, wid)), record=True)
    assert results == [] and store.counts('s')['claimed'] == 2  # queued: nothing written yet
    _, second = claimed(store, 's', 2)  # the next write: the commit runs first in its transaction
    assert [m.data['i'] for m in second] == [2, 3]
    assert len(results) == 1 and results[0][0] == 2
    assert store.counts('s')['claimed'] == 2  # the second claim's; the first window's messages are gone
    assert [w.id for w in store.windows('s')] == [results[0][1]]  # its record, written in the same transaction


def test_flush_writes_what_is_queued_and_is_idempotent(store):
    store.ensure_stream('s')
    store.append('s', [{'i': 1}])
    token, messages = claimed(store, 's', 1)
    window_id = store.save_window('s', [{'i': 1}], token=token)
    results = []
    store.commit_soon('s', token, [m.id for m in messages], lambda n, wid: results.append((n, wid)),
                      window_id=window_id)
    store.flush()
    store.flush()
    assert results == [(1, window_id)]
    assert store.counts('s')['claimed'] == 0 and store.find_available('s') == []
    assert [w.processed for w in store.windows('s')] == [True]


def test_a_queued_work_that_fails_is_left_out_and_the_write_it_rode_with_goes_on(store, caplog):
    store.ensure_stream('s')
    got = []
    store.db.write_soon(lambda conn: conn.execute('INSERT INTO no_such_table VALUES (1)'), got.append)
    with caplog.at_level(logging.ERROR, logger='minibatch.store.sqlite'):
        ids = store.append('s', [{'i': 1}])
    assert got == [None]
    assert 'no_such_table' in caplog.text
    assert [m.id for m in store.find_available('s')] == ids


def test_a_forked_child_does_not_carry_the_parents_queued_commit(store):
    store.ensure_stream('s')
    store.append('s', [{'i': 1}])
    token, messages = claimed(store, 's', 1)
    store.commit_soon('s', token, [m.id for m in messages], lambda n, wid: None)
    pid = os.fork()
    if pid == 0:  # the child writes: it must not commit the parent's window
        try:
            store.append('s', [{'i': 2}])
            os._exit(0 if store.counts('s')['claimed'] == 1 else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.flush()
    assert [m.data for m in store.find_available('s')] == [{'i': 2}]


def test_a_consumer_that_goes_idle_writes_its_last_commit(tmp_path):
    url = f'sqlite:///{tmp_path}/idle.db'
    stream = mb.stream('idle', url=url)
    stream.append([{'i': i} for i in range(3)])
    sink = ListSink()
    em = mb.streaming('idle', size=3, url=url, executor='inline', sink=sink).make(lambda window: window.data)
    em.run(blocking=False)  # one round, and its window settles: the commit is written before run returns
    assert sink.items == [[{'i': 0}, {'i': 1}, {'i': 2}]]
    assert settled(stream) and em.stats['committed'] == 1 and em.stats['processed'] == 3


def test_a_running_consumer_with_nothing_more_to_do_writes_its_last_commit_at_once(tmp_path):
    url = f'sqlite:///{tmp_path}/running.db'
    stream = mb.stream('running', url=url)
    sink = ListSink()
    em = mb.streaming('running', size=3, url=url, executor='inline', sink=sink).make(lambda window: window.data)
    thread = threading.Thread(target=em.run, daemon=True)
    thread.start()
    try:
        stream.append([{'i': i} for i in range(3)])
        wait_until(lambda: sink.items, timeout=10, message='the window ran')
        # well within a heartbeat (a write that would carry the commit too): the idle round flushes it
        wait_until(lambda: settled(stream), timeout=em.HEARTBEAT / 2, message='the commit written')
        assert thread.is_alive() and em.stats['committed'] == 1
    finally:
        em.stop()
        thread.join(10)

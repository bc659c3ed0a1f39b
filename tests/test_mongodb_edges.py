"""The MongoDB store at the edges (issue 12): all-or-nothing appends, the 16 MB limit, unreadable
records, window records too large or left by a dead consumer.

Against the MongoDB-wire test server (a one-node replica set, so it has transactions). The
store's other way of appending a batch atomically, for servers without transactions (a
pending batch published by one update), is forced with ``store.use_transactions = False``:
both ways run every append test.
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import bson
import pymongo
import pytest
from bson.raw_bson import RawBSONDocument

import minibatch as mb
from minibatch.errors import InvalidMessage
from minibatch.store import get_store
from minibatch.store.mongodb_append import HEADROOM, MAX_ERROR_CHARS, PENDING, ServerFacts
from minibatch.store.records import AVAILABLE, DEAD, utcnow
from tests.helpers import wait_until
from tests.test_reliability import events, start_consumer, stop_all

pytestmark = pytest.mark.mongodb

HERE = os.path.dirname(__file__)
S = 'edges'
MB = 2 ** 20
WAYS = ['transaction', 'pending']


@pytest.fixture(params=WAYS)
def store(request, mongo_url):
    """The MongoDB store, appending batches one way or the other."""
    store = get_store(mongo_url)
    if request.param == 'pending':
        store.use_transactions = False
    elif not store.server().transactions:
        pytest.skip('this server has no transactions (a standalone mongod): the pending way is its only way')
    store.ensure_stream(S)
    return store


def records(store, name=S, **query):
    """Every buffer record of ``name`` as stored, pending ones included (the store's queries hide those)."""
    return list(store._buffer().find({'stream': name, **query}))


def visible(store, name=S):
    return sum(store.counts(name)[state] for state in ('available', 'claimed', 'retry', 'done', 'dead'))


# -- item 1: a list append is all or nothing, within the size limit ----------------------------
def test_a_batch_with_one_message_over_the_limit_writes_nothing_and_names_it(store):
    with pytest.raises(InvalidMessage) as excinfo:
        store.append(S, [{'i': 0}, {'i': 1}, {'i': 2}, {'s': 'a' * 17 * MB}])
    text = str(excinfo.value)
    assert 'message 3 of the batch' in text and 'too large' in text
    assert f'{store.server().max_bson:,}' in text and 'maxBsonObjectSize' in text
    assert records(store) == [] and visible(store) == 0
    with pytest.raises(InvalidMessage, match='the message is too large'):
        store.append(S, [{'s': 'a' * 17 * MB}])
    with pytest.raises(InvalidMessage, match='message 1 of the batch'):
        store.validate([{'i': 0}, {'s': 'a' * 17 * MB}])  # the same check, no round trip
    assert records(store) == []


def test_a_message_at_the_limit_keeps_room_for_what_its_life_adds(mongo_url):
    """The largest message accepted can still be claimed, and dead-lettered with the longest error kept."""
    store = get_store(mongo_url)
    envelope = len(bson.encode({'_id': bson.ObjectId(), 'stream': S, 'created': utcnow(), 'data': {'s': ''},
                                'processed': False, 'state': AVAILABLE, 'attempts': 0}))
    largest = {'s': 'a' * (store.server().max_bson - HEADROOM - envelope)}
    with pytest.raises(InvalidMessage, match='too large'):
        store.append(S, [{'s': largest['s'] + 'a'}])
    [id_] = store.append(S, [largest])
    [message] = store.claim(S, [id_], 'token', 30)
    assert len(message.data['s']) == len(largest['s'])
    assert store.release(S, 'token', [id_], error='x' * (10 * MAX_ERROR_CHARS), max_attempts=1) == (0, 1)
    [dead] = store.dead_letters(S)
    assert len(dead.error) <= MAX_ERROR_CHARS and dead.error.endswith('(cut short)')


def test_a_write_the_server_refuses_is_an_invalid_message_with_nothing_written(store):
    # the store believes the server takes 64 MB documents: the server itself refuses the 17 MB one
    store._facts = ServerFacts(max_bson=64 * MB, transactions=store.server().transactions)
    for batch in ([{'i': 0}, {'i': 1}, {'s': 'a' * 17 * MB}], [{'s': 'a' * 17 * MB}]):
        with pytest.raises(InvalidMessage, match='MongoDB refused') as excinfo:
            store.append(S, batch)
        assert not isinstance(excinfo.value, pymongo.errors.PyMongoError)
        assert records(store) == [] and visible(store) == 0


PRODUCER = textwrap.dedent('''
    import sys, time
    from pymongo import monitoring
    from minibatch.store import get_store

    url, way, when, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    class Insert(monitoring.CommandListener):
        """Says when the batch's insert is sent or done; 'done' holds the append there (before commit/publish)."""
        def started(self, event):
            if event.command_name == 'insert' and when == 'sent':
                print('insert', flush=True)
        def succeeded(self, event):
            if event.command_name == 'insert' and when == 'done':
                print('insert', flush=True)
                time.sleep(120)
        def failed(self, event):
            pass

    store = get_store(url, event_listeners=[Insert()])
    store.use_transactions = way == 'transaction'
    store.ensure_stream('edges')
    store.append('edges', [{'i': i, 'pad': 'x' * 50} for i in range(n)])
    print('appended', flush=True)
''')


@pytest.mark.parametrize('when', ['sent', 'done'])
def test_a_producer_killed_mid_append_leaves_none_or_all_of_its_batch(store, mongo_url, when):
    """kill -9 of a process appending 10,000 messages in one list: 0 or 10,000 visible, never a part.

    'sent': killed as the insert goes out; 'done': killed after the server wrote the whole batch but
    before the transaction's commit (or the pending batch's publication).
    """
    way = 'pending' if store.use_transactions is False else 'transaction'
    # the test server's way with the full 10,000; the other way with fewer, as the test server takes
    # ~5 s to write 10,000 records and as long again to delete them
    n = 10000 if way == 'transaction' else 2000
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get('PYTHONPATH', '')]))
    producer = subprocess.Popen([sys.executable, '-c', PRODUCER, mongo_url, way, when, str(n)], env=env,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert producer.stdout.readline().strip() == 'insert', 'the producer started its append'
        os.kill(producer.pid, signal.SIGKILL)
        producer.wait(timeout=10)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert visible(store) in (0, n)
    assert len(store.find_available(S)) in (0, n)
    if when == 'done':
        assert visible(store) == 0, 'killed before the commit or publication: nothing of the batch is visible'
        if way == 'pending':
            assert len(records(store, state=PENDING)) == n, 'written, invisible'
    # what a crashed producer left pending is settled by expire_leases once it is old enough
    store.expire_leases(S)
    assert visible(store) in (0, n), 'a young pending batch is left alone'
    store.pending_timeout = 0
    store.expire_leases(S)
    assert records(store, state=PENDING) == []
    assert visible(store) in (0, n)
    # the abandoned transaction or batch blocks nothing
    store.append(S, [{'after': 1}, {'after': 2}])
    assert [m.data for m in store.find_available(S)][-2:] == [{'after': 1}, {'after': 2}]


def test_a_pending_batch_whose_publication_began_is_published_whole(mongo_url):
    """A standalone server that crashed during the publishing update_many left part of the batch published."""
    store = get_store(mongo_url)
    store.use_transactions = False
    store.ensure_stream(S)
    store.append(S, [{'i': 0}])
    buffer = store._buffer()
    batch = bson.ObjectId()
    raw = [{'_id': bson.ObjectId(), 'stream': S, 'created': utcnow(), 'data': {'i': i}, 'processed': True,
            'state': PENDING, 'attempts': 0, 'batch': batch} for i in range(1, 6)]
    buffer.insert_many(raw)
    buffer.update_one({'_id': raw[0]['_id']}, {'$set': {'state': AVAILABLE, 'processed': False}})
    assert [m.data['i'] for m in store.find_available(S)] == [0, 1]
    assert store.counts(S)['available'] == 2 and len(store.messages(S)) == 2, 'pending ones are not there yet'
    store.pending_timeout = 0
    assert store.expire_leases(S) == 4
    assert [m.data['i'] for m in store.find_available(S)] == [0, 1, 2, 3, 4, 5]


# -- item 3: a window over 16 MB runs and commits --------------------------------------------
@pytest.mark.parametrize('keep', [True, False])
def test_a_window_over_16_mb_runs_and_commits(mongo_url, keep):
    name = f'big-{keep}'
    stream = mb.stream(name, url=mongo_url)
    n = 100
    stream.append([{'i': i, 'blob': 'b' * 200 * 1024} for i in range(n)])
    seen = []
    em = mb.make_emitter(name, lambda window: seen.append([m['i'] for m in window.data]), size=n, url=mongo_url,
                         executor='inline', keep=keep)
    try:
        em.run(blocking=False)
    finally:
        em.close()
    assert seen == [list(range(n))], 'the whole window ran once'
    stats = stream.stats()
    assert (stats['available'], stats['claimed'], stats['retry'], stats['dead']) == (0, 0, 0, 0)
    assert stats['done'] == (n if keep else 0)
    [record] = stream.store.windows(name)
    assert record.processed and record.data == []
    stored = stream.store._collections()[2].find_one({'_id': record.id})
    assert stored.get('data_omitted', False) is keep, 'keep=True: the data was left out for its size; keep=False: never kept'


def test_a_window_under_the_limit_keeps_its_data(mongo_url):
    store = get_store(mongo_url)
    data = [{'i': i} for i in range(3)]
    id_ = store.save_window(S, data, token='t')
    [record] = store.windows(S)
    assert record.id == id_ and record.data == data
    assert 'data_omitted' not in store._collections()[2].find_one({'_id': id_})


# -- item 8: the window records of a dead consumer -------------------------------------------
def test_a_killed_consumers_window_record_is_removed_and_the_redelivered_window_recorded(mongo_url, tmp_path):
    name = 'dead-consumer'
    stream = mb.stream(name, url=mongo_url)
    stream.append([{'i': i} for i in range(10)])
    store = stream.store
    victim = start_consumer(mongo_url, name, tmp_path, size=10, executor='inline', lease=1.5, slow=60, keep=True)
    try:
        wait_until(lambda: events(tmp_path, 'start'), timeout=60, message='the window to start', alive=[victim])
        [orphan] = store.windows(name, processed=False)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        stop_all([victim])
    # another live claim, whose window record must stay
    stream.append([{'i': 10}])
    [live] = store.claim(name, store.find_available(name), 'live', 600)
    live_window = store.save_window(name, [live.data], token='live')
    wait_until(lambda: store.expire_leases(name), timeout=30, message='the lease of the killed consumer to end')
    assert [w.id for w in store.windows(name, processed=False)] == [live_window], \
        f'the killed consumer\'s record {orphan.id} is removed, the live one kept'
    store.commit(name, 'live', [live.id], keep=True, window_id=live_window)
    seen = []
    em = mb.make_emitter(name, lambda window: seen.append([m['i'] for m in window.data]), size=10, url=mongo_url,
                         executor='inline', keep=True)
    try:
        em.run(blocking=False)
    finally:
        em.close()
    assert seen == [list(range(10))]
    windows = store.windows(name)
    assert all(w.processed for w in windows)
    assert sorted([m['i'] for m in w.data] for w in windows) == [list(range(10)), [10]], \
        'the redelivered window is recorded once, processed'


# -- item 4: unreadable records are dead-lettered, DBRef-shaped dicts refused ------------------
def deep(levels):
    """BSON bytes of a document nested ``levels`` deep (beyond what the append accepts)."""
    inner = bson.encode({})
    for _ in range(levels):
        inner = bson.encode({'a': RawBSONDocument(inner)})
    return RawBSONDocument(inner)


def insert_foreign(store, data=None):
    """Insert an available record of stream S as another program would (``data`` None: none); its id.

    Skips the test when the server refuses to store such a record.
    """
    record = {'_id': bson.ObjectId(), 'stream': S, 'created': utcnow(), 'processed': False, 'state': AVAILABLE,
              'attempts': 0}
    if data is not None:
        record['data'] = data
    try:
        store._buffer().insert_one(RawBSONDocument(bson.encode(record)))
    except pymongo.errors.OperationFailure as exc:
        pytest.skip(f'this server does not store such a record: {exc}')
    return record['_id']


UNREADABLE = {
    'text data': lambda: 'not a dict',
    'no data': None,
    'too deep to decode': lambda: deep(975),   # the driver's decoder gives up (InvalidBSON)
    'too deep to update': lambda: deep(950),   # readable, but the test server cannot update it
}


@pytest.mark.parametrize('kind', list(UNREADABLE))
@pytest.mark.parametrize('by', ['find', 'id'])
def test_an_unreadable_record_is_dead_lettered_with_its_reason_while_others_flow(mongo_url, kind, by):
    store = get_store(mongo_url)
    store.ensure_stream(S)
    store.append(S, [{'i': 0}])
    data = UNREADABLE[kind]() if UNREADABLE[kind] is not None else None
    record = {'_id': insert_foreign(store, data)}  # written by another program
    if data is not None:
        record['data'] = data
    store.append(S, [{'i': 2}, {'i': 3}])
    assert [m.id for m in store.messages(S)][1] == record['_id'], 'inspection shows it, changing nothing'
    assert store.counts(S)[DEAD] == 0
    if by == 'find':
        available = store.find_available(S)  # drops what it cannot read (a deep record it can read stays)
        assert [m.data for m in available if m.id != record['_id']] == [{'i': 0}, {'i': 2}, {'i': 3}]
        claimed = store.claim(S, available, 'token', 30)
    else:
        claimed = store.claim(S, [m.id for m in store.messages(S)], 'token', 30)
    assert [m.data for m in claimed] == [{'i': 0}, {'i': 2}, {'i': 3}], 'the others flow'
    [dead] = store.dead_letters(S)
    assert dead.id == record['_id'] and dead.error.startswith('unreadable message') and dead.data == {}
    kept = store._buffer().find_one({'_id': record['_id']}, {'original': 1})
    # the record as it was (claimed, when claimed by id) is kept in the dead letter, its data untouched
    assert bson.encode({'_id': record['_id']})[4:-1] in kept['original']
    if 'data' in record:
        assert bson.encode({'data': record['data']})[4:-1] in kept['original']
    assert store.commit(S, 'token', [m.id for m in claimed]) == 3


def test_an_unreadable_record_does_not_stop_a_consumer(mongo_url):
    store = get_store(mongo_url)
    stream = mb.stream(S, url=mongo_url)
    stream.append([{'i': 0}])
    unreadable = insert_foreign(store, deep(975))
    stream.append([{'i': 2}])
    seen = []
    em = mb.make_emitter(S, lambda window: seen.extend(m['i'] for m in window.data), size=1, url=mongo_url,
                         executor='inline')
    try:
        for _ in range(3):
            em.run(blocking=False)
    finally:
        em.close()
    assert seen == [0, 2]
    assert [m.id for m in stream.dead_letters()] == [unreadable]


@pytest.mark.parametrize('message', [
    {'$ref': 'x', '$id': 1},
    {'a': [1, {'b': {'$id': 1, '$ref': 'coll', '$db': 'other'}}]},
    {'a': {'$ref': 'x', '$id': None, 'extra': 2}},
])
def test_a_dict_that_would_read_back_as_a_dbref_is_refused(store, message):
    for call in (store.validate, lambda docs: store.append(S, docs)):
        with pytest.raises(InvalidMessage, match=r'"\$ref" and "\$id".*DBRef'):
            call([{'ok': 1}, message])
    assert records(store) == []


def test_dollar_keys_that_are_no_dbref_read_back_unchanged(store):
    messages = [{'$ref': 'only a ref'}, {'$id': 1}, {'x': '$ref'}, {'l': ['$ref', {'$ref': 1}]},
                {'$refs': 'x', '$id': 2}]
    store.append(S, messages)
    assert [m.data for m in store.find_available(S)] == messages
    assert [m.data for m in store.messages(S)] == messages
    store.save_window(S, messages)
    assert [w.data for w in store.windows(S)] == [messages]


def test_appends_of_the_two_ways_read_back_the_same(store):
    name = f'same-{uuid.uuid4().hex[:6]}'
    store.ensure_stream(name)
    batch = [{'i': i, 'b': b'\x00\xff', 'n': None} for i in range(5)]
    ids = store.append(name, batch)
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [m.data for m in store.find_available(name)] == batch
    assert store.counts(name)['available'] == 5
    assert store.append_dead(name, [{'x': 1}, {'x': 2}], 'bad input') and len(store.dead_letters(name)) == 2
    assert records(store, name, state=PENDING) == []


def test_an_unreadable_record_does_not_end_the_change_stream_watch(mongo_url):
    store = get_store(mongo_url)
    store.ensure_stream(S)
    waiter = store.waiter(S)
    try:
        if not waiter.supported:
            pytest.skip('this server has no change streams')
        insert_foreign(store, deep(975))
        assert waiter.wait(10), 'woken by the unreadable record'
        store.append(S, [{'i': 1}])
        assert waiter.wait(10), 'and still watching: woken by the next append'
        assert waiter.supported and waiter._thread.is_alive()
    finally:
        waiter.close()



def test_the_watch_wakes_for_an_append_while_other_writes_keep_the_collection_busy(mongo_url):
    """The wire server ends a change stream's wait at every write to the collection: the watch then asks again
    a little later (EARLY_PAUSE), and an append to its stream still wakes the consumer at once after that."""
    store = get_store(mongo_url)
    store.ensure_stream(S)
    store.append('other', [{'i': i} for i in range(20)])
    waiter = store.waiter(S)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            store._buffer().update_many({'stream': 'other'}, {'$inc': {'data.i': 1}})
    thread = threading.Thread(target=churn, daemon=True)
    try:
        if not waiter.supported:
            pytest.skip('this server has no change streams')
        thread.start()
        assert waiter.wait(1.0) is False, 'writes to another stream are not news'
        store.append(S, [{'i': 1}])
        asked = time.monotonic()
        assert waiter.wait(10), 'woken by the append'
        assert time.monotonic() - asked < 2.0
    finally:
        stop.set()
        thread.join()
        waiter.close()

# -- event-time windows: messages an index built during an open append missed are still indexed ---------
def test_a_batch_whose_append_is_open_as_the_first_event_time_consumer_starts_gets_indexed(mongo_url):
    """A batch appended in a transaction that is still open while the database's first event-time consumer starts
    is found by that consumer. (The MongoDB-wire test server builds an index without the documents of a transaction
    open meanwhile: such a batch was never indexed, and the competing-consumer tests of
    tests/test_eventtime_crash.py stalled. A consumer that starts catches up with what the index missed.)"""
    from minibatch.store.eventtime import state_for
    store = get_store(mongo_url)
    if not store.server().transactions:
        pytest.skip('this server has no transactions: an append is never a transaction open meanwhile')
    store.append(S, [{'k': 'a', 'ts': 0}])
    template = records(store)[0]
    buffer = store._buffer()
    with buffer.database.client.start_session() as session:
        session.start_transaction()
        buffer.insert_many([{**template, '_id': bson.ObjectId(), 'data': {'k': 'a', 'ts': i}} for i in range(1, 6)],
                           session=session)
        state = state_for(store, S, 'spec-of-a-consumer-starting-now')  # its indexes made now, if not before
        session.commit_transaction()
    assert sorted(m.data['ts'] for m in state.unindexed(100)) == [0, 1, 2, 3, 4, 5]

"""MongoSource, MongoReplicasetSource and MongoSink against the MongoDB-wire test server.

The collections live in the fixture's fresh database (``mongo_url``); the
streams live either there too or in the embedded SQLite store, so that the
saved positions and converted documents are checked on both stores.
"""
import datetime
import re
import threading
import uuid

import pymongo
import pytest
from bson import Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

import minibatch as mb
from minibatch.contrib.mongodb import MongoReplicasetSource, MongoSink, MongoSinkError, MongoSource, json_safe
from minibatch.errors import ConfigurationError, InvalidMessage
from tests.helpers import wait_until

pytestmark = pytest.mark.mongodb


# -- helpers ---------------------------------------------------------------
@pytest.fixture
def db(mongo_url):
    """The test database, through a client of our own (closed afterwards)."""
    client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    yield client.get_default_database()
    client.close()


def unique(prefix='c'):
    return f'{prefix}_{uuid.uuid4().hex[:8]}'


def messages(stream):
    """The data of every message of ``stream``, oldest first (any state)."""
    return [m.data for m in stream.store.messages(stream.name)]


def ids_in(stream):
    return [m['_id'] for m in messages(stream)]


class Running:
    """A source running ``source.stream(stream)`` in a thread we can join."""

    def __init__(self, source, stream):
        self.source = source
        self.thread = threading.Thread(target=source.stream, args=(stream,), daemon=True)
        self.thread.start()

    def stop(self):
        self.source.cancel()
        self.thread.join(10)
        assert not self.thread.is_alive(), f'{self.source} did not stop'


class RecordingStream:
    """The real stream, with every append() call recorded (what a source sent, and how)."""

    def __init__(self, stream, after_append=None):
        self._stream = stream
        self.calls = []
        self._after_append = after_append

    def append(self, data):
        self._stream.append(data)
        self.calls.append(data)
        if self._after_append:
            self._after_append(self)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def wait_for_sentinel(coll, stream, timeout=10):
    """Insert a sentinel and wait until it arrives: everything before it was appended by then."""
    marker = coll.insert_one({'sentinel': True}).inserted_id
    wait_until(lambda: str(marker) in ids_in(stream), timeout=timeout, message='the sentinel document')
    return str(marker)


# -- converting documents ----------------------------------------------------
def test_json_safe_turns_bson_values_into_plain_values():
    oid = ObjectId()
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)
    aware = when.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    uid = uuid.uuid4()
    doc = {'_id': oid, 'dec': Decimal128('1.10'), 'big': Int64(2 ** 40), 'when': when, 'aware': aware,
           'ts': Timestamp(1700000000, 1), 'bin': Binary(b'\x00\xff'), 'uid': Binary(uid.bytes, 4),
           're': Regex('^a', 'i'), 'pattern': re.compile('b+'), 'code': Code('x = 1'),
           'ref': DBRef('other', oid, 'db'), 'lo': MinKey(), 'hi': MaxKey(),
           'nested': [{'id': oid, 'n': None, 'b': True, 'f': 1.5}]}
    safe = json_safe(doc)
    assert safe == {'_id': str(oid), 'dec': '1.10', 'big': 2 ** 40, 'when': when,
                    'aware': when - datetime.timedelta(hours=2),
                    'ts': datetime.datetime(2023, 11, 14, 22, 13, 20), 'bin': 'AP8=', 'uid': str(uid),
                    're': '^a', 'pattern': 'b+', 'code': 'x = 1',
                    'ref': {'collection': 'other', 'id': str(oid), 'database': 'db'}, 'lo': 'MinKey', 'hi': 'MaxKey',
                    'nested': [{'id': str(oid), 'n': None, 'b': True, 'f': 1.5}]}
    assert type(safe['big']) is int and type(safe['code']) is str and safe['aware'].tzinfo is None


def test_documents_arrive_as_plain_values_in_either_store(db, store_url):
    coll = db[unique()]
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, 678000)
    doc = {'dec': Decimal128('3.14'), 'when': when, 'ref': ObjectId(), 'bin': Binary(b'abc'),
           'deep': {'list': [1, 'two', {'x': Int64(3)}]}}
    oid = coll.insert_one(dict(doc)).inserted_id
    stream = mb.stream(unique('s'), url=store_url)
    running = Running(MongoSource(coll), stream)
    try:
        wait_until(lambda: messages(stream), timeout=10, message='the document in the stream')
    finally:
        running.stop()
    [message] = messages(stream)
    assert message == json_safe({'_id': oid, **doc})
    assert message['when'] == when and isinstance(message['when'], datetime.datetime), 'datetimes stay datetimes'


# -- MongoSource -------------------------------------------------------------
def test_collection_to_stream_to_consumer_to_collection(db, mongo_url):
    src, dst = db[unique('src')], db[unique('dst')]
    ids = src.insert_many([{'i': i} for i in range(20)]).inserted_ids
    name = unique('s')
    em = mb.streaming(name, size=5, url=mongo_url, executor='thread', workers=2, blocking=False,
                      source=MongoSource(src, delay=0.05), sink=MongoSink(dst))(lambda window: window.data)
    try:
        wait_until(lambda: dst.count_documents({}) >= 20, timeout=30, message='20 documents in the target')
        more = src.insert_many([{'i': i} for i in range(20, 25)]).inserted_ids  # arrive while running
        wait_until(lambda: dst.count_documents({}) >= 25, timeout=30, message='25 documents in the target')
    finally:
        em.stop()
        em.thread.join(10)
        em.stream.stop()
    copied = list(dst.find().sort('i', 1))
    # each _id once (a second insert of the same _id would have failed), nothing missing
    assert [d['_id'] for d in copied] == [str(i) for i in ids + more]
    assert [d['i'] for d in copied] == list(range(25))


@pytest.mark.parametrize('size', [1, 3])
def test_restarted_source_continues_after_the_last_appended_document(db, store_url, size):
    coll = db[unique()]
    first = [str(i) for i in coll.insert_many([{'i': i} for i in range(7)]).inserted_ids]
    stream = mb.stream(unique('s'), url=store_url)

    # the first source "dies" right after its second append
    source = MongoSource(coll, size=size, delay=0.02)
    recording = RecordingStream(stream, after_append=lambda rec: len(rec.calls) == 2 and source.cancel())
    running = Running(source, recording)
    running.thread.join(10)
    assert not running.thread.is_alive()
    done = 2 * size
    assert ids_in(stream) == first[:done], 'stopped mid-way'

    later = [str(i) for i in coll.insert_many([{'i': i} for i in range(7, 10)]).inserted_ids]
    again = Running(MongoSource(coll, size=size, delay=0.02), stream)  # a NEW source object
    try:
        sentinel = wait_for_sentinel(coll, stream)
    finally:
        again.stop()
    assert ids_in(stream) == first + later + [sentinel], 'each document exactly once, in order'


def test_a_crash_between_append_and_checkpoint_repeats_that_append_only(db, store_url):
    coll = db[unique()]
    ids = [str(i) for i in coll.insert_many([{'i': i} for i in range(4)]).inserted_ids]
    stream = mb.stream(unique('s'), url=store_url)
    source = MongoSource(coll, delay=0.02)
    save = source.checkpoint.save

    def crash_on_second(stream_, position):
        # the process dies after the second append reached the store, before its position was saved
        if str(position) == ids[1]:
            source.cancel()
            raise RuntimeError('killed')
        save(stream_, position)

    source.checkpoint.save = crash_on_second
    running = Running(source, stream)
    running.thread.join(10)
    assert ids_in(stream) == ids[:2]

    again = Running(MongoSource(coll, delay=0.02), stream)
    try:
        sentinel = wait_for_sentinel(coll, stream)
    finally:
        again.stop()
    assert ids_in(stream) == ids[:2] + ids[1:] + [sentinel], 'the one unsaved append repeats; nothing is lost'


def test_size_one_appends_dicts_larger_sizes_append_lists(db):
    coll = db[unique()]
    ids = [str(i) for i in coll.insert_many([{'i': i} for i in range(7)]).inserted_ids]
    for size, shapes in ((1, [dict] * 7), (3, [3, 3, 1])):
        stream = RecordingStream(mb.stream(unique('s')))
        running = Running(MongoSource(coll, size=size, delay=0.02), stream)
        try:
            wait_until(lambda: len(ids_in(stream)) == 7, timeout=10, message='7 messages')
        finally:
            running.stop()
        got = [type(c) if isinstance(c, dict) else len(c) for c in stream.calls]
        assert got == shapes
        assert ids_in(stream) == ids


def test_idcol_and_query_select_and_order_documents(db):
    coll = db[unique()]
    coll.insert_many([{'seq': 3, 'kind': 'a'}, {'seq': 1, 'kind': 'a'}, {'seq': 2, 'kind': 'b'},
                      {'kind': 'a'}, {'seq': 5, 'kind': 'a'}])
    stream = mb.stream(unique('s'))
    running = Running(MongoSource(coll, idcol='seq', query={'kind': 'a'}, delay=0.02), stream)
    try:
        wait_until(lambda: len(messages(stream)) == 3, timeout=10, message='3 messages')
        coll.insert_one({'seq': 4, 'kind': 'a'})  # behind the position: a later seq is needed
        coll.insert_one({'seq': 6, 'kind': 'a'})
        wait_until(lambda: len(messages(stream)) == 4, timeout=10, message='the 4th message')
    finally:
        running.stop()
    assert [m['seq'] for m in messages(stream)] == [1, 3, 5, 6]


def test_reset_forgets_the_position(db):
    coll = db[unique()]
    coll.insert_many([{'i': i} for i in range(3)])
    stream = mb.stream(unique('s'))
    source = stream.attach(MongoSource(coll, delay=0.02))  # the ordinary way, in attach's thread
    try:
        assert source.ready.wait(10), 'ready is set once the collection can be read'
        wait_until(lambda: len(messages(stream)) == 3, timeout=10, message='3 messages')
    finally:
        stream.stop()
    assert source.stopped.wait(10) and not source.ready.is_set()
    assert list(stream.store.get_stream(stream.name).status['checkpoints'])
    source.reset(stream)
    assert stream.store.get_stream(stream.name).status['checkpoints'] == {}
    running = Running(MongoSource(coll, delay=0.02), stream)
    try:
        wait_until(lambda: len(messages(stream)) == 6, timeout=10, message='the collection read again')
    finally:
        running.stop()


# -- MongoReplicasetSource --------------------------------------------------
def start_watching(coll, stream, **kwargs):
    source = MongoReplicasetSource(coll, **kwargs)
    running = Running(source, stream)
    assert source.ready.wait(10), 'the change stream did not open'
    return running


def test_change_stream_source_resumes_after_the_last_appended_change(db, store_url):
    coll = db[unique()]
    coll.insert_one({'before': True})  # older than the first start: not a change the source sees
    stream = mb.stream(unique('s'), url=store_url)

    start_watching(coll, stream).stop()  # opened and stopped before any change
    early = [str(i) for i in coll.insert_many([{'i': 0}, {'i': 1}]).inserted_ids]

    running = start_watching(coll, stream)
    try:
        wait_until(lambda: ids_in(stream) == early, timeout=10, message='changes made before the first append')
        during = [str(coll.insert_one({'i': 2}).inserted_id)]
        wait_until(lambda: len(ids_in(stream)) == 3, timeout=10, message='a change while running')
    finally:
        running.stop()

    down = [str(i) for i in coll.insert_many([{'i': 3}, {'i': 4}]).inserted_ids]
    running = start_watching(coll, stream)  # a NEW source object resumes from the saved token
    try:
        sentinel = wait_for_sentinel(coll, stream)
    finally:
        running.stop()
    assert ids_in(stream) == early + during + down + [sentinel], 'each change exactly once, in order'


def test_change_stream_source_appends_batches_up_to_size(db):
    coll = db[unique()]
    stream = RecordingStream(mb.stream(unique('s')))
    running = start_watching(coll, stream, size=4)
    try:
        ids = [str(i) for i in coll.insert_many([{'i': i} for i in range(10)]).inserted_ids]
        wait_until(lambda: len(ids_in(stream)) == 10, timeout=10, message='10 changes')
    finally:
        running.stop()
    assert all(isinstance(call, list) and 1 <= len(call) <= 4 for call in stream.calls)
    assert ids_in(stream) == ids


def test_change_stream_updates_and_change_events(db):
    coll = db[unique()]
    documents = mb.stream(unique('s'))
    events = mb.stream(unique('s'))
    watch_docs = start_watching(coll, documents, operations=('insert', 'update'))
    watch_events = start_watching(coll, events, operations=('insert', 'update', 'delete'), change_events=True)
    try:
        oid = coll.insert_one({'v': 1}).inserted_id
        coll.update_one({'_id': oid}, {'$set': {'v': 2}})
        coll.delete_one({'_id': oid})
        wait_until(lambda: len(messages(events)) == 3, timeout=10, message='3 change events')
        sentinel = wait_for_sentinel(coll, documents)
    finally:
        watch_docs.stop()
        watch_events.stop()
    # the update was looked up: the document after the change (or skipped if already deleted)
    assert messages(documents)[0] == {'_id': str(oid), 'v': 1}
    assert messages(documents)[1:-1] in ([{'_id': str(oid), 'v': 2}], [])
    assert messages(documents)[-1]['_id'] == sentinel
    kinds = [(e['operationType'], e['documentKey']['_id']) for e in messages(events)[:3]]
    assert kinds == [('insert', str(oid)), ('update', str(oid)), ('delete', str(oid))]
    assert messages(events)[1]['updateDescription']['updatedFields'] == {'v': 2}


# -- MongoSink ---------------------------------------------------------------
def test_sink_inserts_dicts_and_lists_without_changing_them(db):
    coll = db[unique()]
    sink = MongoSink(coll)
    one, many = {'a': 1}, [{'b': 1}, {'b': 2}, {'b': 3}]
    sink.put(one)
    sink.put(many)
    sink.put([])
    assert one == {'a': 1} and many == [{'b': 1}, {'b': 2}, {'b': 3}], 'the input was changed'
    assert [{k: v for k, v in d.items() if k != '_id'} for d in coll.find().sort('_id', 1)] == [one] + many
    # an unacknowledged collection is written acknowledged
    unacked = MongoSink(coll.with_options(write_concern=pymongo.WriteConcern(w=0)))
    assert unacked.collection.write_concern.acknowledged
    unacked.put({'c': 1})
    assert coll.count_documents({'c': 1}) == 1


def test_sink_with_key_writes_a_repeated_window_once(db):
    coll = db[unique()]
    sink = MongoSink(coll, key='_id')
    window = [{'_id': 'x', 'v': 1}, {'_id': 'y', 'v': 2}]
    sink.put(window)
    sink.put(window)
    sink.put({'_id': 'x', 'v': 3})
    assert sorted((d['_id'], d['v']) for d in coll.find()) == [('x', 3), ('y', 2)]
    with pytest.raises(InvalidMessage):
        sink.put([{'_id': 'z'}, {'no_key': 1}])
    assert coll.count_documents({}) == 2, 'nothing written from a batch with a document lacking the key'


def test_sink_failure_raises_and_the_window_is_retried_then_dead_lettered(db, mongo_url):
    coll = db[unique()]
    coll.create_index('k', unique=True)
    coll.insert_one({'k': 1})
    with pytest.raises(MongoSinkError, match='E11000|duplicate key') as failure:
        MongoSink(coll).put({'k': 1})
    assert isinstance(failure.value, mb.SinkError)
    assert isinstance(failure.value.__cause__, pymongo.errors.DuplicateKeyError), 'pymongo\'s error is the cause'

    class CountingSink(MongoSink):
        calls = 0

        def put(self, data):
            CountingSink.calls += 1
            super().put(data)

    stream = mb.stream(unique('s'), url=mongo_url)
    stream.append({'k': 1})
    em = mb.streaming(stream.name, size=1, url=mongo_url, executor='inline', max_attempts=2, retry_backoff=0.05,
                      sink=CountingSink(coll), blocking=False)(lambda window: window.data)
    try:
        dead = wait_until(stream.dead_letters, timeout=20, message='the window in the dead letters')
    finally:
        em.stop()
        em.thread.join(10)
    assert [m.data for m in dead] == [{'k': 1}]
    assert 'duplicate key' in dead[0].error.lower() or 'E11000' in dead[0].error
    assert CountingSink.calls == 2, 'tried max_attempts times'
    assert coll.count_documents({'k': 1}) == 1


# -- bad arguments -------------------------------------------------------------
def test_bad_arguments_are_refused_where_given(db):
    coll = db[unique()]
    for make in (lambda: MongoSource('not a collection'), lambda: MongoSource(coll, size=0),
                 lambda: MongoSource(coll, delay=-1), lambda: MongoSource(coll, query='x'),
                 lambda: MongoReplicasetSource(coll, operations=('delete',)),
                 lambda: MongoReplicasetSource(coll, operations=()),
                 lambda: MongoReplicasetSource(coll, max_await=0),
                 lambda: MongoSink(None)):
        with pytest.raises(ConfigurationError):
            make()
    with pytest.raises(InvalidMessage):
        MongoSink(coll).put('text')
    with pytest.raises(InvalidMessage):
        MongoSink(coll).put([{'a': 1}, 'text'])
    assert coll.count_documents({}) == 0

"""Consumer groups and exactly-once output on the MongoDB store: what only MongoDB needs to prove.

The contract (every store) is tested by tests/test_store_groups.py; here:

* copies are made once and none is skipped while producers in other processes
  append concurrently (ObjectIds order across producers only to the second,
  and a batch becomes visible when its transaction commits);
* the look-back copies a message that became visible below the position;
* retention keeps LOOKBACK seconds below the lowest position;
* the outbox protocol of ``commit(output=...)`` recovers from a crash after
  each of its steps (crashes injected by making one step raise a BaseException).
"""
import collections
import datetime
import multiprocessing
import time

import bson
import pymongo
import pytest

from minibatch.errors import InvalidMessage
from minibatch.store import get_store
from minibatch.store import mongodb_groups, mongodb_outbox
from minibatch.store.base import AVAILABLE, CLAIMED, DONE, group_stream, utcnow
from minibatch.store.mongodb import MongoStore
from minibatch.store.mongodb_append import PENDING
from tests.helpers import wait_until

S = 'orders'
G = 'billing'
OUT = 'totals'


@pytest.fixture
def store(mongo_url):
    store = get_store(mongo_url)
    yield store
    store.close()


def _db(store):
    return store._db()


def _copies(store, group=G, name=S):
    """origin -> number of copies in the group stream (any state)."""
    buffer = _db(store)['buffer']
    return collections.Counter(doc['origin'] for doc in buffer.find({'stream': group_stream(name, group)},
                                                                      {'origin': 1}))


def _originals(store, name=S):
    return {doc['_id'] for doc in _db(store)['buffer'].find({'stream': name, 'state': {'$ne': PENDING}}, {'_id': 1})}


# -- concurrent producers -----------------------------------------------------------------
N_PER_PRODUCER = 120


def _produce(url, producer, pending):
    """Append N_PER_PRODUCER messages in batches of 1 to 5; ``pending``: without transactions."""
    store = get_store(url)
    if pending:
        store.use_transactions = False  # batches written pending, then published
    n = 0
    while n < N_PER_PRODUCER:
        size = min(1 + n % 5, N_PER_PRODUCER - n)
        store.append(S, [{'p': producer, 'n': n + i} for i in range(size)])
        n += size
    store.close()


def test_concurrent_producers_no_message_skipped_or_copied_twice(store, mongo_url):
    store.ensure_stream(S)
    assert store.register_group(S, G) is True
    other = MongoStore(mongo_url)  # a second consumer of the group, pulling at the same time
    ctx = multiprocessing.get_context('spawn')
    producers = [ctx.Process(target=_produce, args=(mongo_url, i, i % 2 == 1)) for i in range(4)]
    for proc in producers:
        proc.start()
    try:
        # both pull while the producers append: small batches, so that the position passes
        # messages of one producer while another's are still being written
        while any(proc.is_alive() for proc in producers):
            store.pull(S, G, 7)
            other.pull(S, G, 5)
        for proc in producers:
            proc.join(60)
            assert proc.exitcode == 0
        total = 4 * N_PER_PRODUCER
        assert len(_originals(store)) == total

        def caught_up():
            store.pull(S, G, 50)
            other.pull(S, G, 50)
            return sum(_copies(store).values()) >= total
        wait_until(caught_up, timeout=30, message='every message copied')
        copies = _copies(store)
        assert set(copies) == _originals(store)  # none skipped
        assert set(copies.values()) == {1}  # none twice
        # the copies carry their originals' data and created
        originals = {doc['_id']: doc for doc in _db(store)['buffer'].find({'stream': S})}
        for message in store.messages(group_stream(S, G)):
            origin = _db(store)['buffer'].find_one({'_id': message.id})['origin']
            assert message.data == originals[origin]['data']
            assert message.state == AVAILABLE
        assert store.group_lag(S, G)[0] == total
    finally:
        for proc in producers:
            if proc.is_alive():
                proc.kill()


def test_a_crash_between_copying_and_moving_the_position_copies_nothing_twice(store):
    store.register_group(S, G)
    ids = store.append(S, [{'i': i} for i in range(10)])
    assert store.pull(S, G, 100) == 10
    # as if the pull died before moving the position: the same messages are read again
    _db(store)['stream'].update_one({'name': S}, {'$set': {f'status.groups.{G}.position': None}})
    assert store.pull(S, G, 100) == 0
    assert store.groups(S)[G]['position'] == ids[-1]
    assert _copies(store) == collections.Counter(ids)


# -- the look-back --------------------------------------------------------------------------
def _insert_late(store, seconds_ago, **data):
    """A message whose id was made ``seconds_ago`` but that becomes visible only now."""
    id_ = bson.ObjectId.from_datetime(datetime.datetime.now(datetime.timezone.utc)
                                      - datetime.timedelta(seconds=seconds_ago))
    _db(store)['buffer'].insert_one({'_id': id_, 'stream': S, 'created': utcnow(), 'data': data,
                                     'processed': False, 'state': AVAILABLE, 'attempts': 0})
    return id_


def test_look_back_copies_a_message_that_became_visible_below_the_position(store):
    store.register_group(S, G)
    ids = store.append(S, [{'i': i} for i in range(3)])
    assert store.pull(S, G, 100) == 3
    late = _insert_late(store, 2, late=True)
    assert late < store.groups(S)[G]['position']
    store.group_lookback_every = 0  # look back on every pull (by default at most once a second)
    assert store.pull(S, G, 100) == 1
    assert _copies(store) == collections.Counter([*ids, late])
    assert store.pull(S, G, 100) == 0  # once
    # a message later than the look-back's reach is not seen: the documented limit
    _insert_late(store, mongodb_groups.LOOKBACK + 30, very_late=True)
    assert store.pull(S, G, 100) == 0


def test_look_back_is_throttled_per_group(store, mongo_url):
    store.register_group(S, G)
    store.append(S, [{'i': 1}])
    store.group_lookback_every = 3600
    assert store.pull(S, G, 100) == 1
    assert store.pull(S, G, 100) == 0  # the first pull with a position looks back
    late = _insert_late(store, 2)
    assert store.pull(S, G, 100) == 0  # not due yet
    assert MongoStore(mongo_url).pull(S, G, 100) == 1  # another store object (another consumer) looks back
    assert _copies(store)[late] == 1


def test_a_pending_batch_stops_the_pull_until_published(store):
    store.register_group(S, G)
    first = store.append(S, [{'i': 0}])
    buffer = _db(store)['buffer']
    # a batch being written without a transaction, then a message after it
    pending = [bson.ObjectId() for _ in range(2)]
    buffer.insert_many([{'_id': i, 'stream': S, 'created': utcnow(), 'data': {'pending': True},
                         'processed': True, 'state': PENDING, 'batch': 'b1', 'attempts': 0} for i in pending])
    after = store.append(S, [{'i': 1}])
    assert store.pull(S, G, 100) == 1
    assert store.groups(S)[G]['position'] == first[0]
    buffer.update_many({'stream': S, 'batch': 'b1'}, {'$set': {'state': AVAILABLE, 'processed': False}})
    assert store.pull(S, G, 100) == 3
    assert set(_copies(store)) == {*first, *pending, *after}


def test_an_abandoned_pending_batch_is_settled_by_the_pull_it_blocks(store):
    store.register_group(S, G)
    buffer = _db(store)['buffer']
    buffer.insert_one({'_id': bson.ObjectId(), 'stream': S, 'created': utcnow() - datetime.timedelta(hours=1),
                       'data': {}, 'processed': True, 'state': PENDING, 'batch': 'gone', 'attempts': 0})
    after = store.append(S, [{'i': 1}])
    assert store.pull(S, G, 100) == 0  # blocked; settles the abandoned batch (deleted: no commit made it)
    assert store.pull(S, G, 100) == 1
    assert set(_copies(store)) == set(after)


# -- retention --------------------------------------------------------------------------------
def _consume_group(store, group=G, name=S):
    stream = group_stream(name, group)
    messages = store.find_available(stream)
    claimed = store.claim(stream, messages, 'tok-' + group, 30)
    store.commit(stream, 'tok-' + group, [m.id for m in claimed], keep=True)
    return len(claimed)


def test_retain_keeps_an_uncopied_message_the_look_back_may_still_copy(store):
    store.register_group(S, G)
    store.append(S, [{'i': i} for i in range(3)])
    assert store.pull(S, G, 100) == 3 and _consume_group(store) == 3
    assert store.retain(S) == 3  # committed by the only group: removed at once, with their copies
    assert not _originals(store) and not _copies(store)
    store.append(S, [{'i': 3}])
    assert store.pull(S, G, 100) == 1 and _consume_group(store) == 1
    late = _insert_late(store, 2, late=True)  # visible below the position, not copied yet
    assert store.retain(S) == 1
    assert _originals(store) == {late}, 'within LOOKBACK below the position and without a copy: kept'
    store.group_lookback_every = 0
    assert store.pull(S, G, 100) == 1 and _consume_group(store) == 1
    assert store.retain(S) == 1
    assert not _originals(store) and not _copies(store)
    # beyond the look-back's reach a message without a copy counts as one the group never copies
    # (before a 'latest' start, or its dead copy purged): the documented limit of late visibility
    _insert_late(store, mongodb_groups.LOOKBACK + 60, very_late=True)
    assert store.retain(S) == 1


def test_retain_waits_for_copies_not_committed_and_for_the_default_group(store, monkeypatch):
    monkeypatch.setattr(mongodb_groups, 'LOOKBACK', 0.0)
    store.register_group(S, G)
    store.register_group(S, 'default')
    ids = [_insert_late(store, 60 - i, i=i) for i in range(3)]
    store.append(S, [{'new': 1}])  # moves the position a minute past them
    store.pull(S, G, 100)
    assert store.retain(S) == 0  # no one committed
    token = 'tok'
    store.claim(S, ids[:2], token, 30)
    store.commit(S, token, ids[:2], keep=True)  # the default group committed two
    assert store.retain(S) == 0  # the group committed none
    stream = group_stream(S, G)
    copies = {doc['origin']: doc['_id'] for doc in _db(store)['buffer'].find({'stream': stream})}
    store.claim(stream, [copies[ids[0]], copies[ids[2]]], 'g', 30)
    store.commit(stream, 'g', [copies[ids[0]], copies[ids[2]]], keep=True)
    assert store.retain(S) == 1  # ids[0]: committed by both
    assert _originals(store) >= {ids[1], ids[2]} and ids[0] not in _originals(store)


# -- exactly-once output: the outbox ------------------------------------------------------------
class Crash(BaseException):
    """A crash injected into one step of a commit (a BaseException, as a kill would not be caught)."""


def _claimed(store, n=3, lease=30.0):
    ids = store.append(S, [{'i': i} for i in range(n)])
    token = 'tok-' + bson.ObjectId().__str__()
    assert len(store.claim(S, ids, token, lease)) == n
    return ids, token


def _lapse(store, token):
    """End the lease of ``token``'s claim now (as time passing would)."""
    _db(store)['buffer'].update_many({'claim': token}, {'$set': {'lease': utcnow() - datetime.timedelta(seconds=1)}})


def _output(store):
    """The data of the visible output messages."""
    return [m.data for m in store.messages(OUT)]


def _raw_output(store):
    return list(_db(store)['buffer'].find({'stream': OUT}))


COMMITS = ['commit_window', 'commit_window_id', 'commit']


def _commit(store, how, ids, token, docs, keep=False):
    if how == 'commit_window':
        return store.commit_window(S, token, ids, keep=keep, output=(OUT, docs))[0]
    if how == 'commit_window_id':
        window_id = store.save_window(S, [{'i': 0}], token=token)
        return store.commit(S, token, ids, keep=True, window_id=window_id, output=(OUT, docs))
    return store.commit(S, token, ids, keep=keep, output=(OUT, docs))


@pytest.mark.parametrize('how', COMMITS)
def test_commit_with_output_appends_once(store, how):
    ids, token = _claimed(store)
    assert _commit(store, how, ids, token, [{'total': 3}, {'total': 4}]) == 3
    assert _output(store) == [{'total': 3}, {'total': 4}]
    assert not store.messages(S, state=CLAIMED)
    assert all(doc['state'] == AVAILABLE for doc in _raw_output(store))
    # recovery finds nothing to do
    store.pending_timeout = 0
    _lapse(store, token)
    store.expire_leases(S), store.expire_leases(OUT)
    assert _output(store) == [{'total': 3}, {'total': 4}]
    # the small record of a commit without a window is gone, and never listed
    if how == 'commit':
        assert _db(store)['window'].count_documents({}) == 0
    assert len(store.windows(S)) == (0 if how == 'commit' else 1)


@pytest.mark.parametrize('how', COMMITS)
def test_crash_after_staging_appends_nothing(store, monkeypatch, how):
    ids, token = _claimed(store)
    stage = mongodb_outbox._insert_pending

    def stage_then_crash(*args):
        stage(*args)
        raise Crash()
    with monkeypatch.context() as patch:
        patch.setattr(mongodb_outbox, '_insert_pending', stage_then_crash)
        with pytest.raises(Crash):
            _commit(store, how, ids, token, [{'total': 3}])
    assert _output(store) == []  # staged, invisible
    assert len(_raw_output(store)) == 1
    _lapse(store, token)
    assert store.expire_leases(S) == 3  # given back: no commit was recorded
    assert {m.id for m in store.find_available(S)} == set(ids)
    store.pending_timeout = 0
    store.expire_leases(OUT)  # the abandoned output is deleted
    assert _raw_output(store) == []
    # the window runs again and its output appears once
    token2 = 'again'
    store.claim(S, ids, token2, 30)
    _commit(store, how, ids, token2, [{'total': 3}])
    assert _output(store) == [{'total': 3}]


def _commit_crashing_in(monkeypatch, step, store, how, ids, token, keep=False):
    """Commit ``ids`` with output, the process "killed" (Crash, a BaseException) when the outbox reaches ``step``."""
    def crash(*args, **kwargs):
        raise Crash()
    with monkeypatch.context() as patch:
        patch.setattr(mongodb_outbox, step, crash)
        with pytest.raises(Crash):
            _commit(store, how, ids, token, [{'total': 3}], keep=keep)


@pytest.mark.parametrize('how', COMMITS)
@pytest.mark.parametrize('keep', [False, True])
def test_crash_after_the_commit_point_commits_on_recovery(store, monkeypatch, how, keep):
    ids, token = _claimed(store)
    _commit_crashing_in(monkeypatch, 'commit_messages', store, how, ids, token, keep=keep)
    assert _output(store) == []
    assert len(store.messages(S, state=CLAIMED)) == 3
    _lapse(store, token)
    store.expire_leases(S)  # commits the messages as the consumer would have, and publishes the output
    assert _output(store) == [{'total': 3}]
    keep = keep or how == 'commit_window_id'
    assert [m.state for m in store.messages(S)] == ([DONE] * 3 if keep else [])
    store.pending_timeout = 0
    store.expire_leases(S), store.expire_leases(OUT)
    assert _output(store) == [{'total': 3}]
    assert not store.find_available(S)


@pytest.mark.parametrize('how', COMMITS)
def test_crash_after_committing_publishes_on_settling(store, monkeypatch, how):
    ids, token = _claimed(store)
    _commit_crashing_in(monkeypatch, 'publish', store, how, ids, token)
    assert _output(store) == []
    assert not store.messages(S, state=CLAIMED)
    store.expire_leases(OUT)  # not abandoned yet: stays pending
    assert _output(store) == []
    store.pending_timeout = 0
    store.expire_leases(S)
    store.expire_leases(OUT)  # abandoned, but its commit was recorded: published, not deleted
    assert _output(store) == [{'total': 3}]
    store.expire_leases(OUT)
    assert _output(store) == [{'total': 3}]


@pytest.mark.parametrize('how', COMMITS)
def test_crash_after_committing_is_finished_by_the_input_streams_recovery_within_seconds(store, monkeypatch, how):
    ids, token = _claimed(store)
    _commit_crashing_in(monkeypatch, 'publish', store, how, ids, token)
    store.expire_leases(S)
    assert _output(store) == [], 'a commit under way is left to its consumer for OPEN_GRACE'
    monkeypatch.setattr(mongodb_outbox, 'OPEN_GRACE', -1.0)
    store.expire_leases(S)  # no consumer of the output stream, no pending_timeout: the input's recovery publishes
    assert _output(store) == [{'total': 3}]
    store.expire_leases(S), store.expire_leases(OUT)
    assert _output(store) == [{'total': 3}]
    assert store.messages(S, state=CLAIMED) == []


@pytest.mark.parametrize('how', COMMITS)
@pytest.mark.parametrize('step', ['commit_messages', 'publish'])
def test_a_commit_retried_after_failing_part_way_appends_once(store, monkeypatch, how, step):
    # the runner retries a commit whose store call failed (the server briefly away): same token, same output
    ids, token = _claimed(store)
    _commit_crashing_in(monkeypatch, step, store, how, ids, token)
    _commit(store, how, ids, token, [{'total': 3}])
    assert _output(store) == [{'total': 3}]
    assert store.messages(S, state=CLAIMED) == []
    store.expire_leases(S), store.expire_leases(OUT)
    assert _output(store) == [{'total': 3}]


def test_a_commit_that_lost_its_claim_appends_nothing(store):
    ids, token = _claimed(store)
    _lapse(store, token)
    store.expire_leases(S)  # given back before the commit: no record yet
    assert store.commit_window(S, token, ids, output=(OUT, [{'total': 3}]))[0] == 0
    assert _raw_output(store) == []  # the staged output was deleted, not left to settle
    store.pending_timeout = 0
    store.expire_leases(OUT)
    assert _output(store) == []


def test_invalid_output_writes_nothing(store):
    ids, token = _claimed(store)
    with pytest.raises(InvalidMessage):
        store.commit_window(S, token, ids, output=(OUT, [{'ok': 1}, {'bad': object()}]))
    with pytest.raises(InvalidMessage):
        store.commit(S, token, ids, output=(OUT, {'not': 'a list'}))
    assert _raw_output(store) == []
    assert len(store.messages(S, state=CLAIMED)) == 3
    assert _db(store)['window'].count_documents({}) == 0


def test_output_to_a_stream_with_a_group_is_copied_once_published(store):
    store.register_group(OUT, G)
    ids, token = _claimed(store)
    assert store.commit_window(S, token, ids, output=(OUT, [{'total': 1}, {'total': 2}]))[0] == 3
    assert store.pull(OUT, G, 100) == 2
    assert sorted(m.data['total'] for m in store.messages(group_stream(OUT, G))) == [1, 2]


def test_the_wire_server_is_not_left_in_a_transaction(store, mongo_url):
    """A crash inside a commit with output leaves nothing that blocks writes (no transaction is used)."""
    ids, token = _claimed(store)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mongodb_outbox, 'commit_messages', lambda *a, **k: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            store.commit_window(S, token, ids, output=(OUT, [{'total': 3}]))
    client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        started = time.monotonic()
        client.get_default_database()['buffer'].update_many({'claim': token}, {'$set': {'touched': True}})
        assert time.monotonic() - started < 5
    finally:
        client.close()


def test_one_unique_index_of_copies_only_and_the_indexes_of_earlier_versions_go(store):
    # earlier: a sparse compound (stream, origin) index held every message (each has a stream), and a unique
    # index on an origin_key field: every append paid for both
    buffer = store._buffer()
    buffer.create_index([('stream', 1), ('origin', 1)], name='mb_origin', sparse=True)
    buffer.create_index([('origin_key', 1)], name='mb_origin_key', unique=True, sparse=True)
    mongodb_groups.ensure_indexes(buffer)
    indexes = buffer.index_information()
    assert not {'mb_origin', 'mb_origin_key'} & set(indexes)
    assert indexes['mb_copies']['partialFilterExpression'] == {'origin': {'$exists': True}}
    assert indexes['mb_copies']['unique']
    store.append(S, [{'i': 1}, {'i': 2}])
    store.register_group(S, 'g')
    assert store.pull(S, 'g', 10) == 2
    copies = list(buffer.find({'stream': group_stream(S, 'g'), 'origin': {'$exists': True}}).hint('mb_copies'))
    assert sorted(c['data']['i'] for c in copies) == [1, 2]
    # a second copy of the same original is refused by the server, and ignored
    assert mongodb_groups.insert_copies(buffer, [{**copies[0], '_id': bson.ObjectId()}]) == 0
    assert _copies(store, 'g') == collections.Counter({c['origin']: 1 for c in copies})

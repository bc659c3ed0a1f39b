"""The storage contract (minibatch/store/base.py), checked against every store.

Only the contract API is used, so the same tests hold every store to the same promises.
"""
import collections
import datetime
import multiprocessing
import threading
import time
import uuid

import pytest

from minibatch.errors import ConfigurationError, InvalidMessage, NotSupportedByStore
from minibatch.store.base import AVAILABLE, CLAIMED, DEAD, DONE, RETRY, STATES, Store, Waiter, utcnow

S = 'contract'


def token():
    return uuid.uuid4().hex


def wait_for(predicate, timeout=5.0, interval=0.02):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f'condition not met within {timeout}s')
        time.sleep(interval)


def fill(store, n, name=S):
    store.ensure_stream(name)
    return store.append(name, [{'i': i} for i in range(n)])


def claimed(store, n, name=S, lease=30):
    """Append ``n`` messages and claim them all under one token; return (token, ids)."""
    ids = fill(store, n, name)
    tok = token()
    assert [m.id for m in store.claim(name, ids, tok, lease)] == ids
    return tok, ids


def states(store, name=S):
    return {m.id: m.state for m in store.messages(name)}


# -- the contract's shape ---------------------------------------------------
def test_a_store_implements_the_whole_contract_and_declares_its_capabilities(store):
    assert isinstance(store, Store)
    assert not type(store).__abstractmethods__  # nothing of the contract left unimplemented
    assert isinstance(store.querysets, bool)
    assert store.transient_errors and all(issubclass(e, BaseException) for e in store.transient_errors)
    if not store.querysets:
        with pytest.raises(NotSupportedByStore):
            store.queryset(dict)
    assert isinstance(store.describe(), str) and store.describe()
    waiter = store.waiter(S)
    try:
        assert isinstance(waiter, Waiter)
        assert isinstance(waiter.supported, bool) and isinstance(waiter.sees_all_changes, bool)
    finally:
        waiter.close()


def test_a_store_missing_part_of_the_contract_cannot_be_made():
    class Partial(Store):
        def close(self):
            pass

    with pytest.raises(TypeError, match='abstract'):
        Partial('partial://')


# -- streams ----------------------------------------------------------------
def test_ensure_stream_creates_with_defaults(store):
    assert store.get_stream(S) is None
    assert store.list_streams() == []
    before = utcnow() - datetime.timedelta(seconds=1)
    info = store.ensure_stream(S)
    assert info.name == S
    assert info.interval == 1.0
    assert info.closed is False
    assert info.max_age is None
    assert info.status == {}
    assert before <= info.created <= utcnow() + datetime.timedelta(seconds=1)
    assert info.last_read is not None
    assert store.get_stream(S).created == info.created


def test_ensure_stream_is_idempotent_and_updates_interval(store):
    first = store.ensure_stream(S, interval=2.5)
    assert first.interval == 2.5
    again = store.ensure_stream(S, interval=None, closed=True, status={'x': 1})
    # defaults other than interval/max_age apply only on creation
    assert again.created == first.created
    assert again.interval == 2.5
    assert again.closed is False
    assert again.status == {}
    updated = store.ensure_stream(S, interval=7, max_age=60)
    assert (updated.interval, updated.max_age) == (7, 60)
    assert updated.created == first.created
    assert [s.name for s in store.list_streams()] == [S]


def test_ensure_stream_concurrent_creates_one_record(store):
    results, errors = [], []

    def create():
        try:
            results.append(store.ensure_stream(S))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 8
    assert len({r.created for r in results}) == 1
    assert [s.name for s in store.list_streams()] == [S]


def test_update_and_list_streams(store):
    store.ensure_stream('b')
    store.ensure_stream('a')
    assert store.update_stream('a', closed=True, status={'state': 'stopped'}) is None
    a = store.get_stream('a')
    assert a.closed is True
    assert a.status == {'state': 'stopped'}
    assert store.get_stream('b').closed is False
    assert [s.name for s in store.list_streams()] == ['a', 'b']


def test_set_status_changes_one_entry_only(store):
    store.ensure_stream(S)
    store.update_stream(S, status={'keep': 1})
    store.set_status(S, ('checkpoints', 'src-a'), {'position': 'p1'})
    store.set_status(S, ('checkpoints', 'src-b'), {'position': 'q1'})
    store.set_status(S, ('checkpoints', 'src-a'), {'position': 'p2'})
    assert store.get_stream(S).status == {'keep': 1, 'checkpoints': {'src-a': {'position': 'p2'},
                                                                       'src-b': {'position': 'q1'}}}
    store.set_status(S, ('checkpoints', 'src-a'), None)
    store.set_status(S, 'keep', None)
    assert store.get_stream(S).status == {'checkpoints': {'src-b': {'position': 'q1'}}}
    store.set_status('no-such-stream', 'x', 1)
    assert store.get_stream('no-such-stream') is None


def test_set_status_concurrent_writers_keep_both(store_url):
    from minibatch.store import get_store
    get_store(store_url).ensure_stream(S)

    def writer(key):
        own = get_store(store_url)
        for i in range(30):
            own.set_status(S, ('checkpoints', key), i)
    threads = [threading.Thread(target=writer, args=(k,)) for k in ('a', 'b', 'c')]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert get_store(store_url).get_stream(S).status == {'checkpoints': {'a': 29, 'b': 29, 'c': 29}}


@pytest.mark.parametrize('path', [('a.b',), ('$x',), ('',), (), ('a', 'say "hi"')])
def test_set_status_refuses_bad_keys(store, path):
    store.ensure_stream(S)
    with pytest.raises(ConfigurationError):
        store.set_status(S, path, 1)


def test_compare_and_set_last_read(store):
    info = store.ensure_stream(S)
    expected = info.last_read
    new = expected + datetime.timedelta(seconds=5)
    assert store.compare_and_set_last_read(S, expected, new) is True
    assert store.compare_and_set_last_read(S, expected, new + datetime.timedelta(seconds=5)) is False
    assert store.get_stream(S).last_read == new


def test_compare_and_set_last_read_race_has_one_winner(store):
    expected = store.ensure_stream(S).last_read
    results = []
    barrier = threading.Barrier(6)

    def race(i):
        barrier.wait()
        results.append(store.compare_and_set_last_read(S, expected, expected + datetime.timedelta(seconds=i + 1)))
    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    assert store.get_stream(S).last_read != expected


# -- producing --------------------------------------------------------------
def test_append_returns_increasing_ids(store):
    store.ensure_stream(S)
    assert store.append(S, []) == []
    first = store.append(S, [{'i': 0}, {'i': 1}, {'i': 2}])
    second = store.append(S, [{'i': 3}])
    assert len(first) == 3 and len(second) == 1
    assert first == sorted(first) and len(set(first)) == 3
    assert second[0] > first[-1]
    assert [m.data for m in store.messages(S)] == [{'i': i} for i in range(4)]
    assert store.counts(S)[AVAILABLE] == 4
    # ids are never reused, even after the messages are gone
    store.clear(S)
    assert store.append(S, [{'i': 4}])[0] > second[0]


def test_append_to_missing_stream_record_does_not_fail(store):
    ids = store.append('nostream', [{'a': 1}])
    assert [m.id for m in store.find_available('nostream')] == ids


@pytest.mark.parametrize('batch, hint', [
    ([{'a': 1}, 5], '5'),
    ([{'a': 1}, {'a': object()}], 'a'),
    ([{'a': 1}, {'nested': {'s': {1, 2}}}], 's'),
    (['text'], 'text'),
])
def test_append_rejects_bad_documents_and_writes_nothing(store, batch, hint):
    store.ensure_stream(S)
    store.append(S, [{'ok': True}])
    before = store.counts(S)
    with pytest.raises(InvalidMessage) as exc:
        store.append(S, batch)
    assert isinstance(exc.value, TypeError)
    assert hint in str(exc.value)
    assert store.counts(S) == before
    assert [m.data for m in store.messages(S)] == [{'ok': True}]


@pytest.mark.parametrize('method', ['append', 'append_dead'])
def test_append_refuses_a_single_dict(store, method):
    store.ensure_stream(S)
    args = (S, {'a': 1}) + (('bad',) if method == 'append_dead' else ())
    with pytest.raises(InvalidMessage, match='list of dicts'):
        getattr(store, method)(*args)
    assert store.messages(S) == []


def test_datetime_values_round_trip(store):
    # millisecond precision: what every store (BSON dates included) keeps exactly
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)
    doc = {'t': when, 'nested': {'ts': [when, 1, 'x']}, 'f': 1.5, 'n': None, 'b': True}
    store.ensure_stream(S)
    store.append(S, [doc])
    data = store.messages(S)[0].data
    assert data == doc
    assert isinstance(data['t'], datetime.datetime)
    assert isinstance(data['nested']['ts'][0], datetime.datetime)


# -- consuming --------------------------------------------------------------
def test_find_available_order_limit_until(store):
    early = fill(store, 3)
    time.sleep(0.05)
    cut = utcnow()
    time.sleep(0.05)
    late = store.append(S, [{'i': 10}, {'i': 11}])
    found = store.find_available(S)
    assert [m.id for m in found] == early + late
    assert all(m.state == AVAILABLE and m.processed is False and m.attempts == 0 for m in found)
    assert [m.id for m in store.find_available(S, limit=2)] == early[:2]
    assert [m.id for m in store.find_available(S, until=cut)] == early
    assert store.find_available('other') == []
    # read-only: nothing changed
    assert store.counts(S)[AVAILABLE] == 5


def test_claim_takes_only_available_messages(store):
    ids = fill(store, 5)
    tok = token()
    got = store.claim(S, ids[:3], tok, 30)
    assert [m.id for m in got] == ids[:3]
    assert all(m.state == CLAIMED and m.processed is True and m.token == tok for m in got)
    assert [m.data for m in got] == [{'i': 0}, {'i': 1}, {'i': 2}]
    # second claim of the same ids gets nothing; a mixed list gets only the free ones
    assert store.claim(S, ids[:3], token(), 30) == []
    assert [m.id for m in store.claim(S, ids[2:], token(), 30)] == ids[3:]
    assert store.find_available(S) == []
    assert store.counts(S)[CLAIMED] == 5
    assert store.claim(S, [], token(), 30) == []


def test_commit_removes_messages(store):
    tok, ids = claimed(store, 3)
    other = store.append(S, [{'i': 99}])
    assert store.commit(S, tok, ids) == 3
    assert [m.id for m in store.messages(S)] == other
    assert store.counts(S)[DONE] == 0


def test_commit_marks_its_window_processed(store):
    tok, ids = claimed(store, 2)
    window = store.save_window(S, [{'i': 0}, {'i': 1}])
    other = store.save_window(S, [{'i': 9}])
    assert store.commit(S, tok, ids, window_id=window) == 2
    assert store.messages(S) == []
    assert [(w.id, w.processed) for w in store.windows(S)] == [(window, True), (other, False)]


def test_commit_window_commits_and_records_a_processed_window_without_copying_the_data(store):
    tok, ids = claimed(store, 3)
    other = store.append(S, [{'i': 99}])
    committed, window = store.commit_window(S, tok, ids)
    assert committed == 3
    assert [m.id for m in store.messages(S)] == other
    assert [(w.id, w.data, w.processed) for w in store.windows(S)] == [(window, [], True)]
    assert store.counts(S)['windows'] == 1


def test_commit_window_keep_records_the_data_given(store):
    tok, ids = claimed(store, 2)
    committed, window = store.commit_window(S, tok, ids, keep=True, data=[{'i': 0}, {'i': 1}])
    assert committed == 2 and set(states(store).values()) == {DONE}
    assert [(w.id, w.data, w.processed) for w in store.windows(S)] == [(window, [{'i': 0}, {'i': 1}], True)]


def test_commit_window_of_a_lost_claim_commits_nothing_but_still_records_the_window(store):
    tok, ids = claimed(store, 2)
    rival = token()
    assert store.commit_window(S, rival, ids)[0] == 0  # not held under this token
    assert set(states(store).values()) == {CLAIMED}
    assert [w.processed for w in store.windows(S)] == [True]
    assert store.commit_window(S, tok, [])[0] == 0  # nothing to commit: the record only
    assert len(store.windows(S, processed=True)) == 2


def test_commit_soon_commits_by_the_flush_at_the_latest_and_reports_once(store):
    tok, ids = claimed(store, 3)
    other = store.append(S, [{'i': 99}])
    reports = []
    store.commit_soon(S, tok, ids, lambda n, window_id: reports.append((n, window_id)), record=True)
    store.flush()
    store.flush()  # nothing left: no second report
    assert len(reports) == 1 and reports[0][0] == 3
    assert list(states(store)) == other
    assert [(w.id, w.processed, w.data) for w in store.windows(S)] == [(reports[0][1], True, [])]


def test_commit_soon_with_bad_output_raises_at_once_and_commits_nothing(store):
    store.ensure_stream('out')
    tok, ids = claimed(store, 2)
    with pytest.raises(InvalidMessage):
        store.commit_soon(S, tok, ids, lambda n, window_id: None, output=('out', [{'bad': object()}]))
    store.flush()
    assert set(states(store).values()) == {CLAIMED} and store.find_available('out') == []


def test_commit_keep_marks_done(store):
    tok, ids = claimed(store, 3)
    assert store.commit(S, tok, ids, keep=True) == 3
    done = store.messages(S, state=DONE)
    assert [m.id for m in done] == ids
    assert all(m.processed for m in done)
    assert store.find_available(S) == []
    assert store.counts(S)[DONE] == 3


def test_commit_with_wrong_token_or_ids_commits_nothing(store):
    tok, ids = claimed(store, 3)
    assert store.commit(S, token(), ids) == 0
    assert set(states(store).values()) == {CLAIMED}
    # only the listed ids are committed
    assert store.commit(S, tok, ids[:1]) == 1
    assert list(states(store)) == ids[1:]
    # a second commit of the same window does nothing more
    assert store.commit(S, tok, ids[:1]) == 0


def test_release_with_backoff_then_available(store):
    tok, ids = claimed(store, 2)
    assert store.release(S, tok, ids, error='boom', max_attempts=3, backoff=0.5) == (2, 0)
    msgs = store.messages(S)
    assert [(m.state, m.attempts, m.error, m.processed) for m in msgs] == [(RETRY, 1, 'boom', True)] * 2
    assert store.find_available(S) == []
    assert store.expire_leases(S) == 0  # backoff not over yet
    wait_for(lambda: store.expire_leases(S))
    msgs = store.find_available(S)
    assert [m.id for m in msgs] == ids
    assert [(m.state, m.attempts) for m in msgs] == [(AVAILABLE, 1)] * 2  # backoff adds no attempt


def test_release_without_backoff_is_available_at_once(store):
    tok, ids = claimed(store, 2)
    assert store.release(S, tok, ids, error='oops', max_attempts=3, backoff=0) == (2, 0)
    msgs = store.find_available(S)
    assert [(m.id, m.attempts, m.error) for m in msgs] == [(i, 1, 'oops') for i in ids]
    # wrong token releases nothing
    tok2 = token()
    store.claim(S, ids, tok2, 30)
    assert store.release(S, token(), ids, error='x') == (0, 0)
    assert set(states(store).values()) == {CLAIMED}


def test_release_dead_letters_after_max_attempts(store):
    ids = fill(store, 2)
    results = []
    for attempt in range(3):
        tok = token()
        assert len(store.claim(S, ids, tok, 30)) == 2
        results.append(store.release(S, tok, ids, error=f'fail {attempt}', max_attempts=3, backoff=0))
    assert results == [(2, 0), (2, 0), (0, 2)]
    dead = store.dead_letters(S)
    assert [(m.id, m.state, m.attempts, m.error, m.processed) for m in dead] == \
        [(i, DEAD, 3, 'fail 2', True) for i in ids]
    assert store.find_available(S) == []
    assert store.expire_leases(S) == 0  # dead stays dead
    assert store.counts(S)[DEAD] == 2


def test_unclaim_counts_no_attempt(store):
    tok, ids = claimed(store, 3)
    assert store.unclaim(S, token(), ids) == 0
    assert store.unclaim(S, tok, ids[:2]) == 2
    msgs = store.find_available(S)
    assert [(m.id, m.attempts) for m in msgs] == [(ids[0], 0), (ids[1], 0)]
    assert states(store)[ids[2]] == CLAIMED


def test_expired_lease_counts_attempt(store):
    tok, ids = claimed(store, 2, lease=0.3)
    assert store.expire_leases(S) == 0
    assert wait_for(lambda: store.expire_leases(S)) == 2
    msgs = store.find_available(S)
    assert [(m.id, m.attempts) for m in msgs] == [(i, 1) for i in ids]
    # the old claim holder can no longer commit
    assert store.commit(S, tok, ids) == 0
    assert store.renew(S, tok, 30) == 0


def test_expired_lease_dead_letters_at_max_attempts(store):
    tok, ids = claimed(store, 1, lease=0.1)
    assert wait_for(lambda: store.expire_leases(S, max_attempts=1)) == 1
    dead = store.dead_letters(S)
    assert [(m.id, m.attempts, m.processed) for m in dead] == [(ids[0], 1, True)]


def test_renew_extends_lease(store):
    ids = fill(store, 4)
    kept, lost = token(), token()
    store.claim(S, ids[:2], kept, 0.3)
    store.claim(S, ids[2:], lost, 0.3)
    assert store.renew(S, kept, 30) == 2
    assert wait_for(lambda: store.expire_leases(S)) == 2
    st = states(store)
    assert [st[i] for i in ids] == [CLAIMED, CLAIMED, AVAILABLE, AVAILABLE]
    assert store.renew(S, kept, 30) == 2
    assert store.renew(S, lost, 30) == 0
    assert store.commit(S, kept, ids[:2]) == 2


# -- dead letters -----------------------------------------------------------
def make_dead(store, n):
    ids = fill(store, n)
    tok = token()
    store.claim(S, ids, tok, 30)
    assert store.release(S, tok, ids, error='bad', max_attempts=1) == (0, n)
    return ids


def test_dead_letters_requeue(store):
    assert store.requeue(S) == 0
    ids = make_dead(store, 3)
    assert [m.id for m in store.dead_letters(S, limit=2)] == ids[:2]
    assert store.requeue(S, ids=[ids[0]]) == 1
    back = store.find_available(S)
    assert [(m.id, m.attempts, m.error, m.processed) for m in back] == [(ids[0], 0, None, False)]
    assert store.requeue(S) == 2
    assert [m.id for m in store.find_available(S)] == ids
    assert store.dead_letters(S) == []


def test_requeue_touches_only_dead_messages(store):
    ids = make_dead(store, 1)
    tok, live = token(), store.append(S, [{'x': 1}])
    store.claim(S, live, tok, 30)
    assert store.requeue(S, ids=ids + live) == 1
    assert states(store) == {ids[0]: AVAILABLE, live[0]: CLAIMED}


def test_append_dead_goes_straight_to_dead_letters(store):
    live = store.append(S, [{'ok': 1}])
    ids = store.append_dead(S, [{'payload': 'not json {'}, {'payload': 'x'}], 'not JSON: Expecting value')
    assert len(ids) == 2 and ids[0] != live[0]
    dead = store.dead_letters(S)
    assert [(m.id, m.data, m.error) for m in dead] == [
        (ids[0], {'payload': 'not json {'}, 'not JSON: Expecting value'),
        (ids[1], {'payload': 'x'}, 'not JSON: Expecting value')]
    assert [m.id for m in store.find_available(S)] == live  # never offered to a consumer
    assert store.append_dead(S, [], 'none') == []
    assert store.requeue(S, ids=[ids[0]]) == 1
    assert [m.data for m in store.find_available(S)] == [{'ok': 1}, {'payload': 'not json {'}]


def test_append_dead_bad_document_writes_nothing(store):
    with pytest.raises(InvalidMessage):
        store.append_dead(S, [{'ok': 1}, 'not a dict'], 'error')
    assert store.dead_letters(S) == []


def test_purge_dead(store):
    ids = make_dead(store, 3)
    other = store.append(S, [{'keep': 1}])
    assert store.purge_dead(S, ids=[ids[1]]) == 1
    assert [m.id for m in store.dead_letters(S)] == [ids[0], ids[2]]
    assert store.purge_dead(S) == 2
    assert store.purge_dead(S) == 0
    assert [m.id for m in store.messages(S)] == other


# -- windows ----------------------------------------------------------------
def mark_processed(store, window_id, name=S):
    """Mark a window record processed the way consumers do: with the commit of its (here no) messages."""
    assert store.commit(name, token(), [], window_id=window_id) == 0


def test_windows_save_list_and_commit_marks_processed(store):
    store.ensure_stream(S)
    w1 = store.save_window(S, [{'a': 1}, {'a': 2}], query=[1, 2])
    w2 = store.save_window(S, [{'a': 3}])
    store.save_window('other', [{'z': 0}])
    wins = store.windows(S)
    assert [w.id for w in wins] == [w1, w2]
    assert [(w.stream, w.data, w.processed) for w in wins] == [(S, [{'a': 1}, {'a': 2}], False), (S, [{'a': 3}], False)]
    assert wins[0].query == [1, 2]
    assert isinstance(wins[0].created, datetime.datetime)
    assert store.windows(S, processed=True) == []
    mark_processed(store, w1)
    assert [w.id for w in store.windows(S, processed=True)] == [w1]
    assert [w.id for w in store.windows(S, processed=False)] == [w2]
    assert store.counts(S)['windows'] == 2
    store.clear(S)
    mark_processed(store, w1)  # a missing record is ignored
    assert store.windows(S) == []


# -- inspection and housekeeping --------------------------------------------
def test_counts_every_state(store):
    assert store.counts('unknown') == dict.fromkeys(STATES + ('windows', 'expired'), 0)
    ids = fill(store, 6)
    t1, t2, t3 = token(), token(), token()
    store.claim(S, ids[0:2], t1, 30)
    store.commit(S, t1, ids[0:1], keep=True)
    store.claim(S, ids[2:3], t2, 30)
    store.release(S, t2, ids[2:3], max_attempts=1)
    store.claim(S, ids[3:4], t3, 30)
    store.release(S, t3, ids[3:4], backoff=60)
    store.save_window(S, [{'i': 0}])
    assert store.counts(S) == {AVAILABLE: 2, CLAIMED: 1, RETRY: 1, DONE: 1, DEAD: 1, 'windows': 1, 'expired': 0}


def test_housekeep_removes_old_messages_processed_or_not_and_counts_the_unprocessed(store):
    ids = fill(store, 6)
    t1, t2, t3 = token(), token(), token()
    store.claim(S, ids[0:2], t1, 60)
    store.commit(S, t1, ids[0:1], keep=True)  # ids[0] done, ids[1] claimed
    store.claim(S, ids[2:3], t2, 60)
    store.release(S, t2, ids[2:3], max_attempts=1)  # dead
    store.claim(S, ids[3:4], t3, 60)
    store.release(S, t3, ids[3:4], backoff=60)  # retry; ids[4:] available
    old_done_window = store.save_window(S, [{'i': 0}])
    mark_processed(store, old_done_window)
    open_window = store.save_window(S, [{'i': 1}])
    fill(store, 2, name='other')  # another stream's old messages are not this stream's business
    time.sleep(0.4)
    fresh = store.append(S, [{'new': 1}, {'new': 2}])
    t4 = token()
    store.claim(S, fresh[:1], t4, 60)
    store.commit(S, t4, fresh[:1], keep=True)
    fresh_window = store.save_window(S, [{'i': 2}])
    mark_processed(store, fresh_window)
    # old: ids[0] done, ids[3] retry, ids[4], ids[5] available (3 unprocessed), one processed window
    assert store.housekeep(S, max_age=0.3) == (5, 3)
    assert sorted(states(store).items()) == sorted({
        ids[1]: CLAIMED, ids[2]: DEAD, fresh[0]: DONE, fresh[1]: AVAILABLE}.items())
    assert [w.id for w in store.windows(S)] == [open_window, fresh_window]
    assert store.counts(S)['expired'] == 3
    assert store.counts('other')[AVAILABLE] == 2 and store.counts('other')['expired'] == 0
    assert store.housekeep(S, max_age=0.3) == (0, 0)
    # the claimed one, given back, is expired by the next round; the total grows
    store.unclaim(S, t1, ids[1:2])
    assert store.housekeep(S, max_age=0.3) == (1, 1)
    assert store.counts(S)['expired'] == 4


def test_deleting_a_stream_resets_its_expired_total(store):
    fill(store, 2)
    time.sleep(0.05)
    assert store.housekeep(S, max_age=0.01) == (2, 2)
    store.delete_stream(S)
    store.ensure_stream(S)
    assert store.counts(S)['expired'] == 0


def test_clear_keeps_stream_record(store):
    fill(store, 4)
    store.save_window(S, [{'i': 0}])
    fill(store, 2, name='other')
    assert store.clear(S) == 4
    assert store.clear(S) == 0
    assert store.messages(S) == [] and store.windows(S) == []
    assert store.get_stream(S) is not None
    assert store.counts('other')[AVAILABLE] == 2


def test_delete_stream(store):
    make_dead(store, 1)
    fill(store, 2)
    store.save_window(S, [{'i': 0}])
    fill(store, 1, name='other')
    assert store.delete_stream(S) is None
    assert store.get_stream(S) is None
    assert store.counts(S) == dict.fromkeys(STATES + ('windows', 'expired'), 0)
    assert [s.name for s in store.list_streams()] == ['other']
    assert store.counts('other')[AVAILABLE] == 1
    store.delete_stream('missing')  # not an error


# -- concurrency ------------------------------------------------------------
N_RACE = 2000


def claim_all(store, name, sink):
    """Consumer loop: find + claim windows until the stream has nothing available."""
    while True:
        found = store.find_available(name, limit=50)
        if not found:
            return
        got = store.claim(name, [m.id for m in found], token(), 60)
        sink.extend(m.id for m in got)


def race_fill(store):
    store.ensure_stream(S)
    ids = []
    for start in range(0, N_RACE, 500):
        ids += store.append(S, [{'i': i} for i in range(start, start + 500)])
    return ids


def test_concurrent_threads_claim_each_message_once(store):
    ids = race_fill(store)
    results = [[] for _ in range(4)]
    threads = [threading.Thread(target=claim_all, args=(store, S, r)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seen = collections.Counter(i for r in results for i in r)
    assert sorted(seen) == sorted(ids)
    assert set(seen.values()) == {1}
    assert store.counts(S)[CLAIMED] == N_RACE


def _claim_in_child(store, queue):
    got = []
    try:
        claim_all(store, S, got)
        queue.put(got)
    except BaseException as exc:
        queue.put(repr(exc))


def test_concurrent_processes_claim_each_message_once(store, store_url):
    if not store_url.startswith('sqlite'):
        pytest.skip('fork-sharing a store object is tested for the embedded store')
    ids = race_fill(store)  # the parent holds an open connection when it forks
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_child, args=(store, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert all(isinstance(r, list) for r in results), results
    seen = collections.Counter(i for r in results for i in r)
    assert sorted(seen) == sorted(ids)
    assert set(seen.values()) == {1}
    # the parent's own connection still works after the children used theirs
    assert store.counts(S)[CLAIMED] == N_RACE


# -- wake-ups ---------------------------------------------------------------
def test_waiter_wakes_on_append(store):
    store.ensure_stream(S)
    waiter = store.waiter(S)
    try:
        timer = threading.Timer(0.2, store.append, args=(S, [{'wake': 1}]))
        started = time.monotonic()
        timer.start()
        woke = waiter.wait(5)
        elapsed = time.monotonic() - started
        timer.join()
        assert woke is True
        assert elapsed < 1.5
        # what woke it is visible
        assert wait_for(lambda: store.find_available(S), timeout=1)
    finally:
        waiter.close()


def test_waiter_times_out_when_idle(store):
    store.ensure_stream(S)
    store.append(S, [{'before': 1}])  # a write before the waiter exists is not news to it
    waiter = store.waiter(S)
    try:
        # the contract allows a spurious True, but a waiter that wakes at once every time
        # makes an idle consumer spin: with no writes, it waits out its timeout
        for _ in range(3):
            started = time.monotonic()
            result = waiter.wait(0.2)
            elapsed = time.monotonic() - started
            assert result is False, f'woke after {elapsed:.3f}s with no writes'
            assert elapsed >= 0.15, f'timed out after {elapsed:.3f}s, before its 0.2 s'
        # a write wakes it once; then, with no further writes, it waits again
        store.append(S, [{'wake': 1}])
        assert waiter.wait(5) is True
        started = time.monotonic()
        assert waiter.wait(0.2) is False, 'still awake after the write it reported'
        assert time.monotonic() - started >= 0.15
    finally:
        waiter.close()


# -- consumer reports -------------------------------------------------------
def test_heartbeat_upserts_one_record_per_consumer(store):
    assert store.consumers(S) == []
    store.heartbeat(S, 'b', {'processed': 1, 'state': 'running'})
    store.heartbeat(S, 'a', {'processed': 5})
    store.heartbeat(S, 'b', {'processed': 7, 'state': 'stopped'})
    store.heartbeat('other', 'c', {'processed': 100})
    records = store.consumers(S)
    assert [(r['id'], r['processed'], r.get('state')) for r in records] == [('a', 5, None), ('b', 7, 'stopped')]
    assert all(abs((utcnow() - r['seen']).total_seconds()) < 5 for r in records)


def test_forget_consumers_removes_only_old_records(store):
    store.heartbeat(S, 'old', {'processed': 1})
    time.sleep(0.05)  # the records' seen stamps must differ
    assert store.forget_consumers(S, older_than=3600) == 0
    assert store.forget_consumers(S, older_than=0.01) == 1
    assert store.consumers(S) == []


def test_heartbeat_rejects_unstorable_info(store):
    with pytest.raises(InvalidMessage):
        store.heartbeat(S, 'a', {'bad': object()})
    assert store.consumers(S) == []


def test_a_new_embedded_store_is_private_to_its_owner(tmp_path):
    import os
    import stat
    from minibatch.store.sqlite import SQLiteStore
    old = os.umask(0o022)  # the usual default, which would make files world-readable
    try:
        path = tmp_path / 'fresh' / 'store.db'
        store = SQLiteStore(f'sqlite:///{path}')
        store.append('s', [{'secret': 1}])
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert modes['store.db'] == 0o600 and modes.get('store.db-wal', 0o600) == 0o600, modes
        store.close()
    finally:
        os.umask(old)


# -- issue 12: messages at the edges (nesting, tag-like keys, undecodable data) --------------
def nested(levels, leaf=1):
    """A message of ``levels`` nested containers (the message itself is level 1), dicts and lists mixed."""
    value = leaf
    for level in range(levels - 1):
        value = {'d': value} if level % 2 else [value]
    return {'top': value}


def test_nesting_up_to_the_limit_round_trips_deeper_is_refused_and_writes_nothing(store):
    from minibatch.store.records import MAX_NESTING
    store.ensure_stream(S)
    store.append(S, [nested(MAX_NESTING)])
    assert store.find_available(S)[0].data == nested(MAX_NESTING)
    for levels in (MAX_NESTING + 1, 990):
        for call in (store.validate, lambda docs: store.append(S, docs)):
            with pytest.raises(InvalidMessage) as excinfo:
                call([{'ok': 1}, nested(levels)])
            assert str(MAX_NESTING) in str(excinfo.value) and 'nested' in str(excinfo.value)
    assert len(store.messages(S)) == 1


def test_circular_message_is_invalid(store):
    store.ensure_stream(S)
    doc = {'a': 1}
    doc['self'] = doc
    listed = {'l': []}
    listed['l'].append(listed['l'])
    for bad in (doc, listed):
        with pytest.raises(InvalidMessage) as excinfo:
            store.append(S, [bad])
        assert 'circular' in str(excinfo.value)
    assert store.messages(S) == []


TAG_LIKE = [
    {'x': {'$date': '2024-01-02'}},
    {'x': {'$date': '2024-01-02T03:04:05'}},
    {'x': {'$date': 'not a date'}},
    {'x': {'$$date': 'a', '$$$z': [{'$$': 1}]}},
    {'x': [{'$date': '2024-01-02', 'other': 1}], 'when': datetime.datetime(2024, 1, 2, 3, 4, 5, 6000)},
]


def test_user_dicts_that_look_like_encoding_tags_read_back_unchanged(store):
    store.ensure_stream(S)
    store.append(S, TAG_LIKE)
    assert [m.data for m in store.find_available(S)] == TAG_LIKE
    assert [m.data for m in store.messages(S)] == TAG_LIKE
    assert [m.data for m in store.find_available(S, limit=1)] == TAG_LIKE[:1]
    window_id = store.save_window(S, TAG_LIKE)
    assert [w.data for w in store.windows(S) if w.id == window_id] == [TAG_LIKE]


def test_a_stored_message_that_cannot_be_decoded_is_dead_lettered_and_the_rest_flow(store_url):
    """Defence in depth for data the store did not write itself (the append checks keep it out)."""
    if not store_url.startswith('sqlite'):
        pytest.skip('MongoDB has its own tests of unreadable records: tests/test_mongodb_edges.py')
    import sqlite3
    from minibatch.store import get_store
    store = get_store(store_url)
    store.ensure_stream(S)
    store.append(S, [{'i': 0}])
    conn = sqlite3.connect(store_url[len('sqlite:///'):])
    with conn:
        for _ in range(2):
            conn.execute('INSERT INTO buffer (stream, created, data) VALUES (?, ?, ?)',
                         (S, time.time(), '[' * 100000 + ']' * 100000))
    conn.close()
    store.append(S, [{'i': 2}, {'i': 3}])
    bad_ids = [m.id for m in store.messages(S) if not m.data]
    assert len(bad_ids) == 2  # inspection does not fail on them
    available = store.find_available(S)
    assert [m.data for m in available] == [{'i': 0}, {'i': 2}, {'i': 3}]
    dead = store.dead_letters(S)
    assert [m.id for m in dead] == bad_ids[:2]
    assert all('cannot be decoded' in m.error and 'RecursionError' in m.error for m in dead)
    # the other way in: claiming by id
    store.requeue(S)
    claimed = store.claim(S, bad_ids + [available[0].id], token(), 30)
    assert [m.data for m in claimed] == [{'i': 0}]
    assert [m.id for m in store.dead_letters(S)] == bad_ids
    assert store.counts(S)[DEAD] == 2

"""A named group reads the stream in place on SQLite: copies only of what fails (minibatch.store.sqlite_group_reads).

The contract of groups (tests/test_store_groups.py, tests/test_groups.py) holds
whatever the store does; these tests pin what reading in place adds: no copy on
the happy path, copies for everything a claim passes or gives up, retention
and lag that count what a claim holds in place.
"""
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minibatch as mb
from minibatch.store.base import DEAD, group_stream
from minibatch.store.sqlite import SQLiteStore
from tests.helpers import wait_until

S = 'orders'
BILLING = group_stream(S, 'billing')


@pytest.fixture
def store(tmp_path):
    store = SQLiteStore('sqlite:///' + str(tmp_path / 'groups.db'))
    yield store
    store.close()


def _token():
    return uuid.uuid4().hex


def _position(store, group='billing'):
    return store.groups(S)[group]['position'] or 0


def _filled(store, n=10):
    store.register_group(S, 'billing')
    return store.append(S, [{'i': i} for i in range(n)])


def test_a_group_reads_the_streams_messages_and_a_commit_writes_no_copy(store):
    ids = _filled(store)
    found = store.find_available(BILLING, limit=4)
    assert [m.id for m in found] == ids[:4] and {m.stream for m in found} == {BILLING}
    assert [m.data for m in found] == [{'i': i} for i in range(4)]
    claim = _token()
    held = store.claim(BILLING, found, claim, 30)
    assert [m.id for m in held] == ids[:4]
    assert _position(store) == ids[3]
    assert [m.id for m in store.find_available(BILLING)] == ids[4:], 'the rest, not what is held'
    assert store.group_lag(S, 'billing')[0] == 10, 'held in place still counts as not committed'
    assert store.counts(BILLING)['claimed'] == 4, 'in flight in the group'
    assert store.retain(S) == 0, 'nothing committed yet'
    assert store.commit(BILLING, claim, [m.id for m in held], keep=True) == 4
    assert store.messages(BILLING) == [], 'no copy was made'
    assert store.counts(BILLING)['claimed'] == 0
    assert store.group_lag(S, 'billing')[0] == 6
    assert store.retain(S) == 4
    assert [m.data['i'] for m in store.messages(S)] == list(range(4, 10))


def test_a_claim_passing_messages_it_does_not_take_copies_them(store):
    ids = _filled(store)
    found = store.find_available(BILLING, limit=10)
    claim = _token()
    held = store.claim(BILLING, found[6:8], claim, 30)  # a window of a read-ahead, say
    assert [m.id for m in held] == ids[6:8]
    assert _position(store) == ids[7]
    copies = store.messages(BILLING)
    assert [m.data['i'] for m in copies] == list(range(6)) and {m.attempts for m in copies} == {0}
    rest = store.find_available(BILLING)
    assert sorted(m.data['i'] for m in rest) == [0, 1, 2, 3, 4, 5, 8, 9], 'passed ones as copies, the rest in place'
    assert store.claim(BILLING, found[:6], _token(), 30) == [], 'those ids are not to be taken in place any more'


def test_a_failed_claim_leaves_copies_that_count_the_attempt(store):
    ids = _filled(store, 3)
    claim = _token()
    held = store.claim(BILLING, store.find_available(BILLING), claim, 30)
    assert store.release(BILLING, claim, [m.id for m in held], error='boom', max_attempts=2) == (3, 0)
    copies = store.messages(BILLING)
    assert [(m.data['i'], m.attempts, m.error) for m in copies] == [(i, 1, 'boom') for i in range(3)]
    assert {m.id for m in copies}.isdisjoint(ids), 'copies have ids of their own'
    assert store.retain(S) == 0, 'the copies are not done'
    again = _token()
    retried = store.claim(BILLING, store.find_available(BILLING), again, 30)
    assert store.release(BILLING, again, [m.id for m in retried], error='boom', max_attempts=2) == (0, 3)
    assert {m.state for m in store.messages(BILLING)} == {DEAD}
    assert store.retain(S) == 3, 'dead copies do not hold retention'


def test_a_lapsed_claim_held_in_place_comes_back_as_copies(store):
    _filled(store, 3)
    store.claim(BILLING, store.find_available(BILLING), _token(), 0.05)
    time.sleep(0.1)
    assert store.expire_leases(BILLING) == 3
    assert [(m.data['i'], m.attempts) for m in store.find_available(BILLING)] == [(0, 1), (1, 1), (2, 1)]


def test_messages_given_back_untouched_are_read_again_as_copies(store):
    _filled(store, 3)
    claim = _token()
    held = store.claim(BILLING, store.find_available(BILLING), claim, 30)
    assert store.unclaim(BILLING, claim, [m.id for m in held]) == 3
    assert [(m.data['i'], m.attempts) for m in store.find_available(BILLING)] == [(0, 0), (1, 0), (2, 0)]


def test_retention_never_removes_what_a_claim_holds_in_place(store):
    _filled(store, 4)
    store.register_group(S, 'analytics')
    for group in ('billing', 'analytics'):
        copies = group_stream(S, group)
        claim = _token()
        held = store.claim(copies, store.find_available(copies, limit=2), claim, 30)
        if group == 'analytics':
            store.commit(copies, claim, [m.id for m in held], keep=True)
    assert store.retain(S) == 0, 'billing holds 0 and 1, and neither group took 2 and 3'
    assert len(store.messages(S)) == 4


def test_a_replay_reads_in_place_again_from_the_point_asked(store):
    ids = _filled(store, 5)
    claim = _token()
    held = store.claim(BILLING, store.find_available(BILLING), claim, 30)
    store.commit(BILLING, claim, [m.id for m in held], keep=True)
    assert store.find_available(BILLING) == []
    store.replay(S, 'billing', since=ids[3])
    assert [m.data['i'] for m in store.find_available(BILLING)] == [3, 4]


def test_a_commit_with_output_of_a_window_held_in_place_appends_it(store):
    _filled(store, 2)
    claim = _token()
    held = store.claim(BILLING, store.find_available(BILLING), claim, 30)
    assert store.commit(BILLING, claim, [m.id for m in held], keep=True, output=('totals', [{'sum': 1}])) == 2
    assert [m.data for m in store.messages('totals')] == [{'sum': 1}]


def test_a_deleted_group_leaves_no_claim_behind(store):
    _filled(store, 2)
    store.claim(BILLING, store.find_available(BILLING), _token(), 30)
    assert store.delete_group(S, 'billing')
    assert store.db.read('SELECT count(*) FROM claims WHERE stream = ?', (BILLING,))[0][0] == 0


def test_event_time_consumers_of_a_group_still_pull_copies(tmp_path):
    from minibatch.eventtime import tumbling
    url = 'sqlite:///' + str(tmp_path / 'et.db')
    em = mb.streaming(S, url=url, window=tumbling(60), key='k', group='billing', executor='inline').make(
        lambda window: None)
    plain = mb.streaming(S, url=url, size=2, group='billing', executor='inline').make(lambda window: None)
    assert not em.membership.in_place and plain.membership.in_place


def test_a_named_group_consumer_processes_everything_without_copies(tmp_path):
    url = 'sqlite:///' + str(tmp_path / 'consumer.db')
    stream = mb.stream(S, url=url)
    stream.store.register_group(S, 'billing')
    stream.append([{'i': i} for i in range(240)])
    seen = []
    em = mb.streaming(S, url=url, size=20, group='billing', executor='inline').make(
        lambda window: seen.extend(m['i'] for m in window.data))
    thread = threading.Thread(target=em.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(seen) >= 240, timeout=30, message='240 messages in group billing')
    finally:
        em.stop()
        thread.join(10)
    assert sorted(seen) == list(range(240)), 'each once'
    assert stream.store.db.read('SELECT count(*) FROM buffer WHERE stream = ?', (BILLING,))[0][0] == 0, \
        'no message was copied'


# -- a model: consumers racing with read-aheads, failures and give-backs; each message committed once --
OPS = st.lists(st.one_of(
    st.tuples(st.just('append'), st.integers(1, 6)),
    st.tuples(st.just('read'), st.integers(0, 1), st.integers(1, 8)),
    st.tuples(st.just('claim'), st.integers(0, 1), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just('settle'), st.integers(0, 1), st.sampled_from(['commit', 'fail', 'give back'])),
    st.tuples(st.just('retain'),),
), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_model_racing_consumers_commit_every_message_once(store, ops):
    name = f'model-{uuid.uuid4().hex[:8]}'
    copies = group_stream(name, 'g')
    store.register_group(name, 'g')
    appended, committed, counter = [], [], 0
    read_ahead = {0: [], 1: []}
    held: dict[int, list] = {0: [], 1: []}  # consumer -> [(token, messages)]

    def settle(consumer, how):
        if not held[consumer]:
            return
        token, messages = held[consumer].pop(0)
        ids = [m.id for m in messages]
        if how == 'commit':
            assert store.commit(copies, token, ids, keep=True) == len(ids)
            committed.extend(m.data['n'] for m in messages)
        elif how == 'fail':
            store.release(copies, token, ids, error='x', max_attempts=1000)
        else:
            store.unclaim(copies, token, ids)

    for op in ops:
        if op[0] == 'append':
            docs = [{'n': counter + i} for i in range(op[1])]
            counter += op[1]
            store.append(name, docs)
            appended.extend(d['n'] for d in docs)
        elif op[0] == 'read':
            read_ahead[op[1]] = store.find_available(copies, limit=op[2])
        elif op[0] == 'claim':
            window = read_ahead[op[1]][op[2]:op[2] + op[3]]
            token = _token()
            got = store.claim(copies, window, token, 30)
            if got:
                held[op[1]].append((token, got))
        elif op[0] == 'settle':
            settle(op[1], op[2])
        else:
            store.retain(name)
        # nothing is lost: what no group committed is still in the stream or in the group's copies
        kept = {m.data['n'] for m in store.messages(name)} | {m.data['n'] for m in store.messages(copies)}
        assert set(appended) - set(committed) <= kept
    for consumer in (0, 1):
        while held[consumer]:
            settle(consumer, 'commit')
    while True:  # drain
        found = store.find_available(copies, limit=50)
        if not found:
            break
        token = _token()
        got = store.claim(copies, found, token, 30)
        store.commit(copies, token, [m.id for m in got], keep=True)
        committed.extend(m.data['n'] for m in got)
    assert sorted(committed) == appended, 'each message committed once'
    store.retain(name)
    assert store.messages(name) == []

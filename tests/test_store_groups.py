"""The groups part of the storage contract (minibatch/store/base_groups.py), checked against every store.

Only the contract API is used: the same promises on SQLite and on MongoDB (wire test server).
"""
import datetime
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibatch.errors import ConfigurationError, InvalidMessage
from minibatch.store.base import AVAILABLE, DEAD, DONE, group_stream, utcnow

S = 'orders'
BILLING, ANALYTICS = group_stream(S, 'billing'), group_stream(S, 'analytics')


def token():
    return uuid.uuid4().hex


def consume_all(store, name, keep=True):
    """Claim and commit every available message of ``name``; return their data."""
    messages = store.find_available(name)
    claim = token()
    held = store.claim(name, messages, claim, 30)
    store.commit(name, claim, [m.id for m in held], keep=keep)
    return [m.data for m in held]


def test_register_group_creates_once_and_records_keep(store):
    assert store.groups(S) == {}
    assert store.register_group(S, 'billing') is True
    assert store.register_group(S, 'billing', start='latest') is False, 'an existing group is left as it is'
    entry = store.groups(S)['billing']
    assert entry['start'] == 'earliest' and entry['keep'] is False and entry['position'] is None
    assert isinstance(entry['created'], datetime.datetime)
    store.register_group(S, 'billing', keep=True)
    assert store.groups(S)['billing']['keep'] is True
    assert store.get_stream(S) is not None, 'registering creates the stream record'


def test_concurrent_registrations_create_one_entry(store):
    created = []
    threads = [threading.Thread(target=lambda: created.append(store.register_group(S, 'billing')))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created) == [False] * 5 + [True]


@pytest.mark.parametrize('group, start', [('a.b', 'earliest'), ('', 'earliest'), ('x[1]', 'earliest'),
                                          ('$x', 'earliest'), ('ok', 'middle')])
def test_bad_group_names_and_starts_are_refused(store, group, start):
    with pytest.raises(ConfigurationError):
        store.register_group(S, group, start=start)
    assert store.groups(S) == {}


def test_every_group_gets_every_message_once(store):
    store.append(S, [{'i': i} for i in range(5)])
    store.register_group(S, 'billing')
    store.register_group(S, 'analytics')
    assert store.pull(S, 'billing', 3) == 3
    assert store.pull(S, 'billing', 100) == 2
    assert store.pull(S, 'billing', 100) == 0, 'nothing is copied twice'
    assert [m.data for m in store.find_available(BILLING)] == [{'i': i} for i in range(5)]
    assert store.pull(S, 'analytics', 100) == 5
    originals = {m.id: m.data for m in store.messages(S)}
    for copies in (BILLING, ANALYTICS):
        assert [m.data for m in store.messages(copies)] == list(originals.values())
    assert store.counts(S)['available'] == 5, 'the stream itself (the default group) is untouched'


def test_a_copy_keeps_the_time_of_its_original(store):
    store.append(S, [{'i': 0}])
    store.register_group(S, 'billing')
    store.pull(S, 'billing', 10)
    [original], [copy] = store.messages(S), store.messages(BILLING)
    assert abs((copy.created - original.created).total_seconds()) < 0.001


def test_start_latest_sees_only_later_messages(store):
    store.append(S, [{'i': 0}, {'i': 1}])
    store.register_group(S, 'late', start='latest')
    assert store.pull(S, 'late', 10) == 0
    store.append(S, [{'i': 2}])
    assert store.pull(S, 'late', 10) == 1
    assert [m.data for m in store.find_available(group_stream(S, 'late'))] == [{'i': 2}]


def test_pull_skips_messages_appended_dead_and_unregistered_groups_get_nothing(store):
    store.append(S, [{'i': 0}])
    store.append_dead(S, [{'raw': 'not json'}], 'not JSON')
    store.append(S, [{'i': 1}])
    assert store.pull(S, 'nobody', 10) == 0
    store.register_group(S, 'billing')
    assert store.pull(S, 'billing', 10) == 2
    assert store.pull(S, 'billing', 10) == 0
    assert [m.data for m in store.messages(BILLING)] == [{'i': 0}, {'i': 1}]


def test_concurrent_pulls_copy_each_message_once(store):
    store.append(S, [{'i': i} for i in range(300)])
    store.register_group(S, 'billing')
    copied = []
    threads = [threading.Thread(target=lambda: copied.append(sum(store.pull(S, 'billing', 7) for _ in range(60))))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.pull(S, 'billing', 1000) + sum(copied) == 300
    assert sorted(m.data['i'] for m in store.messages(BILLING)) == list(range(300))


def test_retention_waits_for_the_slowest_group(store):
    store.append(S, [{'i': i} for i in range(4)])
    store.register_group(S, 'billing')
    store.register_group(S, 'analytics')
    store.pull(S, 'billing', 10)
    assert consume_all(store, BILLING) == [{'i': i} for i in range(4)]
    assert store.retain(S) == 0, 'analytics has not even copied them'
    store.pull(S, 'analytics', 10)
    assert store.retain(S) == 0, 'analytics has not committed them'
    messages = store.find_available(ANALYTICS, limit=2)
    claim = token()
    store.commit(ANALYTICS, claim, [m.id for m in store.claim(ANALYTICS, messages, claim, 30)], keep=True)
    assert store.retain(S) == 2
    assert [m.data for m in store.messages(S)] == [{'i': 2}, {'i': 3}]
    assert [m.data for m in store.messages(BILLING)] == [{'i': 2}, {'i': 3}], 'done copies go with their original'
    consume_all(store, ANALYTICS)
    assert store.retain(S) == 2
    assert store.messages(S) == [] and store.messages(BILLING) == [] and store.messages(ANALYTICS) == []


def test_retention_waits_for_the_default_group_once_registered(store):
    store.append(S, [{'i': 0}, {'i': 1}])
    store.register_group(S, 'billing')
    store.register_group(S, 'default')
    store.pull(S, 'billing', 10)
    consume_all(store, BILLING)
    assert store.retain(S) == 0, 'the default group has not committed them'
    consume_all(store, S, keep=True)  # the default group's consumers keep messages while other groups exist
    assert store.retain(S) == 2
    assert store.counts(S)[DONE] == 0


def test_a_group_that_keeps_messages_stops_retention(store):
    store.append(S, [{'i': 0}])
    store.register_group(S, 'billing', keep=True)
    store.pull(S, 'billing', 10)
    consume_all(store, BILLING)
    assert store.retain(S) == 0
    assert len(store.messages(S)) == 1


def test_dead_copies_do_not_hold_retention_and_stay_dead_letters_of_their_group(store):
    store.append(S, [{'i': 0}])
    store.register_group(S, 'billing')
    store.pull(S, 'billing', 10)
    claim = token()
    held = store.claim(BILLING, store.find_available(BILLING), claim, 30)
    assert store.release(BILLING, claim, [m.id for m in held], error='boom', max_attempts=1) == (0, 1)
    assert store.retain(S) == 1
    [dead] = store.dead_letters(BILLING)
    assert dead.data == {'i': 0} and 'boom' in dead.error
    assert store.dead_letters(S) == [], 'the stream itself has no dead letter'


def test_replay_of_a_named_group_copies_again_from_the_point_asked(store):
    ids = store.append(S, [{'i': i} for i in range(5)])
    store.register_group(S, 'billing')
    store.register_group(S, 'analytics')
    for group, copies in (('billing', BILLING), ('analytics', ANALYTICS)):
        store.pull(S, group, 10)
        consume_all(store, copies)
    assert store.replay(S, 'billing', since=ids[2]) == 3
    assert store.pull(S, 'billing', 10) == 3
    assert [m.data for m in store.find_available(BILLING)] == [{'i': 2}, {'i': 3}, {'i': 4}]
    assert store.find_available(ANALYTICS) == [] and store.pull(S, 'analytics', 10) == 0, 'analytics untouched'


def test_replay_since_a_time_and_of_everything(store):
    store.append(S, [{'i': 0}])
    between = utcnow()
    store.append(S, [{'i': 1}])
    store.register_group(S, 'billing')
    store.pull(S, 'billing', 10)
    consume_all(store, BILLING)
    assert store.replay(S, 'billing', since=between) == 1
    store.pull(S, 'billing', 10)
    assert [m.data for m in store.find_available(BILLING)] == [{'i': 1}]
    assert store.replay(S, 'billing') == 2
    store.pull(S, 'billing', 10)
    assert [m.data for m in store.find_available(BILLING)] == [{'i': 0}, {'i': 1}]


def test_replay_of_the_default_group_makes_done_messages_available(store):
    ids = store.append(S, [{'i': i} for i in range(3)])
    consume_all(store, S, keep=True)
    assert store.replay(S, 'default', since=ids[1]) == 2
    assert [m.data for m in store.find_available(S)] == [{'i': 1}, {'i': 2}]
    assert all(m.attempts == 0 for m in store.find_available(S))


def test_replay_of_an_unknown_group_is_refused_naming_the_groups(store):
    store.register_group(S, 'billing')
    with pytest.raises(ConfigurationError, match='billing'):
        store.replay(S, 'nosuch')


def test_delete_group_removes_its_copies_and_releases_retention(store):
    store.append(S, [{'i': 0}])
    store.register_group(S, 'billing')
    store.register_group(S, 'analytics')
    store.pull(S, 'billing', 10)
    consume_all(store, BILLING)
    assert store.retain(S) == 0
    assert store.delete_group(S, 'analytics') is True
    assert store.delete_group(S, 'analytics') is False
    assert set(store.groups(S)) == {'billing'}
    assert store.retain(S) == 1


def test_group_lag_counts_what_the_group_has_not_committed(store):
    assert store.group_lag(S, 'billing') == (0, None)
    store.append(S, [{'i': i} for i in range(4)])
    store.register_group(S, 'billing')
    lag, oldest = store.group_lag(S, 'billing')
    assert lag == 4 and oldest == store.messages(S)[0].created
    store.pull(S, 'billing', 2)
    assert store.group_lag(S, 'billing')[0] == 4, 'copied is not committed'
    claim = token()
    held = store.claim(BILLING, store.find_available(BILLING, limit=1), claim, 30)
    store.commit(BILLING, claim, [m.id for m in held], keep=True)
    assert store.group_lag(S, 'billing')[0] == 3
    assert store.group_lag(S, 'default') == (4, store.messages(S)[0].created)


def test_commit_with_output_appends_it_with_the_commit(store):
    store.append(S, [{'i': 0}, {'i': 1}])
    claim = token()
    held = store.claim(S, store.find_available(S), claim, 30)
    assert store.commit(S, claim, [m.id for m in held], output=('totals', [{'sum': 1}])) == 2
    assert [m.data for m in store.find_available('totals')] == [{'sum': 1}]
    assert store.counts(S)[AVAILABLE] == 0


def test_commit_window_with_output_appends_it_with_the_commit(store):
    store.append(S, [{'i': 0}])
    claim = token()
    held = store.claim(S, store.find_available(S), claim, 30)
    count, window_id = store.commit_window(S, claim, [m.id for m in held], output=('totals', [{'a': 1}, {'b': 2}]))
    assert count == 1 and window_id is not None
    assert [m.data for m in store.find_available('totals')] == [{'a': 1}, {'b': 2}]


def test_a_commit_that_holds_nothing_appends_no_output(store):
    store.append(S, [{'i': 0}])
    claim = token()
    held = store.claim(S, store.find_available(S), claim, 30)
    store.unclaim(S, claim, [m.id for m in held])
    assert store.commit(S, claim, [m.id for m in held], output=('totals', [{'x': 1}])) == 0
    assert store.messages('totals') == []


def test_bad_output_fails_the_commit_and_writes_nothing(store):
    store.append(S, [{'i': 0}])
    claim = token()
    held = store.claim(S, store.find_available(S), claim, 30)
    with pytest.raises(InvalidMessage):
        store.commit(S, claim, [m.id for m in held], output=('totals', [{'x': {1, 2}}]))
    assert store.messages('totals') == []
    assert [m.state for m in store.messages(S)] == ['claimed'], 'the commit did not happen either'


# -- a model of groups: whatever the interleaving, each group sees each message exactly once --
OPS = st.lists(st.one_of(
    st.tuples(st.just('append'), st.integers(1, 4)),
    st.tuples(st.just('pull'), st.sampled_from(['billing', 'analytics']), st.integers(1, 5)),
    st.tuples(st.just('consume'), st.sampled_from(['billing', 'analytics']), st.integers(1, 3)),
    st.tuples(st.just('fail'), st.sampled_from(['billing', 'analytics'])),
    st.tuples(st.just('retain'),),
), max_size=30)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_model_every_group_commits_every_message_once(store, ops):
    name = f'model-{uuid.uuid4().hex[:8]}'
    store.register_group(name, 'billing')
    store.register_group(name, 'analytics')
    appended, committed = [], {'billing': [], 'analytics': []}
    counter = 0

    def consume(group, limit, fail=False):
        copies = group_stream(name, group)
        claim = token()
        held = store.claim(copies, store.find_available(copies, limit=limit), claim, 30)
        if fail:
            store.release(copies, claim, [m.id for m in held], error='x', max_attempts=1000)
        else:
            store.commit(copies, claim, [m.id for m in held], keep=True)
            committed[group] += [m.data['n'] for m in held]

    for op in ops:
        if op[0] == 'append':
            docs = [{'n': counter + i} for i in range(op[1])]
            counter += op[1]
            store.append(name, docs)
            appended += [d['n'] for d in docs]
        elif op[0] == 'pull':
            store.pull(name, op[1], op[2])
        elif op[0] == 'consume':
            consume(op[1], op[2])
        elif op[0] == 'fail':
            consume(op[1], 1, fail=True)
        else:
            store.retain(name)
        # retention never removes what a group has not committed
        remaining = {m.data['n'] for m in store.messages(name)}
        for group in committed:
            assert set(appended) - set(committed[group]) <= remaining | {
                m.data['n'] for m in store.messages(group_stream(name, group)) if m.state != DONE}
    for group in committed:  # drain: every message reaches every group once
        while store.pull(name, group, 100):
            pass
        consume(group, 1000)
        assert sorted(committed[group]) == appended
    store.retain(name)
    assert store.messages(name) == []
    for group in committed:
        store.delete_group(name, group)
    store.delete_stream(name)


def test_take_turn_gives_a_job_to_one_caller_per_period(store):
    store.ensure_stream(S)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.take_turn(S, 'retain', 30))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]
    assert store.take_turn(S, 'other', 30) is True, 'jobs are counted apart'
    assert store.take_turn(S, 'retain', 0) is True, 'once the period is over, the next caller gets it'
    assert store.take_turn('no-such-stream', 'retain', 0) is False


def test_a_commit_keeps_messages_while_a_named_group_is_registered(store):
    store.append(S, [{'i': 0}])
    store.register_group(S, 'billing')  # nothing pulled yet: billing still needs the message
    consume_all(store, S, keep=False)
    assert [m.state for m in store.messages(S)] == [DONE]
    assert store.pull(S, 'billing', 10) == 1

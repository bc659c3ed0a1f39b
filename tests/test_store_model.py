"""The store contract checked against a model: random sequences of operations on a real store.

A hypothesis ``RuleBasedStateMachine`` drives one store (SQLite, and MongoDB on
the MongoDB-wire test server) through random sequences of append / find /
claim (several tokens: several consumers) / renew / commit / commit_window /
release / unclaim / lease expiry / requeue / purge_dead / housekeep / clear,
and keeps a plain-Python model of the message life cycle beside it
(minibatch/store/base.py). After every step the store must agree with the
model: every message's state, attempts, error and data, ``counts()``, the
window records, and each operation's return value.

Time is made deterministic without long sleeps: every lease and retry backoff
is either SHORT (a few milliseconds) or LONG (an hour). Stores only ever
expire leases inside ``expire_leases``, so the rule that calls it first waits
until every SHORT deadline has certainly passed; LONG ones never pass within a
run. ``housekeep`` likewise uses either max_age 0 (after a few milliseconds,
so everything is "older") or an hour (nothing is).
"""
import datetime
import time
import uuid

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from minibatch.errors import InvalidMessage
from minibatch.store import get_store
from minibatch.store.base import AVAILABLE, CLAIMED, DEAD, DONE, RETRY, STATES

# One place for the run's size: ~30 steps per example keeps each store's machine well under 20 s
# on the MongoDB-wire server (each step reads messages, counts and windows back).
SETTINGS = {
    'sqlite': settings(max_examples=200, stateful_step_count=30, deadline=None),
    'mongodb': settings(max_examples=60, stateful_step_count=30, deadline=None),
}

SHORT = (0.001, 0.005, 0.02)  # leases and backoffs that the expire rule waits out
LONG = 3600.0  # never passes within a run
# MongoDB keeps times to the millisecond and compares ``lease < now``: a few ms more than the
# deadline make "passed" certain on both stores without making the run slow
MARGIN = 0.004

LEASES = st.sampled_from(SHORT + (LONG,))
PICK = st.lists(st.booleans(), min_size=1, max_size=8)  # which of the stream's ids an operation names
WHICH = st.integers(0, 63)  # which token
# which ids a settle call (commit, release, unclaim) names: mostly the claim's own, as the runner does
HOW = st.sampled_from(['held', 'held+others', 'held+others', 'any'])
LIVE = st.sampled_from([True, True, True, False])  # mostly a token that still holds messages

EXPIRED = object()  # model's error for a lease that ran out: the stores word it differently


class Msg:
    """The model of one message."""

    def __init__(self, seq, state=AVAILABLE, error=None):
        self.seq = seq  # append order: the stores' id order
        self.data = {'i': seq}
        self.state = state
        self.attempts = 0
        self.error = error
        self.token = None  # the claim holding it (state CLAIMED)
        self.until = None  # lease or backoff end, time.time() upper bound; None when LONG


class StoreMachine(RuleBasedStateMachine):
    """One store against the model; ``store`` is set by the test (one per store kind)."""
    store = None

    windows = Bundle('windows')

    def __init__(self):
        super().__init__()
        self.name = 'model-' + uuid.uuid4().hex[:12]  # a fresh stream per example
        self.store.ensure_stream(self.name)
        self.msgs = {}  # store id -> Msg, for every message the store should hold
        self.window_records = {}  # window id -> processed
        self.window_tokens = {}  # window id -> the claim it was saved for (save_window(token=))
        self.expired = 0  # counts()['expired']
        self.seq = 0
        self.tokens = []  # every claim token handed out (the stores know no others)
        self.seqs = {}  # store id -> append order, of every message ever appended (removed ones too)
        self.last_created = 0.0  # time.time() after the latest append or window record

    # -- helpers ----------------------------------------------------------
    def _ids(self, pick):
        """Some ids the stream has had, removed ones included (to be ignored); ``pick`` (drawn) says which."""
        ids = sorted(self.seqs, key=self.seqs.get)
        return [i for k, i in enumerate(ids) if pick[k % len(pick)]]

    def _token(self, which, live):
        """A claim token: mostly one still holding messages (``live``), else any, lost claims included."""
        holding = {m.token for m in self.msgs.values() if m.state == CLAIMED}
        # in the order handed out, not by value: tokens are random, and a replayed example must choose the same
        tokens = [t for t in self.tokens if t in holding] if live and holding else self.tokens
        return tokens[which % len(tokens)]

    def _targets(self, token, how, pick):
        """The ids a settle call names: those held under ``token``, maybe with others, or any."""
        held = sorted((i for i, m in self.msgs.items() if m.state == CLAIMED and m.token == token),
                      key=self.seqs.get)
        if how == 'held':
            return held
        others = [i for i in self._ids(pick) if i not in held]
        return held + others if how == 'held+others' else others

    def _held(self, token, ids):
        return [i for i in ids if i in self.msgs and self.msgs[i].state == CLAIMED and self.msgs[i].token == token]

    def _new_messages(self, ids, state=AVAILABLE, error=None):
        self.last_created = time.time()
        for id_ in ids:
            self.msgs[id_] = Msg(self.seq, state, error)
            self.seqs[id_] = self.seq
            self.seq += 1

    @staticmethod
    def _deadline(duration, started):
        """The model's lease/backoff end: an upper bound for SHORT, None (never) for LONG."""
        return None if duration == LONG else started + duration

    def _wait_out_short(self):
        """Sleep until every SHORT lease and backoff has certainly ended (at most ~25 ms)."""
        ends = [m.until for m in self.msgs.values() if m.state in (CLAIMED, RETRY) and m.until is not None]
        if ends:
            delay = max(ends) + MARGIN - time.time()
            if delay > 0:
                time.sleep(delay)

    def _settle_created(self):
        """Make everything created so far older than 'now' even at MongoDB's millisecond precision."""
        delay = self.last_created + MARGIN - time.time()
        if delay > 0:
            time.sleep(delay)

    # -- producing --------------------------------------------------------
    @initialize(n=st.integers(4, 12))
    def start_with_messages(self, n):
        # every example starts with something to claim: most rules act on messages
        self.append(n)

    @rule(n=st.integers(0, 8), slip=st.booleans())
    def append(self, n, slip=False):
        if slip:  # the commonest slip, a single dict: refused, and nothing written (the invariants check)
            with pytest.raises(InvalidMessage):
                self.store.append(self.name, {'i': -1})
        docs = [{'i': self.seq + k} for k in range(n)]
        ids = self.store.append(self.name, docs)
        assert len(ids) == n
        assert len(set(ids)) == n and not set(ids) & set(self.msgs), 'ids are never reused'
        assert ids == sorted(ids), 'ids increase in append order'
        if self.msgs and ids:
            assert min(ids) > max(self.msgs), 'a later append gets higher ids'
        self._new_messages(ids)

    @rule(n=st.integers(1, 3))
    def append_dead(self, n):
        docs = [{'i': self.seq + k} for k in range(n)]
        ids = self.store.append_dead(self.name, docs, 'unreadable')
        assert len(ids) == n
        self._new_messages(ids, DEAD, 'unreadable')

    # -- consuming --------------------------------------------------------
    @rule(limit=st.none() | st.integers(1, 6), before=st.booleans(), processed=st.booleans(),
          state=st.sampled_from(STATES))
    def read(self, limit, before, processed, state):
        """The filtered reads: find_available (limit, until), messages (state, limit), windows (processed)."""
        listed = self.store.messages(self.name, state=state, limit=limit)
        want = sorted((i for i, m in self.msgs.items() if m.state == state), key=self.seqs.get)[:limit]
        assert [m.id for m in listed] == want, 'messages(state=, limit=) filters, oldest first'
        until = datetime.datetime(2000, 1, 1) if before else None
        found = self.store.find_available(self.name, limit=limit, until=until)
        want = [] if before else self._available()[:limit]
        assert [m.id for m in found] == want
        assert all(m.state == AVAILABLE and m.data == self.msgs[m.id].data for m in found)
        records = self.store.windows(self.name, processed=processed)
        want = sorted(w for w, done in self.window_records.items() if done == processed)
        assert [w.id for w in records] == want, 'windows(processed=) filters, oldest first'

    def _available(self):
        return sorted((i for i, m in self.msgs.items() if m.state == AVAILABLE), key=self.seqs.get)

    def _claimed(self, token, asked, claimed, lease, returned):
        """Check a claim's result against the model and apply it (``returned``: time.time() after the call)."""
        want = [i for i in asked if i in self.msgs and self.msgs[i].state == AVAILABLE]
        want = sorted(set(want), key=self.seqs.get)
        assert [m.id for m in claimed] == want, 'claims exactly the still available messages, in id order'
        for message in claimed:
            model = self.msgs[message.id]
            assert message.token == token and message.state == CLAIMED
            assert message.data == model.data and message.attempts == model.attempts
            model.state, model.token, model.until = CLAIMED, token, self._deadline(lease, returned)

    @rule(pick=PICK, lease=LEASES)
    def claim_ids(self, pick, lease):
        token = uuid.uuid4().hex
        asked = self._ids(pick)
        self.tokens.append(token)
        claimed = self.store.claim(self.name, asked, token, lease)
        self._claimed(token, asked, claimed, lease, time.time())

    @rule(limit=st.integers(1, 6), stolen=st.lists(st.booleans(), min_size=1, max_size=6), lease=LEASES)
    def claim_found(self, limit, stolen, lease):
        """The runner's path: find_available, then claim the Message objects, some taken meanwhile."""
        found = self.store.find_available(self.name, limit=limit)
        rival, token = uuid.uuid4().hex, uuid.uuid4().hex
        self.tokens += [rival, token]
        taken = [m.id for k, m in enumerate(found) if stolen[k % len(stolen)]]
        if taken:  # another consumer wins the race for these
            self._claimed(rival, taken, self.store.claim(self.name, taken, rival, LONG), LONG, time.time())
        claimed = self.store.claim(self.name, found, token, lease)
        self._claimed(token, [m.id for m in found], claimed, lease, time.time())

    @precondition(lambda self: self.tokens)
    @rule(which=WHICH, live=LIVE, lease=LEASES)
    def renew(self, which, live, lease):
        token = self._token(which, live)
        held = self.store.renew(self.name, token, lease)
        now = time.time()
        mine = [m for m in self.msgs.values() if m.state == CLAIMED and m.token == token]
        assert held == len(mine), 'renew counts the messages still held under the token'
        for model in mine:
            model.until = self._deadline(lease, now)

    def _committed(self, token, ids, keep, count):
        """Check a commit's count and apply it: the messages among ``ids`` held under ``token`` are done."""
        held = self._held(token, ids)
        assert count == len(held), 'only messages held under the token are committed'
        for id_ in held:
            if keep:
                model = self.msgs[id_]
                model.state, model.token, model.until = DONE, None, None
            else:
                del self.msgs[id_]

    @precondition(lambda self: self.tokens)
    @rule(which=WHICH, live=LIVE, how=HOW, pick=PICK, keep=st.booleans(), window=st.none() | windows)
    def commit(self, which, live, how, pick, keep, window):
        token = self._token(which, live)
        ids = self._targets(token, how, pick)
        count = self.store.commit(self.name, token, ids, keep=keep, window_id=window)
        self._committed(token, ids, keep, count)
        if window is not None and window in self.window_records:
            self.window_records[window] = True

    @precondition(lambda self: self.tokens)
    @rule(target=windows, which=WHICH, live=LIVE, how=HOW, pick=PICK, keep=st.booleans(),
          with_data=st.booleans())
    def commit_window(self, which, live, how, pick, keep, with_data):
        token = self._token(which, live)
        ids = self._targets(token, how, pick)
        data = [{'i': self.seqs[i]} for i in ids] if with_data else None
        count, window_id = self.store.commit_window(self.name, token, ids, keep=keep, data=data)
        self._committed(token, ids, keep, count)
        assert window_id not in self.window_records
        self.window_records[window_id] = True
        self.last_created = time.time()
        return window_id

    @rule(target=windows, n=st.integers(0, 3))
    def save_window(self, n):
        window_id = self.store.save_window(self.name, [{'i': -k} for k in range(n)])
        self.window_records[window_id] = False
        self.last_created = time.time()
        return window_id

    @precondition(lambda self: self.tokens)
    @rule(which=WHICH)
    def window_failed(self, which):
        # the runner's release of a failed window: its own messages, the default attempts, a short
        # backoff; a rule of its own so that retries (and their end in expire_leases) come often
        self.release(which, True, 'held', [True], 3, SHORT[1], 'boom')

    @precondition(lambda self: self.tokens)
    @rule(which=WHICH, live=LIVE, how=HOW, pick=PICK, max_attempts=st.integers(1, 4),
          backoff=st.sampled_from((0.0,) + SHORT + (LONG,)), error=st.sampled_from([None, 'boom', 'bang']))
    def release(self, which, live, how, pick, max_attempts, backoff, error):
        token = self._token(which, live)
        ids = self._targets(token, how, pick)
        retried, dead = self.store.release(self.name, token, ids, error=error, max_attempts=max_attempts,
                                           backoff=backoff)
        now = time.time()
        want_retried = want_dead = 0
        for id_ in self._held(token, ids):
            model = self.msgs[id_]
            model.attempts += 1
            model.error, model.token, model.until = error, None, None
            if model.attempts >= max_attempts:
                model.state = DEAD
                want_dead += 1
            else:
                want_retried += 1
                model.state = RETRY if backoff > 0 else AVAILABLE
                if backoff > 0:
                    model.until = self._deadline(backoff, now)
        assert (retried, dead) == (want_retried, want_dead)

    @precondition(lambda self: self.tokens)
    @rule(which=WHICH, live=LIVE, how=HOW, pick=PICK)
    def unclaim(self, which, live, how, pick):
        token = self._token(which, live)
        ids = self._targets(token, how, pick)
        count = self.store.unclaim(self.name, token, ids)
        held = self._held(token, ids)
        assert count == len(held)
        for id_ in held:
            model = self.msgs[id_]
            model.state, model.token, model.until = AVAILABLE, None, None

    @rule()
    def consumers_died(self):
        # the runner's periodic call with its default: a rule of its own, as leases running out is
        # the heart of the life cycle and a rule among twenty would otherwise seldom come
        self.expire_leases(3)

    @rule(max_attempts=st.integers(1, 4))
    def expire_leases(self, max_attempts):
        self._wait_out_short()
        held_before = self._holding()
        changed = self.store.expire_leases(self.name, max_attempts=max_attempts)
        want = 0
        for model in self.msgs.values():
            if model.until is None:
                continue  # LONG: still running (or no lease at all)
            if model.state == CLAIMED:
                # an abandoned claim counts as a failed delivery
                model.attempts += 1
                model.error = EXPIRED
                model.state = DEAD if model.attempts >= max_attempts else AVAILABLE
                model.token = model.until = None
                want += 1
            elif model.state == RETRY:
                model.state, model.until = AVAILABLE, None
                want += 1
        assert changed == want
        self._expire_windows(held_before, self._holding())

    def _holding(self):
        """How many messages each token holds."""
        holding = {}
        for model in self.msgs.values():
            if model.state == CLAIMED:
                holding[model.token] = holding.get(model.token, 0) + 1
        return holding

    def _expire_windows(self, held_before, held_after):
        """The unprocessed window records of claims that expire_leases gave back are removed with them."""
        if not self.window_tokens:
            return
        stored = {w.id for w in self.store.windows(self.name)}
        for window_id, token in list(self.window_tokens.items()):
            if window_id not in self.window_records:
                del self.window_tokens[window_id]  # cleared or housekept
            elif self.window_records[window_id]:
                continue  # processed: kept
            elif held_after.get(token):
                assert window_id in stored, 'the record of a claim still held stays'
            elif held_before.get(token):
                assert window_id not in stored, 'the record of a claim given back by expiry is removed'
                del self.window_records[window_id]
            elif window_id not in stored:
                # its claim ended otherwise (settled, or held nothing): the contract leaves the timing open
                del self.window_records[window_id]

    @precondition(lambda self: self.tokens)
    @rule(target=windows, which=WHICH, live=LIVE)
    def save_window_of_claim(self, which, live):
        """A window recorded when emitted, under its claim (keep=True consumers): gone with a dead claim."""
        token = self._token(which, live)
        window_id = self.store.save_window(self.name, [], token=token)
        self.window_records[window_id] = False
        self.window_tokens[window_id] = token
        self.last_created = time.time()
        return window_id

    # -- dead letters -----------------------------------------------------
    def _dead_letters_acted_on(self, operation, every, pick):
        """Call ``operation`` (requeue, purge_dead) on all or some ids; check and return the dead ones it took."""
        ids = None if every else self._ids(pick)
        count = operation(self.name, ids)
        dead = [i for i in (list(self.msgs) if ids is None else ids) if i in self.msgs and self.msgs[i].state == DEAD]
        assert count == len(dead), 'dead letters only, the listed ones or all'
        return dead

    @rule(every=st.booleans(), pick=PICK)
    def requeue(self, every, pick):
        dead = self._dead_letters_acted_on(self.store.requeue, every, pick)
        for id_ in dead:
            model = self.msgs[id_]
            model.state, model.attempts, model.error = AVAILABLE, 0, None

    @rule(every=st.booleans(), pick=PICK)
    def purge_dead(self, every, pick):
        dead = self._dead_letters_acted_on(self.store.purge_dead, every, pick)
        for id_ in dead:
            del self.msgs[id_]

    # -- housekeeping -----------------------------------------------------
    @rule(everything=st.booleans())
    def housekeep(self, everything):
        if not everything:
            assert self.store.housekeep(self.name, LONG) == (0, 0), 'nothing is an hour old'
            return
        self._settle_created()
        removed, expired = self.store.housekeep(self.name, 0)
        # waiting and done messages go, processed window records too; claimed and dead stay
        unprocessed = [i for i, m in self.msgs.items() if m.state in (AVAILABLE, RETRY)]
        done = [i for i, m in self.msgs.items() if m.state == DONE]
        windows_gone = [w for w, processed in self.window_records.items() if processed]
        assert (removed, expired) == (len(unprocessed) + len(done) + len(windows_gone), len(unprocessed))
        for id_ in unprocessed + done:
            del self.msgs[id_]
        for window_id in windows_gone:
            del self.window_records[window_id]
        self.expired += len(unprocessed)

    @precondition(lambda self: len(self.msgs) > 6)  # now and then, not at every other step
    @rule()
    def clear(self):
        assert self.store.clear(self.name) == len(self.msgs)
        self.msgs.clear()
        self.window_records.clear()

    # -- after every step -------------------------------------------------
    @invariant()
    def messages_agree(self):
        stored = self.store.messages(self.name)
        ids = [m.id for m in stored]
        assert len(ids) == len(set(ids)), 'no message twice (in two states)'
        want = sorted(self.msgs, key=lambda i: self.msgs[i].seq)
        assert ids == want, 'the store holds exactly the model\'s messages, oldest first'
        for message in stored:
            model = self.msgs[message.id]
            assert (message.state, message.attempts, message.data) == (model.state, model.attempts, model.data), \
                f'message {model.seq}'
            assert message.processed == (model.state != AVAILABLE)
            if model.error is EXPIRED:
                assert message.error and 'lease expired' in message.error
            else:
                assert message.error == model.error, f'message {model.seq}'

    @invariant()
    def counts_agree(self):
        want = dict.fromkeys(STATES, 0)
        for model in self.msgs.values():
            want[model.state] += 1
        want['windows'] = len(self.window_records)
        want['expired'] = self.expired
        assert self.store.counts(self.name) == want

    @invariant()
    def claims_do_not_overlap(self):
        # renew answers how many messages a token holds; renewing an hour-long lease by an hour changes
        # nothing the model sees, so the tokens whose leases are all LONG are asked after every step
        holding = {}
        for model in self.msgs.values():
            if model.state == CLAIMED:
                holding.setdefault(model.token, []).append(model.until)
        for token, ends in holding.items():
            if all(end is None for end in ends):
                assert self.store.renew(self.name, token, LONG) == len(ends), 'a claim holds exactly its messages'

    @invariant()
    def windows_agree(self):
        records = self.store.windows(self.name)
        assert {w.id: w.processed for w in records} == self.window_records


@pytest.mark.slow
def test_the_store_agrees_with_the_model_of_the_message_life_cycle(store_url, request):
    kind = 'sqlite' if store_url.startswith('sqlite') else 'mongodb'
    machine = type(f'{kind.title()}Machine', (StoreMachine,), {'store': get_store(store_url)})
    run_state_machine_as_test(machine, settings=SETTINGS[kind])



def test_claiming_found_messages_returns_them_as_they_are_now(store):
    # found by one consumer, then taken and failed by another before the first claims them (a race the
    # state machine above leaves out, so that it keeps guarding everything else)
    name = 'stale'
    store.ensure_stream(name)
    ids = store.append(name, [{'i': 0}])
    found = store.find_available(name)
    store.claim(name, ids, 'rival', LONG)
    assert store.release(name, 'rival', ids, error='boom') == (1, 0)  # available again, one attempt counted
    claimed = store.claim(name, found, 'late', LONG)
    assert [(m.attempts, m.error) for m in store.messages(name)] == [(1, 'boom')]
    # never the stale copy: either left for a fresh read (the stores' choice: no read-back) or as stored
    assert [(m.attempts, m.error) for m in claimed] in ([], [(1, 'boom')]), 'claim returns the message as stored'
    if not claimed:
        claimed = store.claim(name, store.find_available(name), 'fresh', LONG)
        assert [(m.attempts, m.error) for m in claimed] == [(1, 'boom')]


@pytest.mark.mongodb
def test_a_consumer_killed_between_the_two_writes_of_a_commit_leaves_no_window_record(mongo_url):
    # commit(window_id=) on MongoDB is two writes (messages, then the record): a consumer killed
    # between them leaves its record unprocessed and no message that will ever expire
    from tests.test_connection_drop import fail_point
    store = get_store(mongo_url)
    name = 'half-committed'
    store.ensure_stream(name)
    ids = store.append(name, [{'i': 0}, {'i': 1}])
    assert len(store.claim(name, ids, 'dying', LONG)) == 2
    window_id = store.save_window(name, [{'i': 0}, {'i': 1}], token='dying')
    live_ids = store.append(name, [{'i': 2}])
    assert len(store.claim(name, live_ids, 'alive', LONG)) == 1
    live_window = store.save_window(name, [{'i': 2}], token='alive')
    # the server drops the connection at the window record's update, after the messages' delete:
    # what a SIGKILL between the two writes leaves (a dead consumer retries nothing)
    fail_point(mongo_url, mode={'times': 1}, data={'failCommands': ['update'], 'closeConnection': True})
    with pytest.raises(store.transient_errors):
        store.commit(name, 'dying', ids, window_id=window_id)
    assert [m.data['i'] for m in store.messages(name)] == [2]
    store.expire_leases(name)  # what every other consumer runs: younger than the orphan age, kept
    assert {w.id for w in store.windows(name, processed=False)} == {window_id, live_window}
    store.orphan_window_age = 0.0
    store.expire_leases(name)
    assert [w.id for w in store.windows(name, processed=False)] == [live_window], \
        'the orphan removed, the live window (its claim holds a message) kept'

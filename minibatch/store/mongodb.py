"""The MongoDB store: the production backend.

Collections ``stream``, ``buffer`` and ``window`` of the URL's database
(default ``minibatch``), on the mongoengine connection alias ``'minibatch'``
so that :class:`minibatch.models.Buffer` and friends query the same data.

Every hot-path operation is one batch round trip: a window is a sorted
``find().limit(n)`` plus one ``update_many`` with ``$in``, never a
``findAndModify`` per message. Claims filter on ``state: 'available'``, which
makes ``update_many`` atomic per message: of two consumers racing for a
message exactly one modifies it.

This module holds the queries. Connecting (URL, client options, the
mongoengine alias, reconnecting after a fork) is in
:mod:`minibatch.store.mongodb_connection`; appending all or nothing within the
size limit in :mod:`~minibatch.store.mongodb_append`; reading records and
dead-lettering unreadable ones in :mod:`~minibatch.store.mongodb_reading`;
window records in :mod:`~minibatch.store.mongodb_windows`; the change-stream
waiter that wakes idle consumers in :mod:`minibatch.store.mongodb_waiter`.
Their public names (``ChangeStreamWaiter``, ``redact``, the defaults) stay
importable from here.
"""
from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import bson
from pymongo.errors import OperationFailure

from minibatch.store import mongodb_append as appending
from minibatch.store import mongodb_groups as group_store
from minibatch.store import mongodb_outbox as outbox
from minibatch.store import mongodb_windows as window_store
from minibatch.store.base_groups import DEFAULT_GROUP, check_group, group_stream
from minibatch.store.base import (AVAILABLE, CLAIMED, DEAD, DONE, RETRY, STATES, Doc, Message, Output, RecordId,
                                  WindowRecord, utcnow)
from minibatch.store.mongodb_append import PENDING, error_text
from minibatch.store.mongodb_connection import (ALIAS, AUTHENTICATION_FAILED,  # noqa: F401 (re-exported)
                                                DEFAULT_DATABASE, DEFAULT_SERVER_SELECTION_TIMEOUT_MS,
                                                _translate_errors, redact)
from minibatch.store.mongodb_reading import bury, claim_each, read
from minibatch.store.mongodb_streams import MongoCollections
from minibatch.store.mongodb_waiter import ChangeStreamWaiter

logger = logging.getLogger(__name__)


# Operations on listed messages look them up by _id: a planner may otherwise walk
# a (stream, ...) index over the whole stream (the MongoDB-wire test server does
# a collection scan for an $in combined with other fields unless told).
BY_ID = [('_id', 1)]


class MongoStore(MongoCollections):
    """Store on MongoDB (or any server speaking its wire protocol with the same semantics).

    Connecting (the URL, the client, the mongoengine alias) is inherited from
    :class:`~minibatch.store.mongodb_connection.MongoConnection`; collections,
    streams and consumer records from
    :class:`~minibatch.store.mongodb_streams.MongoCollections`; this class
    holds the queries on messages and windows.
    """

    # -- producing --------------------------------------------------------
    def _limit(self) -> int:
        # the server's limit once known; validating needs no round trip (every MongoDB has had 16 MB since 1.8)
        return self._facts.max_bson if self._facts is not None else appending.DEFAULT_MAX_BSON

    def validated_copies(self, docs: Iterable[Doc]) -> list[Doc]:
        """Validate ``docs`` as :meth:`validate` does; return copies, as they will read back.

        For batching producers: a later change to the caller's dicts cannot
        alter (or poison) a message waiting in a batch.
        """
        return [bson.decode(raw.raw)['data'] for raw in appending.encode('-', list(docs), {}, self._limit())[0]]

    def validate(self, docs: Iterable[Doc]) -> None:
        appending.encode('-', list(docs), {}, self._limit())

    @_translate_errors
    def append(self, name: str, docs: Sequence[Doc]) -> list[RecordId]:
        """Append ``docs`` all or nothing (see :mod:`~minibatch.store.mongodb_append`): a transaction
        where the server has them, else a pending batch published by one update."""
        return self._append(name, self._batch(docs, 'append'), {'processed': False, 'state': AVAILABLE,
                                                                'attempts': 0})

    @_translate_errors
    def append_dead(self, name: str, docs: Sequence[Doc], error: str) -> list[RecordId]:
        return self._append(name, self._batch(docs, 'append_dead'), {'processed': True, 'state': DEAD,
                                                                     'attempts': 0, 'error': error_text(error)})

    def _append(self, name: str, docs: list[Doc], final: dict[str, Any]) -> list[RecordId]:
        if not docs:
            return []
        pending = len(docs) > 1 and not self._transactions()
        batch = bson.ObjectId() if pending else None
        fields = {**final, 'state': PENDING, 'processed': True, 'batch': batch} if pending else final
        raw, ids = appending.encode(name, docs, fields, self.server().max_bson)  # all before anything is sent
        try:
            appending.write(self._buffer(), name, raw, batch, final)
        except OperationFailure as exc:
            if batch is not None or exc.code not in appending.NO_TRANSACTIONS_CODES:
                raise
            logger.info('minibatch: %s has no transactions (%s); appending batches pending, then published',
                        self.describe(), exc)
            self.use_transactions = False
            return self._append(name, docs, final)
        return ids

    # -- consuming --------------------------------------------------------
    @_translate_errors
    def find_available(self, name: str, limit: int | None = None,
                       until: datetime.datetime | None = None) -> list[Message]:
        query: dict[str, Any] = {'stream': name, 'processed': False}
        if until is not None:
            query['created'] = {'$lt': until}
        messages, bad = read(self._buffer(), query, limit)
        if bad:  # unreadable: dead-lettered with the reason, so that they do not block the others
            bury(self._buffer(), name, bad, AVAILABLE)
        return messages

    @_translate_errors
    def claim(self, name: str, ids: Sequence[RecordId | Message], token: str, lease: float) -> list[Message]:
        if not ids:
            return []
        known = {m.id: m for m in ids if isinstance(m, Message)}
        ids = [m.id if isinstance(m, Message) else m for m in ids]
        buffer = self._buffer()
        query: dict[str, Any] = {'_id': {'$in': ids}, 'stream': name, 'state': AVAILABLE}
        attempts = {m.attempts for m in known.values()}
        if len(known) == len(ids) and len(attempts) == 1:
            # copies read earlier: claim them only while their attempts are as read, so that the copies
            # returned are current (a retry's backoff is computed from them); others are read back
            seen = attempts.pop()
            # records written by minibatch 0.6 or by hand may have no attempts field: that is 0
            query['attempts'] = {'$in': [0, None]} if seen == 0 else seen
        else:
            known = {}
        update = {'$set': {'processed': True, 'state': CLAIMED, 'claim': token, 'lease': _after(lease)}}
        try:
            modified = buffer.update_many(query, update, hint=BY_ID).modified_count
        except OperationFailure as exc:
            if exc.code == AUTHENTICATION_FAILED:
                raise
            # the server cannot update one of them (nested too deep for it, say): find which, one by one
            logger.warning('minibatch: stream %r: a claim failed (%s); claiming one by one', name, exc)
            modified, known = claim_each(buffer, name, ids, update), {}
        if modified == 0:
            return []  # another consumer was first: nothing to read back
        if modified == len(ids) and len(known) == len(ids):
            claimed = [known[i] for i in ids]
        else:
            # lost some to another consumer, or we lack the data: read back what is ours. Not hinted, unlike
            # the writes: no index but _id's can serve this query, and the wire server, told to use _id's,
            # scans all of it for a find (3.7 s for 100 of 20,000 messages, against 16 ms unhinted)
            claimed, bad = read(buffer, {'_id': {'$in': ids}, 'claim': token})
            if bad:
                bury(buffer, name, bad, CLAIMED, token)
        for message in claimed:
            message.state = CLAIMED
            message.token = token
        claimed.sort(key=lambda m: m.id)
        return claimed

    @_translate_errors
    def renew(self, name: str, token: str, lease: float) -> int:
        result = self._buffer().update_many({'stream': name, 'state': CLAIMED, 'claim': token},
                                            {'$set': {'lease': _after(lease)}})
        return result.matched_count

    @_translate_errors
    def commit(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool = False,
               window_id: RecordId | None = None, output: Output | None = None) -> int:
        """As the contract says; with ``output``, by the outbox protocol of
        :mod:`~minibatch.store.mongodb_outbox` (four single writes, recovered by ``expire_leases``)."""
        streams, buffer, windows = self._collections()
        # while a named group is registered, another group may still need them: kept for retention
        keep = keep or (bool(ids) and self._has_named_groups(streams, name))
        if output is not None:
            return outbox.commit_with_output(buffer, windows, name, token, ids, keep, window_id, None, output,
                                             self.server().max_bson)[0]
        count = outbox.commit_messages(buffer, name, token, ids, keep)
        if window_id is not None:
            # a second write, not a transaction: a consumer killed inside a transaction leaves it open,
            # and the test server then blocks every other write to its documents. A consumer dying
            # between the two writes leaves the record unprocessed: expire_leases removes it later
            # (see orphan_window_age)
            windows.update_one({'_id': window_id}, {'$set': {'processed': True}})
        return count

    @_translate_errors
    def release(self, name: str, token: str, ids: Sequence[RecordId], error: object = None,
                max_attempts: int = 3, backoff: float = 0.0) -> tuple[int, int]:
        buffer = self._buffer()
        query = {'_id': {'$in': list(ids)}, 'claim': token, 'state': CLAIMED}
        error = error_text(error)
        dead = buffer.update_many(
            {**query, 'attempts': {'$gte': max_attempts - 1}},
            {'$set': {'state': DEAD, 'error': error, 'failed': utcnow()}, '$inc': {'attempts': 1},
             '$unset': {'claim': '', 'lease': ''}}, hint=BY_ID).modified_count
        if backoff > 0:
            retry = {'$set': {'state': RETRY, 'error': error, 'lease': _after(backoff)}, '$inc': {'attempts': 1}}
        else:
            retry = {'$set': {'state': AVAILABLE, 'processed': False, 'error': error}, '$inc': {'attempts': 1},
                     '$unset': {'claim': '', 'lease': ''}}
        retried = buffer.update_many(query, retry, hint=BY_ID).modified_count
        return retried, dead

    @_translate_errors
    def unclaim(self, name: str, token: str, ids: Sequence[RecordId]) -> int:
        return self._buffer().update_many(
            {'_id': {'$in': list(ids)}, 'claim': token, 'state': CLAIMED},
            {'$set': {'state': AVAILABLE, 'processed': False}, '$unset': {'claim': '', 'lease': ''}},
            hint=BY_ID).modified_count

    @_translate_errors
    def expire_leases(self, name: str, max_attempts: int = 3) -> int:
        """As the contract says; also removes the window records of claims that expired, and settles
        batches abandoned pending (without transactions) for ``pending_timeout`` seconds.

        One update and one read when nothing expired.
        """
        _, buffer, windows = self._collections()
        now = utcnow()
        to_available: dict[str, Any] = {'$set': {'state': AVAILABLE, 'processed': False},
                                        '$unset': {'claim': '', 'lease': ''}}
        changed = buffer.update_many({'stream': name, 'state': RETRY, 'lease': {'$lt': now}},
                                     to_available).modified_count
        expired: dict[str, Any] = {'stream': name, 'state': CLAIMED, 'lease': {'$lt': now}}
        # the claims whose leases ended: read first, as the updates below remove the tokens
        tokens = buffer.distinct('claim', expired)
        if tokens:
            # a claim whose commit record was written (a commit with output, killed before it committed
            # its messages) is committed, not given back: see mongodb_outbox
            committed = outbox.recover(buffer, windows, name, [t for t in tokens if t is not None])
            # only the claims read: one lapsing right now may have a commit record we did not look for
            expired['claim'] = {'$in': [t for t in tokens if t not in committed] + [None]}
            reason = 'lease expired: the consumer died or hung while holding this message'
            changed += buffer.update_many(
                {**expired, 'attempts': {'$gte': max_attempts - 1}},
                {'$set': {'state': DEAD, 'error': reason, 'failed': now}, '$inc': {'attempts': 1},
                 '$unset': {'claim': '', 'lease': ''}}).modified_count
            changed += buffer.update_many(
                expired, {**to_available, '$set': {**to_available['$set'], 'error': reason},
                          '$inc': {'attempts': 1}}).modified_count
        window_store.forget_dead_windows(buffer, windows, name, tokens, now - datetime.timedelta(
            seconds=self.orphan_window_age))
        outbox.forget_outbox_records(buffer, windows, name, now - datetime.timedelta(seconds=self.orphan_window_age))
        outbox.finish_open(buffer, windows, name, now - datetime.timedelta(seconds=outbox.OPEN_GRACE))
        # batches are left pending by producers without transactions and by commits with output, on any server
        changed += appending.settle_abandoned(
            buffer, name, self.pending_timeout,
            committed=lambda batch, source: outbox.settle_decision(windows, name, batch, source))
        return changed

    # -- dead letters -----------------------------------------------------
    @_translate_errors
    def requeue(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        query: dict[str, Any] = {'stream': name, 'state': DEAD}
        hint: list[tuple[str, int]] | None = None
        if ids is not None:
            query['_id'], hint = {'$in': list(ids)}, BY_ID
        return self._buffer().update_many(query, {'$set': {'state': AVAILABLE, 'processed': False, 'attempts': 0},
                                                  '$unset': {'error': '', 'failed': ''}}, hint=hint).modified_count

    @_translate_errors
    def purge_dead(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        query: dict[str, Any] = {'stream': name, 'state': DEAD}
        hint: list[tuple[str, int]] | None = None
        if ids is not None:
            query['_id'], hint = {'$in': list(ids)}, BY_ID
        return self._buffer().delete_many(query, hint=hint).deleted_count

    # -- windows ----------------------------------------------------------
    @_translate_errors
    def save_window(self, name: str, data: list[Any], query: list[Any] | None = None,
                    token: str | None = None) -> RecordId:
        """As the contract says; a record whose data would exceed MongoDB's document limit is written
        without it: ``data`` ``[]`` and ``data_omitted`` True (see :mod:`~minibatch.store.mongodb_windows`)."""
        return window_store.save_window(self._collections()[2], name, data, query, token, self.server().max_bson)

    @_translate_errors
    def commit_window(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool = False,
                      data: list[Any] | None = None, output: Output | None = None) -> tuple[int, RecordId]:
        """As the contract says, in two writes and no transaction: the messages, then the record, already
        processed (a consumer dying between them leaves no record, never an unprocessed one). With
        ``output``: the record first, as the commit point of :mod:`~minibatch.store.mongodb_outbox`."""
        streams, buffer, windows = self._collections()
        data = [] if data is None else data
        if output is not None:
            keep = keep or (bool(ids) and self._has_named_groups(streams, name))
            return outbox.commit_with_output(buffer, windows, name, token, ids, keep, None, data, output,
                                             self.server().max_bson)
        count = self.commit(name, token, ids, keep=keep)
        window_id = window_store.save_window(windows, name, data, None, token, self.server().max_bson,
                                             processed=True)
        return count, window_id

    @_translate_errors
    def windows(self, name: str, processed: bool | None = None) -> list[WindowRecord]:
        return window_store.window_records(self._collections()[2], name, processed)

    # -- inspection and housekeeping --------------------------------------
    @_translate_errors
    def messages(self, name: str, state: str | None = None, limit: int | None = None) -> list[Message]:
        # every state but that of a batch still being written, which no query of the contract sees
        query: dict[str, Any] = {'stream': name, 'state': {'$ne': PENDING} if state is None else state}
        messages, bad = read(self._buffer(), query, limit)
        if bad:  # shown as they are, with empty data and the reason; reading changes nothing
            messages = sorted(messages + [item.message(name) for item in bad], key=lambda m: m.id)
        return messages

    @_translate_errors
    def counts(self, name: str) -> dict[str, int]:
        _, buffer, windows = self._collections()
        counts = dict.fromkeys(STATES, 0)
        for row in buffer.aggregate([{'$match': {'stream': name}}, {'$group': {'_id': '$state', 'n': {'$sum': 1}}}]):
            if row['_id'] != PENDING:  # a batch still being written is not there yet
                state = row['_id'] if row['_id'] in counts else AVAILABLE
                counts[state] += row['n']
        counts['windows'] = windows.count_documents({'stream': name, 'outbox': {'$ne': True}})
        record = self._collections()[0].find_one({'name': name}, {'expired': 1}) or {}
        counts['expired'] = int(record.get('expired') or 0)
        return counts

    @_translate_errors
    def housekeep(self, name: str, max_age: float) -> tuple[int, int]:
        cutoff = utcnow() - datetime.timedelta(seconds=max_age)
        streams, buffer, windows = self._collections()
        expired = buffer.delete_many({'stream': name, 'state': {'$in': [AVAILABLE, RETRY]},
                                      'created': {'$lt': cutoff}}).deleted_count
        if expired:
            # not in the delete's transaction: a crash right here under-counts, never drops data unseen twice
            streams.update_one({'name': name}, {'$inc': {'expired': expired}})
        removed = buffer.delete_many({'stream': name, 'state': DONE, 'created': {'$lt': cutoff}}).deleted_count
        removed += windows.delete_many({'stream': name, 'processed': True, 'created': {'$lt': cutoff}}).deleted_count
        return removed + expired, expired

    # -- consumer groups (see mongodb_groups) -----------------------------
    @_translate_errors
    def register_group(self, name: str, group: str, start: str = 'earliest', keep: bool = False) -> bool:
        check_group(group)
        self.ensure_stream(name)
        if group != DEFAULT_GROUP:  # its copies are a stream of their own: status, the dashboard and /metrics list it
            self.ensure_stream(group_stream(name, group))
        streams, buffer, _ = self._collections()
        created = group_store.register(streams, buffer, name, group, start, keep)
        if created and group != DEFAULT_GROUP:
            # a commit decides keep-or-remove on a view of the groups at most GROUPS_TTL old: once that
            # has passed, every commit knows this group, so it misses nothing appended after we return
            time.sleep(self.groups_ttl)
        return created

    def _has_named_groups(self, streams: Any, name: str) -> bool:
        """Whether ``name`` has a named group, as read at most GROUPS_TTL seconds ago (one read per that)."""
        cache = self.__dict__.setdefault('_named_groups', {})
        now = time.monotonic()
        known = cache.get(name)
        if known is not None and now - known[0] < self.groups_ttl:
            return bool(known[1])
        found = group_store.has_named(streams, name)  # timed from before the read: a stale answer expires first
        cache[name] = (now, found)
        return found

    @_translate_errors
    def groups(self, name: str) -> dict[str, dict[str, Any]]:
        return group_store.registry(self._collections()[0], name)

    @_translate_errors
    def pull(self, name: str, group: str, limit: int) -> int:
        """As the contract says; looks back for late messages at most every ``group_lookback_every`` seconds."""
        streams, buffer, windows = self._collections()
        now = time.monotonic()
        last = self._looked_back.get((name, group))
        due = last is None or now - last >= self.group_lookback_every
        copied, looked_back = group_store.pull(
            streams, buffer, name, group, limit, due,
            settle=lambda: appending.settle_abandoned(
                buffer, name, self.pending_timeout,
                committed=lambda batch, source: outbox.settle_decision(windows, name, batch, source)))
        if looked_back:
            self._looked_back[(name, group)] = now
        return copied

    @_translate_errors
    def delete_group(self, name: str, group: str) -> bool:
        self._looked_back.pop((name, group), None)
        return group_store.delete(self._collections()[0], name, group, self.delete_stream)

    @_translate_errors
    def replay(self, name: str, group: str, since: datetime.datetime | RecordId | None = None) -> int:
        streams, buffer, _ = self._collections()
        return group_store.replay(streams, buffer, name, group, since)

    @_translate_errors
    def retain(self, name: str) -> int:
        streams, buffer, _ = self._collections()
        return group_store.retain(streams, buffer, name)

    @_translate_errors
    def take_turn(self, name: str, job: str, seconds: float) -> bool:
        return group_store.take_turn(self._collections()[0], name, job, seconds, time.time())

    @_translate_errors
    def group_lag(self, name: str, group: str) -> tuple[int, datetime.datetime | None]:
        streams, buffer, _ = self._collections()
        return group_store.lag(streams, buffer, name, group)

    # -- wake-ups ---------------------------------------------------------
    def waiter(self, name: str) -> ChangeStreamWaiter:
        return ChangeStreamWaiter(self, name)


def _after(seconds: float) -> datetime.datetime:
    return utcnow() + datetime.timedelta(seconds=seconds)


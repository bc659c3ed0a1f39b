"""Exactly-once output on the MongoDB store: ``commit(..., output=(stream, docs))`` without transactions.

A window's result is appended to the output stream together with the commit
of its input, also when the consumer is killed (``kill -9``) at any point.
Not with a multi-document transaction: a consumer killed inside one leaves it
open, and some servers (the MongoDB-wire test server) then block every write
to its documents. Instead an *outbox* protocol, in four steps, each of which
is one write:

1. **Stage.** The docs (validated and encoded before anything is written:
   InvalidMessage) are inserted into the output stream as a *pending* batch
   (state ``pending``, see :mod:`~minibatch.store.mongodb_append`) whose
   ``batch`` is the claim token (and ``source`` the input stream): no query
   of the contract sees them.
2. **Decide.** The commit point, one single-document write: the window
   record, ``processed`` True, with the token, ``batch``, ``output`` (the
   output stream) and ``keep``. ``commit_window`` writes its record so;
   ``commit(window_id=...)`` marks that record so; a commit without a window
   inserts a small record (``outbox`` True, not listed by ``windows()``),
   removed again after step 4.
3. **Commit** the input messages held under the token (delete, or ``done``
   with ``keep``), as without output.
4. **Publish** the pending batch: one ``update_many`` makes it available.

Recovery, for a consumer killed after step:

* **1** (no record): the claim's lease lapses and ``expire_leases`` gives the
  messages back as usual; the staged batch stays invisible until
  ``settle_abandoned`` (after ``pending_timeout``) finds no record for it and
  deletes it. The window runs again, under a new token.
* **2** (record, messages still claimed): ``expire_leases`` finds the
  processed record of the lapsed claim and, instead of giving the messages
  back, commits them as the consumer would have, and publishes the batch
  (:func:`recover`).
* **3** (messages committed, batch pending): the record is still *open*
  (``open``, the time of step 2, is removed by the last step); ``expire_leases``
  of the input stream finishes records open for more than :data:`OPEN_GRACE`
  seconds (:func:`finish_open`), and ``settle_abandoned`` of the output stream
  publishes the batch of a recorded commit instead of deleting it
  (:func:`settle_decision`).

Who settles a record's fate is decided once, on the record: the field
``decision`` becomes ``'commit'`` (recovery committing for a dead consumer,
or settling publishing) or ``'void'`` (the consumer's commit found none of its
messages held any more: they were given back before the record was written,
so its output must not appear, and the staged batch is deleted), whichever
comes first; the other side then backs off.

A commit retried after it failed part-way (the runner retries while the
server is briefly away) finishes the earlier try if that reached its commit
point, and otherwise deletes what it staged first: the output is written once.

**The limit** is that of every lease without fencing: a consumer that stalls
past its lease (its messages are given back and processed again by another
consumer) and then commits can still produce the output twice ("zombie").
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bson
from pymongo.errors import BulkWriteError, DocumentTooLarge, WriteError

from minibatch.errors import InvalidMessage
from minibatch.store import mongodb_append as appending
from minibatch.store import mongodb_windows as window_store
from minibatch.store.mongodb_append import PENDING
from minibatch.store.records import AVAILABLE, CLAIMED, DONE, Doc, RecordId, utcnow

#: ``decision`` of a record whose output is (to be) published with its messages committed
COMMIT = 'commit'
#: ``decision`` of a record whose commit found no message held: its output is discarded
VOID = 'void'
#: seconds after which a commit record still open is finished by recovery (its consumer takes milliseconds)
OPEN_GRACE = 5.0
#: the fields that publish a staged message
PUBLISHED = {'state': AVAILABLE, 'processed': False}

BY_ID = [('_id', 1)]


def commit_messages(buffer: Any, name: str, token: str | None, ids: Sequence[RecordId] | None,
                    keep: bool) -> int:
    """Commit the messages of ``name`` held under ``token`` (those among ``ids``; all when None); the count."""
    query: dict[str, Any] = {'claim': token, 'state': CLAIMED}
    hint: Any = None
    if ids is None:
        query['stream'] = name
    else:
        if not ids:
            return 0
        query['_id'], hint = {'$in': list(ids)}, BY_ID
    if keep:
        return int(buffer.update_many(query, {'$set': {'state': DONE, 'done': utcnow()},
                                              '$unset': {'claim': '', 'lease': ''}}, hint=hint).modified_count)
    return int(buffer.delete_many(query, hint=hint).deleted_count)


def stage(source: str, target: str, docs: Sequence[Doc], batch: str, max_bson: int) -> list[Any]:
    """Encode ``docs`` (InvalidMessage before anything is written); the records, for step 1."""
    if isinstance(docs, dict) or not isinstance(target, str) or not target:
        raise InvalidMessage('output must be (stream name, list of dicts)')
    raw, _ = appending.encode(target, list(docs), {'processed': True, 'state': PENDING, 'attempts': 0,
                                                   'batch': batch, 'source': source}, max_bson)
    return raw


def publish(buffer: Any, target: str, batch: str) -> int:
    """Step 4: make the staged batch ``batch`` of ``target`` available (one update); how many."""
    return int(buffer.update_many({'stream': target, 'state': PENDING, 'batch': batch},
                                  {'$set': PUBLISHED}).modified_count)


def discard(buffer: Any, target: str, batch: str) -> int:
    """Delete the staged batch ``batch`` of ``target`` (still pending); how many."""
    return int(buffer.delete_many({'stream': target, 'state': PENDING, 'batch': batch}).deleted_count)


def decide(windows: Any, record: RecordId, decision: str) -> bool:
    """Settle the fate of commit record ``record``: True if it is (now) ``decision``, False if the other one."""
    other = VOID if decision == COMMIT else COMMIT
    return bool(windows.update_one({'_id': record, 'decision': {'$ne': other}},
                                   {'$set': {'decision': decision}}).matched_count)


def commit_with_output(buffer: Any, windows: Any, name: str, token: str | None, ids: Sequence[RecordId],
                       keep: bool, window_id: RecordId | None, data: list[Any] | None,
                       output: tuple[str, Sequence[Doc]], max_bson: int) -> tuple[int, RecordId]:
    """The four steps of the module's docstring; ``(committed, record id)``.

    ``data`` not None: write a new processed window record with it
    (``commit_window``); else mark ``window_id`` (or, without one or when it is
    missing, a new outbox record) as the commit point.
    """
    target, docs = output
    batch = token if token is not None else f'outbox-{bson.ObjectId()}'
    fields = {'output': target, 'batch': batch, 'keep': bool(keep), 'open': utcnow()}
    raw = stage(name, target, docs, batch, max_bson)
    if token is not None:
        # a retry of a commit that failed part-way (the store was briefly away): finish the earlier try
        # if it reached its commit point, else drop what it staged, so the output is never written twice
        earlier = windows.find_one({'stream': name, 'token': token, 'output': target, 'open': {'$exists': True}},
                                   {'_id': 1, 'outbox': 1})
        if earlier is not None:
            count = commit_messages(buffer, name, token, ids, keep)
            if decide(windows, earlier['_id'], COMMIT):
                publish(buffer, target, batch)
            _close(windows, earlier['_id'], bool(earlier.get('outbox')))
            return count, earlier['_id']
        discard(buffer, target, batch)
    record = None
    if data is not None:
        record = window_store.encode_window(name, data, None, token, max_bson, processed=True, extra=fields)
    elif window_id is None:
        record = window_store.encode_window(name, [], None, token, max_bson, processed=True,
                                            extra={**fields, 'outbox': True})
    # 1. stage
    _insert_pending(buffer, target, raw, batch)
    # 2. decide: one single-document write
    outbox_only = window_id is None and data is None
    if record is None:
        if windows.update_one({'_id': window_id},
                              {'$set': {'processed': True, 'token': token, **fields}}).matched_count == 0:
            # the window record is gone (removed by hand or by retention): a small record is the commit point
            record = window_store.encode_window(name, [], None, token, max_bson, processed=True,
                                                extra={**fields, 'outbox': True})
            outbox_only = True
    if record is not None:
        window_id = record[0]
        windows.insert_one(record[1])
    # 3. commit
    count = commit_messages(buffer, name, token, ids, keep)
    # 4. publish, unless none of the window's messages was ours any more (and nobody committed them for us)
    if count or not ids:
        publish(buffer, target, batch)
    elif decide(windows, window_id, VOID):
        discard(buffer, target, batch)
    _close(windows, window_id, outbox_only)
    return count, window_id


def _close(windows: Any, record: RecordId, outbox_only: bool) -> None:
    """The last step: the record is no longer open (:func:`finish_open` leaves it alone); an outbox-only one goes."""
    if outbox_only:
        windows.delete_one({'_id': record})
    else:
        windows.update_one({'_id': record}, {'$unset': {'open': ''}})


def finish_open(buffer: Any, windows: Any, name: str, before: Any) -> int:
    """Finish the commits with output of ``name`` whose record was opened before ``before`` and is still open.

    Their consumer wrote the commit point (step 2) and was killed before the
    end: decide ``'commit'`` (unless it voided the commit), commit the messages
    still held under the token, publish the batch, close the record. Safe while
    the consumer still runs (a slow one): the decision is taken once, and
    committing and publishing again change nothing. So a committed window's
    output appears within a few seconds of the crash, not after
    ``pending_timeout``. One read (of a sparse index) when none is open.
    """
    finished = 0
    for record in list(windows.find({'stream': name, 'open': {'$lt': before}},
                                    {'token': 1, 'output': 1, 'batch': 1, 'keep': 1, 'outbox': 1})):
        target, batch = record.get('output'), record.get('batch') or record.get('token')
        if decide(windows, record['_id'], COMMIT):
            commit_messages(buffer, name, record.get('token'), None, bool(record.get('keep')))
            publish(buffer, target, batch)
        else:
            discard(buffer, target, batch)
        _close(windows, record['_id'], bool(record.get('outbox')))
        finished += 1
    return finished


def _insert_pending(buffer: Any, target: str, raw: Sequence[Any], batch: str) -> None:
    """Step 1: insert the encoded batch pending; a write the server refuses removes it and raises InvalidMessage."""
    if not raw:
        return
    try:
        buffer.insert_many(raw, ordered=True)
    except (DocumentTooLarge, WriteError, BulkWriteError) as exc:
        discard(buffer, target, batch)  # what was written of the batch is invisible: remove it now
        raise InvalidMessage(f'MongoDB refused the output of a commit: {exc}; nothing was written') from exc
    # other errors (a lost connection) leave what was written pending: settle_abandoned deletes it


def recover(buffer: Any, windows: Any, name: str, tokens: Sequence[str]) -> set[str]:
    """Recovery after step 2: commit the lapsed claims of ``name`` among ``tokens`` that have a commit record.

    For each processed record with output among the claims ``tokens`` (whose
    leases lapsed), decide ``'commit'`` (unless the consumer voided it), commit
    the messages still held under its token, and publish its batch. Returns the
    tokens so committed, which the caller must not give back. One read when
    none has a record.
    """
    committed: set[str] = set()
    records = windows.find({'stream': name, 'processed': True, 'token': {'$in': list(tokens)},
                            'output': {'$exists': True}}, {'token': 1, 'output': 1, 'batch': 1, 'keep': 1,
                                                           'outbox': 1})
    for record in list(records):
        if not decide(windows, record['_id'], COMMIT):
            continue
        commit_messages(buffer, name, record['token'], None, bool(record.get('keep')))
        publish(buffer, record['output'], record.get('batch') or record['token'])
        _close(windows, record['_id'], bool(record.get('outbox')))
        committed.add(record['token'])
    return committed


def settle_decision(windows: Any, target: str, batch: Any, source: str | None) -> bool:
    """For ``settle_abandoned``: True if the abandoned batch ``batch`` of ``target`` is to be published.

    It is when ``source`` (the input stream) has a processed record committing
    it (recovery after step 3); False (delete it) when there is none, or the
    commit was voided.
    """
    if source is None:
        return False
    record = windows.find_one({'stream': source, 'processed': True, 'batch': batch, 'output': target}, {'_id': 1})
    return record is not None and decide(windows, record['_id'], COMMIT)


def forget_outbox_records(buffer: Any, windows: Any, name: str, before: Any) -> int:
    """Remove the outbox-only records of ``name`` created before ``before`` that nothing needs any more.

    A consumer killed after step 4 leaves its small record: it is removed once
    no message is held under its token and its batch is not pending. One read
    when there are none.
    """
    removed = 0
    for record in list(windows.find({'stream': name, 'outbox': True, 'created': {'$lt': before}},
                                    {'token': 1, 'batch': 1, 'output': 1})):
        if buffer.find_one({'stream': name, 'state': CLAIMED, 'claim': record.get('token')}, {'_id': 1}):
            continue
        if buffer.find_one({'stream': record.get('output'), 'state': PENDING, 'batch': record.get('batch')},
                           {'_id': 1}):
            continue
        removed += windows.delete_one({'_id': record['_id']}).deleted_count
    return removed

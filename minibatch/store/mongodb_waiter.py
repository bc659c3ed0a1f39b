"""Push wake-ups for consumers of the MongoDB store, from a change stream.

:class:`ChangeStreamWaiter` is what :meth:`MongoStore.waiter()
<minibatch.store.mongodb.MongoStore.waiter>` returns: a thread watches the
buffer collection for inserts into one stream and wakes the consumer waiting
in :meth:`~ChangeStreamWaiter.wait`.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from minibatch.errors import StoreUnavailable
from minibatch.store.base import Waiter

if TYPE_CHECKING:  # the store imports this module; the waiter only needs its type
    from minibatch.store.mongodb import MongoStore

# the store's logger, as before the waiter had a module of its own: users filter on that name
logger = logging.getLogger('minibatch.store.mongodb')


class ChangeStreamWaiter(Waiter):
    """Wakes on inserts into the stream, via a MongoDB change stream watched in a thread.

    Servers without change streams (a standalone mongod) make the thread exit
    after one try; ``wait()`` then just sleeps, and the consumer polls.
    """
    #: how long the server holds each getMore of the change stream (an event ends it at once):
    #: bounds the queries of an idle consumer to one per this period
    MAX_AWAIT_MS = 3000
    #: seconds before asking again when the server ended a wait early with nothing for us (see _watch):
    #: at most this much later to wake, while other writes go on in the collection
    EARLY_PAUSE = 0.05
    # push wake-ups until the server turns out to have no change streams (see _watch);
    # appends only: a retry or requeue coming due needs the consumer's own polls
    supported = True
    sees_all_changes = False
    store: MongoStore

    def __init__(self, store: MongoStore, stream: str) -> None:
        super().__init__(store, stream)
        self._event = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f'minibatch-watch-{stream}', daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        # only the event's id comes back: the message itself is not needed, and one the driver
        # cannot decode (written by another program) must not end the watch
        pipeline = [{'$match': {'operationType': 'insert', 'fullDocument.stream': self.stream}},
                    {'$project': {'_id': 1}}]
        while not self._closed.is_set():
            try:
                with self.store._buffer().watch(pipeline, max_await_time_ms=self.MAX_AWAIT_MS) as changes:
                    while not self._closed.is_set():
                        asked = time.monotonic()
                        if changes.try_next() is not None:
                            self._event.set()
                        elif time.monotonic() - asked < self.MAX_AWAIT_MS / 2000:
                            # the server ended the wait for a change we do not watch (the MongoDB-wire test
                            # server does, for every write to the collection, the consumer's own included):
                            # ask again a little later, not at once, or a busy collection keeps the server
                            # answering this thread (an append meanwhile waits in the change stream)
                            self._closed.wait(self.EARLY_PAUSE)
            except OperationFailure as exc:
                logger.info('minibatch: change streams unavailable on %s (%s); polling instead',
                            self.store.describe(), exc)
                self.supported = False
                return
            except (ConnectionFailure, PyMongoError, StoreUnavailable) as exc:
                logger.debug('minibatch: change stream interrupted (%s); retrying', exc)
                self._event.set()  # something may have been missed: let the consumer look
                self._closed.wait(1.0)

    def wait(self, timeout: float) -> bool:
        if not self.supported:
            return super().wait(timeout)
        woke = self._event.wait(timeout)
        self._event.clear()
        return woke

    def close(self) -> None:
        self._closed.set()

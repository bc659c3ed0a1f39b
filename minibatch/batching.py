"""Batched appends: a partial batch is written after a pause, and at interpreter exit.

``mb.stream(name, batchsize=N)`` collects appends and writes them N at a
time. This module makes sure a batch never waits forever: a daemon thread per
batching stream flushes it ``FLUSH_INTERVAL`` seconds after the last append,
and an exit hook flushes every batching stream, since an unflushed batch at
exit would be lost without a word. It works on any object with ``flush()``,
``name`` and a ``_batch`` list (the API's ``Stream``).
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Any

logger = logging.getLogger('minibatch.models')

#: seconds after which a partly filled append batch is written anyway
FLUSH_INTERVAL = 0.5

_batching_streams: weakref.WeakSet[Any] = weakref.WeakSet()


def register(stream: Any) -> None:
    """Flush ``stream`` at interpreter exit (held weakly: a stream that is gone needs nothing)."""
    _batching_streams.add(stream)


@atexit.register
def _flush_all_at_exit() -> None:
    for stream in list(_batching_streams):
        try:
            stream.flush()
        except Exception:
            logger.exception('minibatch: could not flush stream %r at exit', stream.name)


def start_flusher(stream: Any) -> threading.Thread:
    """Start the daemon thread that writes ``stream``'s partial batch every ``FLUSH_INTERVAL`` seconds.

    The thread ends once the batch is empty (the next partial batch starts a
    new one) or the stream is garbage-collected; a failed flush is logged and
    tried again next time. Returns the thread.
    """
    ref = weakref.ref(stream)

    def run() -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            current = ref()
            if current is None:
                return
            try:
                current.flush()
            except Exception:
                logger.exception('minibatch: background flush of stream %r failed; will retry', current.name)
            if not current._batch:
                current._flusher = None
                return
            del current

    thread = threading.Thread(target=run, name=f'minibatch-flush-{stream.name}', daemon=True)
    thread.start()
    return thread

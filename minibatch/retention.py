"""Retention: a stream's ``max_age`` removes old messages, processed or not, and says so.

``Stream.get_or_create(name, max_age=...)`` (as in minibatch 0.6) starts one
background housekeeping thread per stream and store in the process that set
it; it runs even when no consumer does. Consumers of a stream with a
``max_age`` housekeep too, so retention holds while any of them runs.
What is removed before it was processed is counted in the store (``expired``
in ``stream.stats()`` and ``minibatch status``) and logged each round: a
retention limit is a choice to drop data, never a silent one.
"""
from __future__ import annotations

import datetime
import logging
import threading

from minibatch.errors import ConfigurationError
from minibatch.store.base import Store

logger = logging.getLogger('minibatch.housekeeping')

#: the housekeeping thread runs every max_age / ROUNDS_PER_AGE seconds, within these bounds:
#: a message then lives at most about (1 + 1/ROUNDS_PER_AGE) * max_age
ROUNDS_PER_AGE = 2
MIN_PERIOD = 0.05
MAX_PERIOD = 60.0


def max_age_seconds(max_age: float | dict[str, float] | None) -> float | None:
    """``max_age`` as seconds: a number of seconds, or a dict of ``datetime.timedelta`` arguments.

    None stays None (no retention limit).

    :raises ConfigurationError: not a positive number or such a dict
    """
    if max_age is None:
        return None
    if isinstance(max_age, dict):
        try:
            seconds = datetime.timedelta(**max_age).total_seconds()
        except TypeError as exc:
            raise ConfigurationError(f'max_age as a dict takes datetime.timedelta arguments such as '
                                     f'{{"minutes": 5}}; got {max_age!r} ({exc})') from None
    elif isinstance(max_age, (int, float)) and not isinstance(max_age, bool):
        seconds = float(max_age)
    else:
        raise ConfigurationError(f'max_age must be seconds (a number) or a dict like {{"minutes": 5}}, '
                                 f'got {max_age!r}')
    if seconds <= 0:
        raise ConfigurationError(f'max_age must be more than 0 seconds, got {max_age!r} '
                                 '(use None for no retention limit)')
    return seconds


def expire(store: Store, name: str, max_age: float) -> int:
    """One housekeeping round on stream ``name``: remove what is older than ``max_age`` seconds.

    Removes data (see ``Store.housekeep``); logs a warning when messages
    were removed unprocessed. Returns the number of records removed.
    """
    removed, expired = store.housekeep(name, max_age)
    removed, expired = int(removed), int(expired)
    if expired:
        logger.warning('minibatch: max_age %gs removed %d unprocessed messages of stream %r '
                       '(stream.stats()["expired"] counts them)', max_age, expired, name)
    elif removed:
        logger.info('minibatch: max_age %gs removed %d processed records of stream %r', max_age, removed, name)
    return removed


class Housekeeper:
    """The background thread applying one stream's ``max_age`` in this process."""

    def __init__(self, store: Store, name: str, max_age: float):
        self.store = store
        self.name = name
        self.max_age = max_age
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f'minibatch-housekeeping-{name}', daemon=True)

    def period(self) -> float:
        return min(max(self.max_age / ROUNDS_PER_AGE, MIN_PERIOD), MAX_PERIOD)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                expire(self.store, self.name, self.max_age)
            except Exception as exc:  # the store is away for now: try again next round
                logger.warning('minibatch: housekeeping of stream %r failed: %s', self.name, exc)
            self._stop.wait(self.period())
        logger.debug('minibatch: housekeeping of stream %r stopped', self.name)

    def stop(self) -> None:
        self._stop.set()


_housekeepers: dict[tuple[int, str], Housekeeper] = {}
_lock = threading.Lock()


def start(store: Store, name: str, max_age: float) -> Housekeeper:
    """Run housekeeping for ``name`` on ``store`` every so often; one thread per stream and store.

    Starting it again with another ``max_age`` changes the limit of the running thread.
    """
    key = (id(store), name)
    with _lock:
        keeper = _housekeepers.get(key)
        if keeper is not None and keeper.thread.is_alive() and not keeper._stop.is_set():
            keeper.max_age = max_age
            return keeper
        keeper = _housekeepers[key] = Housekeeper(store, name, max_age)
        keeper.thread.start()
        return keeper


def stop(store: Store, name: str) -> bool:
    """Stop the housekeeping thread of ``name`` on ``store`` in this process; False if none ran."""
    with _lock:
        keeper = _housekeepers.pop((id(store), name), None)
    if keeper is None:
        return False
    keeper.stop()
    return True


def running(store: Store, name: str) -> bool:
    """True while this process runs housekeeping for ``name`` on ``store``."""
    keeper = _housekeepers.get((id(store), name))
    return keeper is not None and keeper.thread.is_alive() and not keeper._stop.is_set()

"""Choosing a store from a URL.

Precedence: ``url=`` argument > ``MINIBATCH_URL`` > ``MINIBATCH_MONGO_URL`` >
``MONGO_URL`` > the embedded default, a SQLite file in the per-user data
directory (``$XDG_DATA_HOME/minibatch/minibatch.db``, usually
``~/.local/share/minibatch/minibatch.db``; ``MINIBATCH_HOME`` overrides the folder).

Stores are imported lazily, so a missing optional driver only matters when
its scheme is used, and then the error names the pip extra to install.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any

from minibatch.errors import MinibatchError, MissingDependencyError, UnknownStoreError
from minibatch.store.base import Message, Store, StreamInfo, Waiter, WindowRecord  # noqa: F401 (re-export)
from minibatch.store.redaction import redact_text, redact_url

logger = logging.getLogger(__name__)

#: scheme -> (module, class, pip extra that installs its driver)
STORES: dict[str, tuple[str, str, str | None]] = {
    'mongodb': ('minibatch.store.mongodb', 'MongoStore', 'mongodb'),
    'mongodb+srv': ('minibatch.store.mongodb', 'MongoStore', 'mongodb'),
    'sqlite': ('minibatch.store.sqlite', 'SQLiteStore', None),
}

_stores: dict[tuple[int, str, tuple[tuple[str, str], ...]], Store] = {}
_lock = threading.Lock()


def default_sqlite_path() -> str:
    """The embedded store's database file when no URL is configured."""
    home = os.environ.get('MINIBATCH_HOME')
    if not home:
        data_home = os.environ.get('XDG_DATA_HOME') or os.path.join(os.path.expanduser('~'), '.local', 'share')
        home = os.path.join(data_home, 'minibatch')
    return os.path.join(home, 'minibatch.db')


def resolve_url(url: str | None = None) -> str:
    """Return the store URL to use: ``url`` if given, else the environment, else the embedded default."""
    for candidate in (url, os.environ.get('MINIBATCH_URL'), os.environ.get('MINIBATCH_MONGO_URL'),
                      os.environ.get('MONGO_URL')):
        if candidate:
            return candidate
    return 'sqlite:///' + default_sqlite_path()


def scheme_of(url: str) -> str:
    return url.split('://', 1)[0].lower() if '://' in url else ''


def store_class(url: str) -> type[Store]:
    """Return the Store class serving ``url``; raise UnknownStoreError / MissingDependencyError."""
    scheme = scheme_of(url)
    if scheme not in STORES:
        known = ', '.join(f'{s}://' for s in STORES)
        raise UnknownStoreError(
            f'no minibatch store for the URL scheme {scheme + "://" if scheme else repr(redact_url(url))}; '
            f'known schemes: {known}. Example: mongodb://localhost:27017/minibatch or sqlite:////tmp/mb.db')
    module_name, class_name, extra = STORES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(
            f'the {scheme}:// store needs a driver that is not installed ({exc}); '
            f'install it with: pip install "minibatch[{extra}]"') from exc
    cls: type[Store] = getattr(module, class_name)
    return cls


def get_store(url: str | None = None, **options: Any) -> Store:
    """Return the store for ``url`` (see :func:`resolve_url`), shared per process and options.

    A process forked after a store was opened gets its own store object, so
    connections are never shared across processes.
    """
    resolved = resolve_url(url)
    key = (os.getpid(), resolved, tuple(sorted((k, repr(v)) for k, v in options.items())))
    with _lock:
        store = _stores.get(key)
        if store is None:
            try:
                store = store_class(resolved)(resolved, **options)
            except MinibatchError as exc:
                # every store redacts its URL; this makes sure no secret of it slips through in a detail
                text = str(exc)
                if redact_text(text, resolved) != text:
                    raise type(exc)(redact_text(text, resolved)) from None
                raise
            logger.info('minibatch store: %s', store.describe())
            _stores[key] = store
        return store


def reset_stores() -> None:
    """Close and forget every store of this process (tests, reconfiguration)."""
    with _lock:
        for store in _stores.values():
            try:
                store.close()
            except Exception:  # closing is best effort; a dead connection must not stop the reset
                logger.debug('closing %s failed', store, exc_info=True)
        _stores.clear()

"""How the MongoDB store connects: one client per URL and options, under a mongoengine alias.

:class:`MongoConnection` is the connecting half of
:class:`~minibatch.store.mongodb.MongoStore`: it reads the URL (database, the
driver options minibatch sets unless the URL does), registers the client as a
mongoengine connection alias, reconnects after a ``close()``, a
``mongoengine.disconnect()`` or a fork, and describes itself without the
password. The store's queries live in :mod:`minibatch.store.mongodb`.

The aliases are process-wide state shared by every store of the process; this
module owns it (``_aliases``, ``_alias_pids``, under ``_alias_lock``) so that
the rules of who holds alias ``'minibatch'`` are in one place.

:func:`_translate_errors` turns "no server within the timeout" into
:class:`~minibatch.errors.StoreUnavailable` for the store's methods.
"""
from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit

import mongoengine.connection as me_connection
import pymongo
from pymongo import uri_parser

from minibatch.errors import ConfigurationError, StoreUnavailable
from minibatch.store.base import Store
from minibatch.store.redaction import redact_text, redact_url

DEFAULT_DATABASE = 'minibatch'
#: fail within this time when the server cannot be reached, instead of pymongo's 30 s
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 5000
ALIAS = 'minibatch'

AliasKey = tuple[str, tuple[tuple[str, str], ...]]
_aliases: dict[AliasKey, str] = {}   # (url, options) -> mongoengine alias used for it
_alias_pids: dict[str, int] = {}     # alias -> pid that opened its client
_alias_lock = threading.Lock()
_private_aliases = itertools.count(1)


def _alias_for(key: AliasKey) -> str:
    """The alias of the client for ``key`` (call under ``_alias_lock``).

    Alias ``'minibatch'``, the one the Documents use (``Buffer.objects``), is
    taken by any client that connects while no connection is registered under
    it: the first store of the process, and again after the store holding it
    closed or the user called ``mongoengine.disconnect(alias='minibatch')``.
    Other clients get a private alias.
    """
    alias = _aliases.get(key)
    if alias != ALIAS and ALIAS not in me_connection._connection_settings:
        for other, other_alias in list(_aliases.items()):
            if other_alias == ALIAS:
                del _aliases[other]  # its holder disconnected: it reconnects under a private alias
        if alias is not None and alias in me_connection._connection_settings:
            me_connection.disconnect(alias)  # our old private client, replaced by the shared one
        alias = _aliases[key] = ALIAS
    elif alias is None:
        alias = _aliases[key] = f'{ALIAS}-{next(_private_aliases)}'
    return alias


#: ``url`` without its password and secret query values (see :func:`minibatch.store.redaction.redact_url`)
redact = redact_url

#: MongoDB's error code for a failed authentication (wrong user or password)
AUTHENTICATION_FAILED = 18
#: characters MongoDB does not allow in a database name
_BAD_DATABASE_CHARS = '/\\. "$\0'
#: options only a mongodb+srv:// URL may carry (left out when checking its syntax offline)
_SRV_OPTIONS = ('srvservicename', 'srvmaxhosts')


def _unavailable(store: MongoConnection, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f'cannot reach MongoDB at {redact(store.url)} '
                            f'(waited {store.timeout_ms / 1000:g} s for a server): {redact_text(exc, store.url)}')


def _auth_failed(store: MongoConnection, exc: pymongo.errors.OperationFailure) -> StoreUnavailable:
    reason = (exc.details or {}).get('errmsg') or str(exc).partition(', full error:')[0]
    return StoreUnavailable(f'cannot log in to MongoDB at {redact(store.url)}: '
                            f'{redact_text(reason, store.url)} (check the user name and password)')


def _bad_url(url: str, exc: BaseException) -> ConfigurationError:
    return ConfigurationError(f'bad MongoDB URL {redact(url)!r}: {redact_text(exc, url)}')


def check_url(url: str, database: str) -> None:
    """Raise ConfigurationError (with the URL redacted) unless pymongo accepts ``url``; no network.

    A mongodb+srv:// URL is checked as the mongodb:// URL it names (its DNS
    lookup happens when connecting).
    """
    checked = url
    if url.lower().startswith('mongodb+srv://'):
        base, _, query = url[len('mongodb+srv://'):].partition('?')
        kept = [p for p in query.split('&') if p and p.partition('=')[0].lower() not in _SRV_OPTIONS]
        checked = 'mongodb://' + base + ('?' + '&'.join(kept) if kept else '')
    try:
        uri_parser.parse_uri(checked, validate=True, warn=False)
    except (pymongo.errors.PyMongoError, ValueError, TypeError) as exc:
        raise _bad_url(url, exc) from None
    bad = sorted({c for c in database if c in _BAD_DATABASE_CHARS})
    if bad or len(database.encode()) > 63:
        why = (f'it contains {", ".join(repr(c) for c in bad)}' if bad else 'it is longer than 63 bytes')
        raise ConfigurationError(f'bad MongoDB database name {database!r} in {redact(url)!r}: {why}')


_S = TypeVar('_S', bound='MongoConnection')
_P = ParamSpec('_P')
_R = TypeVar('_R')


def _translate_errors(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Turn "no server" and "authentication failed" into StoreUnavailable; other driver errors pass unchanged."""
    @functools.wraps(method)
    def wrapper(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except pymongo.errors.ServerSelectionTimeoutError as exc:
            raise _unavailable(self, exc) from exc
        except pymongo.errors.OperationFailure as exc:
            if exc.code != AUTHENTICATION_FAILED:
                raise
            raise _auth_failed(self, exc) from exc
    return wrapper


class MongoConnection(Store):
    """A store on MongoDB, as far as connecting goes; :class:`~minibatch.store.mongodb.MongoStore` adds the queries.

    Configuring opens no connection: :meth:`connect` (called by :meth:`_db`
    on first use) does, and :meth:`close` gives the client up again.
    """

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parts = urlsplit(url)
        self.database = parts.path.lstrip('/') or DEFAULT_DATABASE
        check_url(url, self.database)
        self.client_options: dict[str, Any] = dict(options)
        # the URL's own options win over our defaults (a keyword argument would override the URL)
        in_url = {key.lower(): value for key, value in parse_qsl(parts.query)}
        if 'serverselectiontimeoutms' not in in_url:
            self.client_options.setdefault('serverSelectionTimeoutMS', DEFAULT_SERVER_SELECTION_TIMEOUT_MS)
        if 'uuidrepresentation' not in in_url:
            self.client_options.setdefault('uuidRepresentation', 'standard')
        if parts.username and 'authsource' not in in_url and not parts.scheme.endswith('+srv'):
            # as minibatch 0.6: users authenticate against 'admin' unless the URL says otherwise
            # (pymongo alone would use the URL's database); +srv URLs get it from DNS
            self.client_options.setdefault('authSource', 'admin')
        self.timeout_ms = int(self.client_options.get('serverSelectionTimeoutMS')
                              or in_url.get('serverselectiontimeoutms') or DEFAULT_SERVER_SELECTION_TIMEOUT_MS)
        # one client per URL and options: options given here must reach the driver
        self._alias_key: AliasKey = (url, tuple(sorted((k, repr(v)) for k, v in self.client_options.items())))
        self.alias: str | None = None  # chosen when connecting (see _alias_for)

    def connect(self) -> Any:
        """Register the mongoengine alias (again, after a disconnect or a fork) and return the database."""
        pid = os.getpid()
        with _alias_lock:
            self.alias = _alias_for(self._alias_key)  # a new one if close() gave it up
            if _alias_pids.get(self.alias) not in (None, pid):
                # inherited from the parent process: drop the references without
                # closing, since closing would end sessions on sockets the parent still uses
                me_connection._connections.pop(self.alias, None)
                me_connection._dbs.pop(self.alias, None)
                me_connection._connection_settings.pop(self.alias, None)
                _reset_document_collections()
            if self.alias not in me_connection._connection_settings:
                me_connection.register_connection(self.alias, host=self.url, db=self.database,
                                                  **self.client_options)
                _reset_document_collections()
            _alias_pids[self.alias] = pid
            return me_connection.get_db(self.alias)

    def _db(self) -> Any:
        """The database, connecting first unless this process's client for our URL is still registered."""
        if (self.alias is not None and _alias_pids.get(self.alias) == os.getpid()
                and self.alias in me_connection._dbs and _aliases.get(self._alias_key) == self.alias):
            return me_connection._dbs[self.alias]
        return self.connect()

    def close(self) -> None:
        with _alias_lock:
            if self.alias is not None and _alias_pids.get(self.alias) == os.getpid():
                me_connection.disconnect(self.alias)
                _alias_pids.pop(self.alias, None)
                if _aliases.get(self._alias_key) == self.alias:
                    del _aliases[self._alias_key]  # frees 'minibatch' for the next store that connects

    def describe(self) -> str:
        return f'{redact(self.url)} (MongoDB, database {self.database!r})'


def _reset_document_collections() -> None:
    # mongoengine caches collection objects per Document class; after a
    # reconnect they would point at the old client. The Documents on our alias
    # (minibatch.models' and any of the user's) are found in mongoengine's
    # registry, so the store need not import the models (layers point one way).
    from mongoengine.base import _document_registry
    for document in list(_document_registry.values()):
        if getattr(document, '_meta', {}).get('db_alias') == ALIAS and hasattr(document, '_collection'):
            document._collection = None

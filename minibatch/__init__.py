"""minibatch: Python stream processing for humans.

Producers append dicts to a named, persistent stream; functions decorated
with ``@streaming`` receive them in windows::

    import minibatch as mb
    mb.stream('test').append({'x': 1})

    @mb.streaming('test', size=2)
    def consume(window):
        print(window.data)
"""
import importlib
import logging

from minibatch import bindings
from minibatch.errors import (ConfigurationError, InvalidMessage, InvalidWindowSpec, MinibatchError,
                              MissingDependencyError, NotSupportedByStore, SinkError, StoreUnavailable,
                              UnknownStoreError)
from minibatch.consumer import make_emitter, streaming
from minibatch.window import CountWindow, FixedTimeWindow, RelaxedTimeWindow, WindowEmitter
from minibatch.eventtime import EventTimeWindow, EventWindow, hopping, session, tumbling
from minibatch.store import get_store, resolve_url
from minibatch.legacy import IntegrityError, authenticated_url, patch_mongoengine, waitForConnection

__version__ = '1.0.0.dev0'
#: minibatch 0.6 exported the version under this name too
version = __version__
logger = logging.getLogger(__name__)

#: the names of minibatch.models, imported on first use: they need mongoengine, which
#: a program on the embedded store may never need (``import minibatch`` stays fast)
_MODELS = ('Buffer', 'Stream', 'Window')


def _models():
    return importlib.import_module('minibatch.models')


bindings.bind_loader(_models)


def __getattr__(name):
    if name in _MODELS:
        return getattr(_models(), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

__all__ = [
    # producing and consuming
    'stream', 'streaming', 'make_emitter', 'connectdb',
    # the data model
    'Stream', 'Buffer', 'Window', 'EventWindow',
    # window strategies
    'WindowEmitter', 'CountWindow', 'FixedTimeWindow', 'RelaxedTimeWindow',
    # keyed event-time windows: @streaming('s', window=tumbling(60), key='sensor', time='ts')
    'EventTimeWindow', 'tumbling', 'hopping', 'session',
    # stores
    'get_store', 'resolve_url',
    # kept from minibatch 0.6 (see docs/compatibility.rst)
    'authenticated_url', 'IntegrityError', 'patch_mongoengine', 'waitForConnection', 'version',
    # errors
    'MinibatchError', 'InvalidMessage', 'InvalidWindowSpec', 'ConfigurationError', 'UnknownStoreError',
    'MissingDependencyError', 'StoreUnavailable', 'NotSupportedByStore', 'SinkError',
]


def stream(name, fn=None, url=None, interval=None, batchsize=1, max_age=None, **kwargs):
    """Return the stream ``name``, creating it if needed (see :meth:`Stream.get_or_create`).

    As in minibatch 0.6, ``mb.stream(name, fn, size=N, ...)`` with a callable
    ``fn`` consumes the stream with it instead: the same as
    ``streaming(name, size=N, ...)(fn)``. A string in place of ``fn`` is
    taken as the ``url``.
    """
    if callable(fn):
        return streaming(name, url=url, interval=interval, **kwargs)(fn)
    if isinstance(fn, str) and url is None:
        fn, url = None, fn
    if fn is not None:
        raise ConfigurationError(f'mb.stream(name, fn): fn must be a function to consume the stream with, '
                                 f'got {fn!r}')
    return _models().Stream.get_or_create(name, url=url, interval=interval, batchsize=batchsize, max_age=max_age,
                                **kwargs)


def connectdb(url=None, dbname=None, alias=None, authSource='admin', fast_insert=True, **kwargs):
    """Connect to the store at ``url`` and return its database, as minibatch 0.6 did.

    ``url`` defaults to ``MINIBATCH_URL`` / ``MINIBATCH_MONGO_URL`` /
    ``MONGO_URL``. For MongoDB the result is a pymongo ``Database``, with
    the mongoengine alias ``'minibatch'`` connected (``Buffer.objects`` then
    works); ``dbname`` picks another database than the URL's, and
    ``authSource`` (default ``'admin'``, as in 0.6) is added to a URL that
    names none. ``alias`` other than ``'minibatch'`` is refused: the
    Documents live on that alias. For the embedded store there is nothing to
    connect; the store object is returned.

    :raises minibatch.errors.StoreUnavailable: the server cannot be reached in time
    """
    if alias not in (None, 'minibatch'):
        raise ConfigurationError(f"connectdb(alias={alias!r}): minibatch's documents use the alias 'minibatch'; "
                                 'connect other aliases with mongoengine.connect()')
    url = resolve_url(url)
    if url.startswith('mongodb'):
        url = _with_database(url, dbname)
        if authSource and authSource != 'admin':
            # 'admin' is the MongoDB store's own default for a URL with credentials
            kwargs['authSource'] = authSource
    # fast_insert: a 0.6 option that had no effect there either
    store = get_store(url, **kwargs)
    connect = getattr(store, 'connect', None)
    return connect() if connect else store


def _with_database(url, dbname):
    """``url`` with its database path replaced by ``dbname`` (when given), the query string kept."""
    if not dbname:
        return url
    scheme, _, rest = url.partition('://')
    hosts, _, path = rest.partition('/')
    query = path.partition('?')[2]
    return f'{scheme}://{hosts}/{dbname}' + (f'?{query}' if query else '')

"""minibatch: Python stream processing for humans.

Producers append dicts to a named, persistent stream; functions decorated
with ``@streaming`` receive them in windows::

    import minibatch as mb
    mb.stream('test').append({'x': 1})

    @mb.streaming('test', size=2)
    def consume(window):
        print(window.data)
"""
from minibatch.errors import (ConfigurationError, InvalidMessage, InvalidWindowSpec, MinibatchError,
                              MissingDependencyError, NotSupportedByStore, SinkError, StoreUnavailable,
                              UnknownStoreError)
from minibatch.models import Buffer, Stream, Window
from minibatch.consumer import make_emitter, streaming
from minibatch.window import CountWindow, FixedTimeWindow, RelaxedTimeWindow, WindowEmitter
from minibatch.store import get_store, resolve_url

__version__ = '1.0.0.dev0'

__all__ = [
    # producing and consuming
    'stream', 'streaming', 'make_emitter', 'connectdb',
    # the data model
    'Stream', 'Buffer', 'Window',
    # window strategies
    'WindowEmitter', 'CountWindow', 'FixedTimeWindow', 'RelaxedTimeWindow',
    # stores
    'get_store', 'resolve_url',
    # errors
    'MinibatchError', 'InvalidMessage', 'InvalidWindowSpec', 'ConfigurationError', 'UnknownStoreError',
    'MissingDependencyError', 'StoreUnavailable', 'NotSupportedByStore', 'SinkError',
]


def stream(name, url=None, interval=None, batchsize=1, max_age=None, **cnx_kwargs):
    """Return the stream ``name``, creating it if needed (see :meth:`Stream.get_or_create`)."""
    return Stream.get_or_create(name, url=url, interval=interval, batchsize=batchsize, max_age=max_age,
                                **cnx_kwargs)


def connectdb(url=None, **kwargs):
    """Connect the mongoengine alias ``'minibatch'`` to MongoDB at ``url`` and return the database.

    ``url`` defaults to ``MINIBATCH_URL`` / ``MINIBATCH_MONGO_URL`` / ``MONGO_URL``.
    For the embedded store there is nothing to connect; the store object is returned.
    """
    store = get_store(url, **kwargs)
    connect = getattr(store, 'connect', None)
    return connect() if connect else store

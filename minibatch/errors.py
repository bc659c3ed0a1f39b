"""Exceptions raised by minibatch.

Every exception derives from :class:`MinibatchError`, so ``except MinibatchError``
catches anything the library raises on purpose. Where a built-in exception type
already says what went wrong (``TypeError`` for a message that is not a dict,
``ValueError`` for a bad window size), the minibatch exception derives from it
as well, so code written against the built-in types keeps working.
"""
import importlib
from types import ModuleType


class MinibatchError(Exception):
    """Base class of every exception minibatch raises on purpose."""


class InvalidMessage(MinibatchError, TypeError):
    """A message is not a dict, or holds a value the store cannot serialise."""


class InvalidWindowSpec(MinibatchError, ValueError):
    """The window arguments of @streaming / make_emitter are inconsistent or out of range."""


class ConfigurationError(MinibatchError, ValueError):
    """A store URL, option or keyword argument is not valid."""


class UnknownStoreError(ConfigurationError):
    """The URL scheme does not name a known store."""


class MissingDependencyError(MinibatchError, ImportError):
    """An optional driver is not installed; the message names the pip extra to install."""


class StoreUnavailable(MinibatchError, ConnectionError):
    """The store could not be reached within its timeout; the message shows the URL."""


class StreamNotFound(MinibatchError, LookupError):
    """The stream does not exist (it was never created, or it was deleted)."""


class NotSupportedByStore(MinibatchError, NotImplementedError):
    """The operation exists only on another store (e.g. mongoengine querysets need MongoDB)."""


class SinkError(MinibatchError, ConnectionError):
    """A sink could not deliver a window's result; the window fails, is retried, then dead-lettered."""


def require(module: str, extra: str) -> ModuleType:
    """Import and return the optional driver ``module``, or raise MissingDependencyError naming the pip extra.

    Lives here, at the bottom of the layers, so that every layer can ask for
    an optional driver the same way.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install 'minibatch[{extra}]'") from exc

"""What every ready-made source and every ready-made sink shares.

A source is any object with ``stream(stream)`` (and, to be stoppable,
``cancel()``); :meth:`minibatch.Stream.attach` runs it in a thread. The
integrations in :mod:`minibatch.contrib` subclass :class:`Source` so that they
all behave the same way when the outside system misbehaves:

- a failure (broker gone, connection refused) logs one line, waits with an
  increasing backoff and connects again, until ``cancel()``;
- a payload that is not a JSON object is stored in the stream's dead letters
  (:meth:`minibatch.Stream.reject`) with the reason, never dropped.

A sink is any object with ``put(data)``. The ready-made sinks subclass
:class:`Sink`, so that they all take the same inputs (a dict is one message, a
list or tuple is its items), refuse a bad item before anything is written, and
fail with a :class:`~minibatch.errors.SinkError` the consumer retries.
"""
import abc
import base64
import json
import logging
import threading
from typing import Any

from minibatch.errors import InvalidMessage, MinibatchError, SinkError, require  # noqa: F401 (require: re-exported)

logger = logging.getLogger('minibatch.contrib')


class Source:
    """Base class of the ready-made sources.

    Subclasses implement :meth:`run`, which connects, appends messages until
    :attr:`cancelled` is set, and returns (or raises on a failure). ``stream()``
    calls ``run()`` again after a failure, waiting ``retry_delay`` seconds,
    doubled on each failure in a row up to ``max_retry_delay``.
    """
    retry_delay = 0.5
    max_retry_delay = 30.0

    def __init__(self):
        self._cancelled = threading.Event()
        self.failures = 0  # failures in a row; 0 once run() has made progress again
        self.last_error = None
        #: set by subclasses while connected and receiving; for health checks and tests
        self.ready = threading.Event()
        #: set when ``stream()`` has returned: nothing more is appended
        self.stopped = threading.Event()

    # -- the protocol Stream.attach() uses -----------------------------------
    def stream(self, stream):
        """Feed ``stream`` until :meth:`cancel`; survives failures of the outside system."""
        self.stopped.clear()
        try:
            self._feed(stream)
        finally:
            self.ready.clear()
            self.stopped.set()

    def _feed(self, stream):
        delay = self.retry_delay
        while not self._cancelled.is_set():
            try:
                self.run(stream)
                delay = self.retry_delay
                if not self._cancelled.is_set():
                    # run() returned without being cancelled: the upstream ended a session
                    self._cancelled.wait(self.retry_delay)
            except Exception as exc:  # any failure: report once, back off, reconnect
                if self.failures == 0:  # progress() since the last failure: start with a short wait again
                    delay = self.retry_delay
                self.failures += 1
                text = str(exc)  # some drivers' messages already start with the class name
                self.last_error = text if text.startswith(type(exc).__name__) else f'{type(exc).__name__}: {text}'
                if self._cancelled.is_set():
                    break
                logger.warning('%s for stream %r failed (%s); retrying in %.1fs',
                               self, stream.name, self.last_error, delay)
                self._cancelled.wait(delay)
                delay = min(delay * 2, self.max_retry_delay)
        self.close()

    def cancel(self):
        """Ask the source to stop; ``stream()`` returns soon after. Safe to call more than once."""
        self._cancelled.set()

    stop = cancel

    @property
    def cancelled(self):
        """True once :meth:`cancel` was called."""
        return self._cancelled.is_set()

    # -- for subclasses ----------------------------------------------------
    def run(self, stream):
        """Connect and append to ``stream`` until :attr:`cancelled`; raise on failure."""
        raise NotImplementedError

    def close(self):
        """Release connections; called once when ``stream()`` ends. Default: nothing."""

    def progress(self):
        """Call after a successful step: the next failure starts over with a short backoff."""
        self.failures = 0

    def decode(self, payload, stream, origin):
        """Return the message dict in ``payload`` (bytes or str of a JSON object), or None.

        None means the payload was not a JSON object: it was stored in the
        stream's dead letters as ``{'payload': text, 'origin': origin}`` with the
        reason, and a warning was logged. Undecodable bytes are kept as base64
        (``{'payload_base64': ...}``) so nothing is lost.
        """
        binary = False
        try:
            text = payload.decode('utf-8') if isinstance(payload, (bytes, bytearray)) else payload
            value = json.loads(text)
            if isinstance(value, dict):
                return value
            reason = f'payload is JSON but not an object (got {type(value).__name__})'
        except UnicodeDecodeError as exc:
            reason, binary = f'payload is not UTF-8 text: {exc}', True
        except (TypeError, ValueError) as exc:
            reason = f'payload is not JSON: {exc}'
        if binary:
            record = {'payload_base64': base64.b64encode(bytes(payload)).decode('ascii'), 'origin': origin}
        else:
            record = {'payload': payload if isinstance(payload, str) else repr(payload), 'origin': origin}
            if isinstance(payload, (bytes, bytearray)):
                record['payload'] = payload.decode('utf-8')
        logger.warning('%s: rejected a payload from %s into the dead letters of %r: %s',
                       self, origin, stream.name, reason)
        stream.reject(record, reason)
        return None

    def __repr__(self):
        return f'{type(self).__name__}()'


class Sink(abc.ABC):
    """Base class of the ready-made sinks: ``put(data)`` = normalise, check every item, then write them all.

    A consumer calls ``put`` once per window with what the function returned
    (or the window's data). :meth:`put` does, in this order:

    1. **normalise** ``data`` into a list of messages (:meth:`messages`): a
       dict is one message; a list or tuple is its items, in order (with
       ``expand = False``, any ``data`` is one message, a list included); any
       other value is one message, or refused with ``InvalidMessage`` when the
       sink takes only dicts (``dicts_only = True``, the default);
    2. **empty**: no messages (``put([])``, ``put(())``) writes nothing,
       :meth:`write` is not called, and ``put`` returns 0;
    3. **check** every message with :meth:`prepare`, which returns what
       :meth:`write` gets for it (the message, a copy, its encoding...) or
       raises ``InvalidMessage``. All items are checked before the first is
       written: a bad item fails the window with nothing written;
    4. **write** the prepared messages with :meth:`write`, the one method a
       subclass must implement, and return how many were written.

    The contract of :meth:`write`: it writes the whole batch and returns
    only once the outside system has accepted it (flushed, acknowledged), so
    that a committed window has arrived. It need not be atomic: when it
    raises, part of the batch may have been written, and the consumer's retry
    of the window writes it again (at least once; write with a key where the
    target supports one to make repeats harmless). It raises on any failure:
    a :class:`~minibatch.errors.SinkError` subclass of its own, or anything
    else, which :meth:`put` wraps in the sink's :attr:`error` (the original
    as ``__cause__`` and in the message). minibatch's own errors
    (``InvalidMessage``, ``ConfigurationError``, ...) pass unchanged. Either
    way the window fails, is retried, and finally goes to the dead letters.

    Keyword arguments of ``put`` other than ``data`` are passed on to
    :meth:`write` (``KafkaSink.put(data, topic=...)``). :meth:`close`
    releases connections; the default does nothing.
    """
    #: False: ``data`` is always one message, even a list (``KafkaSink(expand=False)``)
    expand: bool = True
    #: True: every message must be a dict (documents, rows); False: any value the sink can encode
    dicts_only: bool = True
    #: the SinkError subclass ``put`` raises when ``write`` fails with an exception of another kind
    error: type[SinkError] = SinkError

    def put(self, data: Any, **options: Any) -> int:
        """Write ``data`` (a dict, or a list or tuple of items); return how many messages were written.

        :raises minibatch.errors.InvalidMessage: ``data`` or one of its items
            cannot be written (nothing was written)
        :raises minibatch.errors.SinkError: writing failed (part of the
            batch may have been written)
        """
        messages = self.messages(data)
        if not messages:
            return 0
        batch = [self.prepare(message) for message in messages]  # every item, before anything is written
        try:
            written = self.write(batch, **options)
        except MinibatchError:  # SinkError subclasses, InvalidMessage...: already say what went wrong
            raise
        except Exception as exc:
            text = str(exc)
            what = text if text.startswith(type(exc).__name__) else f'{type(exc).__name__}: {text}'
            raise self.error(f'{self!r}: writing {len(batch)} message(s) failed: {what}') from exc
        return len(batch) if written is None else written

    def messages(self, data: Any) -> list[Any]:
        """The list of messages ``data`` stands for (step 1 of :meth:`put`); a new list, never ``data`` itself."""
        if isinstance(data, dict) or not self.expand:
            return [data]
        if isinstance(data, (list, tuple)):
            return list(data)
        if self.dicts_only:
            raise InvalidMessage(f'{type(self).__name__}.put() takes a dict or a list of dicts, '
                                 f'got {data!r:.200}')
        return [data]

    def prepare(self, message: Any) -> Any:
        """Check one message and return what :meth:`write` gets for it; raise InvalidMessage if it cannot be written.

        The default refuses a message that is not a dict when
        :attr:`dicts_only`, and returns the message itself. Override to
        encode, copy or check more; call ``super().prepare(message)`` to keep
        the dict check.
        """
        if self.dicts_only and not isinstance(message, dict):
            raise InvalidMessage(f'{type(self).__name__}.put() takes a dict or a list of dicts, '
                                 f'got an item {message!r:.200}')
        return message

    @abc.abstractmethod
    def write(self, messages: list[Any], **options: Any) -> int:
        """Write the prepared messages (never empty), in order; return how many were written.

        Return only once the outside system accepted them; raise on failure
        (see the class). Returning None counts as ``len(messages)``.
        """

    def close(self) -> None:
        """Release connections; a later ``put`` may open them again. Default: nothing."""

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'
